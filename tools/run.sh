#!/usr/bin/env bash
# Set up (a virtualenv in .venv) and run the embedded local cluster on the
# default ports: metadata 8080, storage nodes 8081-8083, uploader 8084.
# Uploads a generated sample video and prints its manifest URL; the cluster
# then runs in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
DATA_DIR=${DATA_DIR:-./vstack-data}
mkdir -p "$DATA_DIR"
.venv/bin/vstack-node all --data-dir "$DATA_DIR" &
cluster=$!
trap 'kill -INT "$cluster" 2>/dev/null; wait "$cluster"; exit 0' INT TERM
.venv/bin/python - <<'PY'
import time, urllib.request
deadline = time.time() + 60
for port in (8080, 8084):
    while True:
        try:
            urllib.request.urlopen(f"http://localhost:{port}/health", timeout=1)
            break
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"the cluster did not start (port {port})")
            time.sleep(0.2)
PY
sleep 2  # storage nodes register half a second after they start, then heartbeat
if [ ! -f "$DATA_DIR/sample.mp4" ]; then
  .venv/bin/python -m tools.make_sample "$DATA_DIR/sample.mp4" --seconds 30
fi
.venv/bin/vstack-put "$DATA_DIR/sample.mp4" --title "V-Stack sample"
echo "The cluster is running (Ctrl-C stops it). Upload more: .venv/bin/vstack-put FILE"
wait "$cluster"
