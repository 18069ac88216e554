#!/usr/bin/env bash
# Set up (a virtualenv in .venv) and run the embedded local cluster on the
# default ports: metadata 8080, storage nodes 8081-8083, uploader 8084, web
# page 8085, smart client 8086. Waits until every service answers and the
# storage nodes have registered, uploads a generated sample video if the
# cluster holds none, and says how to watch it; the cluster then runs in the
# foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
DATA_DIR=${DATA_DIR:-./vstack-data}
mkdir -p "$DATA_DIR"
# Before starting: another cluster on these ports would answer the checks below.
.venv/bin/python -c 'import sys
from tools.ports import first_taken
busy = first_taken("127.0.0.1", [8080, 8180, 8081, 8082, 8083, 8181, 8182, 8183, 8084, 8085, 8086, 8087])
sys.exit(f"Error: {busy}: stop it, or is a V-Stack cluster running already?" if busy else 0)'
.venv/bin/vstack-node all --data-dir "$DATA_DIR" &
cluster=$!
stop_cluster() { kill -INT "$cluster" 2>/dev/null || true; wait "$cluster" 2>/dev/null || true; }
trap stop_cluster EXIT  # whatever fails below, the cluster does not outlive this script
trap 'exit 0' INT TERM
CLUSTER_PID=$cluster .venv/bin/python - <<'PY'
import json, os, sys, time, urllib.request

pid = int(os.environ["CLUSTER_PID"])

def alive() -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited too
        return f.read().split(")")[-1].split()[0] != "Z"

def get(url: str):
    with urllib.request.urlopen(url, timeout=1) as r:
        return json.load(r)

deadline = time.time() + 90
waiting = "the services"
while True:
    if not alive():
        sys.exit("the cluster did not start (see the error above)")
    try:
        for port in (8080, 8084, 8085, 8086):
            get(f"http://127.0.0.1:{port}/health")
        waiting = "the storage nodes to register"
        if len(get("http://127.0.0.1:8080/nodes/healthy")) >= 3:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit(f"the cluster did not come up in 90 s (waiting for {waiting})")
    time.sleep(0.2)
PY
videos=$(.venv/bin/python -c 'import json, urllib.request; print(len(json.load(urllib.request.urlopen("http://127.0.0.1:8080/videos", timeout=5))))')
if [ "$videos" = "0" ]; then
  if [ ! -f "$DATA_DIR/sample.mp4" ]; then
    echo "Making a 30 s sample video with FFmpeg (about 10 s)..."
    .venv/bin/python -m tools.make_sample "$DATA_DIR/sample.mp4" --seconds 30
  fi
  echo "Uploading the sample video..."
  .venv/bin/vstack-put "$DATA_DIR/sample.mp4" --title "V-Stack sample"
fi
vid=$(.venv/bin/python -c 'import json, urllib.request; v = json.load(urllib.request.urlopen("http://127.0.0.1:8080/videos", timeout=5)); print(v[0]["video_id"] if v else "")')
here=$(pwd)
cat <<EOF

The cluster is running (Ctrl-C stops it).
  Open the page:   http://localhost:8085/   (upload, watch, the cluster live)
  Any HLS player:  ffplay http://localhost:8086/hls/$vid.m3u8   (or VLC, mpv, Safari)
  Save a video:    $here/.venv/bin/vstack-play $vid -o video.ts
  Upload another:  $here/.venv/bin/vstack-put FILE --title "My video"
EOF
wait "$cluster"
