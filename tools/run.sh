#!/usr/bin/env bash
# Set up (a virtualenv in .venv) and run the embedded local cluster on the
# default ports, in the foreground; Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/vstack-node all "$@"
