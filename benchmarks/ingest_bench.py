"""Ingest benchmark: a 10-minute 720p video, end to end, beside its unavoidable parts.

Run: ``.venv/bin/python -m benchmarks.ingest_bench`` (``--quick``: 2 minutes of video).

The source is FFmpeg's testsrc2 at 1280x720, ~7.6 Mbit/s, a keyframe every
2 s (made once, cached in ``benchmarks/results/``), as an MP4 with its index
first (cut while it arrives) and the same streams with the index last
(received whole, then cut). Measured: the time from the first byte sent to
``POST /upload`` to the session's ``completed``, on the embedded cluster
(``vstack-node all``: metadata, 3 storage nodes, uploader, in one process;
then the same services each in a process of its own, as docker-compose runs
them), and the time to the first playable chunk.

Two references, each measured in the same run, each part alone, one after
the other (their sum: nothing overlapped):

* the floor: FFmpeg alone segmenting the file with ``-c copy`` (same segment
  length), plus writing the file's bytes three times (the redundancy factor)
  as 2 MiB appends with fdatasync;
* every part the upload cannot skip, for the way it is stored (a new video
  is erasure-coded: 3 data + 2 parity shards): receiving the bytes on a
  loopback socket, FFmpeg alone, the SHA-256 of each segment FFmpeg cut,
  zfec encoding each into 5 shards with their SHA-256s (what the metadata
  records), and each shard appended to a file with fdatasync (an
  acknowledged write is durable), to three files at once as to three nodes.
  The parts run one after another (the sum of the work, not its critical
  path: on two cores the real pipeline overlaps some of them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

from nodes.net.http_client import request
from nodes.uploader.ffmpeg import find_ffmpeg
from tools.launch import ServiceProcess, free_port
from tools.make_sample import make_sample
from tools.put_cli import send_multipart
from vstack import erasure
from vstack.media import ProbeResult, parse_probe, plan_segments, probe_command

from .harness import RESULTS, ROOT, Report, Row, wait_port
from .storage_bench import cpu_seconds


def source(seconds: int) -> tuple[Path, Path]:
    """The test video with its index first, and the same with its index last."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    first = RESULTS / f"ingest-source-{seconds}s-faststart.mp4"
    last = RESULTS / f"ingest-source-{seconds}s-index-last.mp4"
    if not first.exists():
        print(f"generating a {seconds} s 720p test video (once) ...", flush=True)
        make_sample(first, seconds=seconds, bitrate="7600k", preset="ultrafast")
    if not last.exists():
        subprocess.run([find_ffmpeg(), "-v", "error", "-y", "-i", str(first), "-c", "copy",
                        str(last)], check=True)
    return first, last


def probe(path: Path) -> ProbeResult:
    r = subprocess.run(probe_command(find_ffmpeg(), path), capture_output=True, text=True)
    return parse_probe(r.stderr)


def ffmpeg_alone(path: Path, segment_time: float, out: Path) -> float:
    out.mkdir()
    t0 = time.perf_counter()
    subprocess.run([find_ffmpeg(), "-v", "error", "-y", "-i", str(path), "-map", "0:v:0",
                    "-map", "0:a:0?", "-c", "copy", "-f", "segment", "-segment_time",
                    str(segment_time), "-segment_format", "mpegts", str(out / "s%05d.ts")],
                   check=True)
    return time.perf_counter() - t0


