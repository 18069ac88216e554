#!/usr/bin/env bash
# Create .venv (once) and install the project into it, with the extras named
# in $1 (e.g. "test"). Used by tools/run.sh and tools/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${1:+[$1]}"