def write_three_times(path: Path, out: Path) -> float:
    data = path.read_bytes()
    t0 = time.perf_counter()
    for copy in range(3):
        fd = os.open(out / f"copy-{copy}.dat", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for i in range(0, len(data), 2 << 20):
            os.write(fd, data[i : i + (2 << 20)])
            os.fdatasync(fd)
        os.close(fd)
    return time.perf_counter() - t0


def receive_alone(path: Path) -> float:
    """The file's bytes sent over one loopback TCP connection and received (no parsing)."""
    data = path.read_bytes()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(data)

    t0 = time.perf_counter()
    sender = threading.Thread(target=send)
    sender.start()
    conn, _ = server.accept()
    buf = bytearray(1 << 20)
    with conn:
        while conn.recv_into(buf):
            pass
    sender.join()
    server.close()
    return time.perf_counter() - t0


def code_and_store_alone(segments: Path, out: Path) -> tuple[float, float, float]:
    """What each segment FFmpeg cut goes through, part by part: (SHA-256 of the
    segments, zfec encoding with shard SHA-256s, shard appends with fdatasync)."""
    chunks = [p.read_bytes() for p in sorted(segments.iterdir())]
    t0 = time.perf_counter()
    for chunk in chunks:
        hashlib.sha256(chunk).hexdigest()
    hashing = time.perf_counter() - t0
    t0 = time.perf_counter()
    coded = [erasure.encode(chunk) for chunk in chunks]
    coding = time.perf_counter() - t0
    per_node: list[list[memoryview]] = [[], [], []]
    for shards in coded:
        for shard in shards:  # spread over three files, as over three nodes
            per_node[shard.index % 3].append(shard.data)

    def append_all(n: int) -> None:
        fd = os.open(out / f"shards-{n}.dat", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for data in per_node[n]:
                os.write(fd, data)
                os.fdatasync(fd)
        finally:
            os.close(fd)

    writers = [threading.Thread(target=append_all, args=(n,)) for n in range(3)]
    t0 = time.perf_counter()
    for w in writers:  # the three "nodes" write at once
        w.start()
    for w in writers:
        w.join()
    return hashing, coding, time.perf_counter() - t0


def separate_cluster(work: Path) -> tuple[list[ServiceProcess], str]:
    """Metadata, 3 storage nodes and the uploader, each its own process (as
    docker-compose runs them); the uploader's URL."""
    meta_port, up_port = free_port(), free_port()
    meta = f"http://127.0.0.1:{meta_port}"
    quiet = {"LOG_LEVEL": "WARNING"}
    children = [ServiceProcess("metadata", {
        **quiet, "PORT": str(meta_port), "DATABASE_URL": str(work / "meta.db"),
        "METADATA_BOOTSTRAP": "1"}, ports=(meta_port,))]
    for i in range(3):
        port, binary = free_port(), free_port()
        children.append(ServiceProcess("storage", {
            **quiet, "PORT": str(port), "BINARY_PORT": str(binary), "NODE_ID": f"n{i}",
            "NODE_URL": f"http://127.0.0.1:{port}", "DATA_DIR": str(work / f"n{i}"),
            "METADATA_SERVICE_URL": meta},
            ports=(port, binary)))
    children.append(ServiceProcess("uploader", {
        **quiet, "PORT": str(up_port), "METADATA_SERVICE_URL": meta,
        "TEMP_DIR": str(work / "uploads")}, ports=(up_port,)))
    return children, f"http://127.0.0.1:{up_port}"


async def registered(meta_port: str, nodes: int) -> None:
    """Wait (up to 30 s) until the metadata service lists ``nodes`` healthy nodes."""
    with trio.fail_after(30):
        while len((await request("GET", f"http://127.0.0.1:{meta_port}/nodes/healthy")
                   ).json()) < nodes:
            await trio.sleep(0.2)


async def ingest(path: Path, url: str = "http://localhost:8084"
                 ) -> tuple[float, dict[str, object]]:
    t0 = time.perf_counter()
    answer = await send_multipart(url, path, "ingest benchmark", lambda n: None)
    received = time.perf_counter() - t0
    session = answer["upload_session_id"]
    while True:
        state = (await request("GET", f"{url}/upload/status/{session}")).json()
        if state["status"] in ("completed", "failed"):
            break
        await trio.sleep(0.05)
    return time.perf_counter() - t0, {**state, "upload_received_sec": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 minutes of video, not 10")
    args = parser.parse_args()
    seconds = 120 if args.quick else 600
    sources = source(seconds)
    info = probe(sources[0])
    size = sources[0].stat().st_size
    plan = plan_segments(info, size, chunk_size=2 << 20, chunk_duration=10.0)
    report = Report("ingest")
    states: list[tuple[str, float, dict[str, object]]] = []
    with tempfile.TemporaryDirectory(prefix="vstack-ingest-") as tmp:
        work = Path(tmp)
        ref_ffmpeg = ffmpeg_alone(sources[0], plan.segment_time, work / "ffmpeg-alone")
        ref_write = write_three_times(sources[0], work)
        ref_receive = receive_alone(sources[0])
        ref_hash, ref_code, ref_shards = code_and_store_alone(work / "ffmpeg-alone", work)
        parts = {"receive_sec": ref_receive, "ffmpeg_alone_sec": ref_ffmpeg,
                 "sha256_sec": ref_hash, "zfec_encode_sec": ref_code,
                 "shard_writes_sec": ref_shards}
        print(f"source: {size / 1e6:.0f} MB, {info.duration:.0f} s; segment {plan.segment_time} s; "
              f"ffmpeg alone {ref_ffmpeg:.2f} s, 3x append+fsync {ref_write:.2f} s; "
              f"receive {ref_receive:.2f} s, SHA-256 {ref_hash:.2f} s, zfec {ref_code:.2f} s, "
              f"shard appends+fsync {ref_shards:.2f} s", flush=True)
        env = {**os.environ, "LOG_LEVEL": "WARNING"}
        cluster = subprocess.Popen([sys.executable, "-m", "tools.node_cli", "all", "--data-dir",
                                    str(work / "cluster")], cwd=ROOT, env=env)
        try:
            for port in (8080, 8081, 8082, 8083, 8084):
                wait_port(port)
            time.sleep(3)  # the nodes register 2 s after they start
            for label, src in zip(("index first: cut as it arrives",
                                   "index last: received whole"), sources, strict=True):
                elapsed, state = trio.run(ingest, src)
                if state["status"] != "completed":
                    raise SystemExit(f"ingest failed: {json.dumps(state)}")
                states.append((label, elapsed, state))
        finally:
            cluster.terminate()
            cluster.wait(30)
        children, url = separate_cluster(work / "separate")
        try:
            for child in children:
                child.start(timeout=30)
            trio.run(registered, children[0].env["PORT"], 3)
            names = [c.role + (f"-{n}" if c.role == "storage" else "")
                     for n, c in enumerate(children, start=-1)]
            before = [cpu_seconds(c.proc.pid) if c.proc else 0.0 for c in children]
            elapsed, state = trio.run(ingest, sources[0], url)
            if state["status"] != "completed":
                raise SystemExit(f"ingest failed: {json.dumps(state)}")
            # Where the time goes: each service's CPU seconds (FFmpeg's count
            # in the uploader's).
            state["cpu_sec"] = {n: round((cpu_seconds(c.proc.pid) if c.proc else 0.0) - b, 2)
                                for n, c, b in zip(names, children, before, strict=True)}
            states.append(("index first, one process per service", elapsed, state))
        finally:
            for child in children:
                if child.running:
                    child.kill(signal.SIGTERM)
    for label, elapsed, state in states:
        extra = {"chunks": state["total_chunks"], "ffmpeg_alone_sec": ref_ffmpeg,
                 "write_3x_sec": ref_write, "segment_time": plan.segment_time,
                 "upload_received_sec": state["upload_received_sec"],
                 "first_chunk_after_sec": state.get("first_chunk_after_sec"),
                 "streamed": bool(state.get("streamed")),
                 "redundancy_mode": state.get("redundancy_mode"),
                 "throughput_MBps": size / elapsed / 1e6,
                 **({"cpu_sec": state["cpu_sec"]} if "cpu_sec" in state else {})}
        name = f"ingest {seconds // 60} min 720p ({size / 1e6:.0f} MB), {label} (s)"
        report.add(Row(name, elapsed, "s", "floor: ffmpeg -c copy alone + 3x append+fsync",
                       ref_ffmpeg + ref_write, higher_is_better=False, target=1 / 1.2,
                       extra=extra))
        if state.get("redundancy_mode") == "erasure_coding":
            report.add(Row(name.replace(" (s)", ", all its parts (s)"), elapsed, "s",
                           "receive+ffmpeg+SHA-256+zfec+shard fsyncs, each alone, in turn",
                           sum(parts.values()), higher_is_better=False, target=1 / 1.2,
                           extra={**extra, **parts}))
        first, received = state.get("first_chunk_after_sec"), state["upload_received_sec"]
        if isinstance(first, float | int) and isinstance(received, float):
            report.add(Row(f"first playable chunk, {label} (s)", float(first), "s",
                           "the whole upload received", received,
                           higher_is_better=False, extra={"streamed": bool(state.get("streamed"))}))
    report.write()


if __name__ == "__main__":
    main()
