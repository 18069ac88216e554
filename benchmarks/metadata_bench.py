"""Metadata benchmark: consensus decisions per second, 1 and 3 replicas on loopback.

Run: ``.venv/bin/python -m benchmarks.metadata_bench`` (``--quick`` for a short run).

Each figure stands beside SQLite alone doing one ``synchronous=FULL`` insert
(one transaction) per commit in a loop, in the same run: the cost of making
one decision durable on one machine. Measured:

* decisions: ``POST /video`` (one full Paxos round: prepare, accept, commit,
  each acceptor's state fsynced) from 32 concurrent keep-alive clients;
* chunk commits: ``POST /chunk/{id}/commit`` for chunks stored on a real
  storage node (the service checks the node with ``HEAD`` first), same load;
* h11 alone: one core parsing a ``POST /video`` and writing its answer with h11,
  no socket and no work, the ceiling of any h11 service in CPython on this
  machine, printed against the same SQLite reference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import apsw
import h11
import trio

from nodes.net.frame_client import open_frame_client
from nodes.net.http_client import HttpClient, request

from .harness import ROOT, Report, Row, free_port, percentile, start_node, wait_port

SECRET = "benchmark cluster secret, 32 byte"
PER_CLIENT = 600  # distinct chunks each client commits (each chunk committed once)


def sqlite_alone(path: Path, seconds: float) -> tuple[float, list[float]]:
    conn = apsw.Connection(str(path))
    cur = conn.cursor()
    for stmt in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
                 "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)"):
        list(cur.execute(stmt))
    lat, n = [], 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a = time.perf_counter()
        with conn:
            conn.cursor().execute("INSERT INTO t VALUES (?, ?)", (f"k{n}", "x" * 200))
        lat.append(time.perf_counter() - a)
        n += 1
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate, lat


def h11_alone(seconds: float) -> float:
    """Requests/s one core spends just parsing a ``POST /video`` and writing its
    answer with h11 (no socket, no Paxos, no disk): the ceiling of any service
    built on h11 in CPython, measured beside SQLite so the targets can be read
    against it."""
    body = json.dumps({"title": "bench 0-0", "duration_sec": 10}).encode()
    raw = (b"POST /video HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    answer = json.dumps({"video_id": "0" * 36, "success": True}).encode()
    conn = h11.Connection(h11.SERVER)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        conn.receive_data(raw)
        got = b""
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                got += event.data
        json.loads(got)
        conn.send(h11.Response(status_code=200, headers=[
            ("Content-Type", "application/json"), ("Content-Length", str(len(answer)))]))
        conn.send(h11.Data(data=answer))
        conn.send(h11.EndOfMessage())
        conn.start_next_cycle()
        n += 1
    return n / (time.perf_counter() - t0)


def start_replicas(work: Path, count: int, **env: str) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    ports = [free_port() for _ in range(count)]
    peer_ports = [free_port() for _ in range(count)]
    procs = []
    for i in range(count):
        full = {**os.environ, "PORT": str(ports[i]), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING",
                "DATABASE_URL": str(work / f"meta-{count}-{i}.db"), "METADATA_ID": str(i),
                "METADATA_PEERS": ",".join(f"http://127.0.0.1:{p}" for p in ports) if count > 1
                else "", "METADATA_PEER_PORT": str(peer_ports[i]),
                "METADATA_PEER_ADDRS": ",".join(f"127.0.0.1:{p}" for p in peer_ports)
                if count > 1 else "",
                "CLUSTER_SECRET": SECRET,
                "METADATA_BOOTSTRAP": "1", **env}
        procs.append(subprocess.Popen([sys.executable, "-m", "tools.node_cli", "metadata"],
                                      env=full, cwd=ROOT))
    for p in ports:
        wait_port(p)
    return procs, ports


async def load(port: int, seconds: float, clients: int, make: object) -> tuple[float, list[float]]:
    lat: list[float] = []
    done = 0
    stop = trio.current_time() + seconds

    async def client(c: int) -> None:
        nonlocal done
        http = HttpClient(max_idle_per_host=1, headers=[("Authorization", f"Bearer {SECRET}")])
        i = 0
        while trio.current_time() < stop:
            path, body = make(c, i)  # type: ignore[operator]
            a = time.perf_counter()
            res = await http.request("POST", f"http://127.0.0.1:{port}{path}", json_body=body)
            if res.status != 200 or (b'"success":false' in res.body):
                raise RuntimeError(f"{path}: {res.status} {res.body[:200]!r}")
            lat.append(time.perf_counter() - a)
            done += 1
            i += 1
        await http.aclose()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for c in range(clients):
            nursery.start_soon(client, c)
    return done / (time.perf_counter() - t0), lat


async def store_chunks(port: int, tag: str, count: int, data: bytes) -> None:
    """Put ``count`` chunks on a node, 64 in flight on one binary connection."""
    async with open_frame_client("127.0.0.1", port) as client:
        limit = trio.Semaphore(64)

        async def put(s: int) -> None:
            async with limit:
                await client.put(f"{tag}-{s}", data)

        async with trio.open_nursery() as nursery:
            for s in range(count):
                nursery.start_soon(put, s)


def video_request(c: int, i: int) -> tuple[str, dict[str, object]]:
    return "/video", {"title": f"bench {c}-{i}", "duration_sec": 10}


async def bench(report: Report, work: Path, seconds: float, clients: int) -> None:
    ref_rate, ref_lat = sqlite_alone(work / "sqlite-alone.db", seconds)
    print(f"SQLite alone: {ref_rate:.0f} commits/s, p99 {percentile(ref_lat, 99) * 1e3:.2f} ms",
          flush=True)
    report.add(Row("h11 alone: parse a POST + write its answer, one core (/s)",
                   h11_alone(min(seconds, 2.0)), "/s", "SQLite alone, 1 FULL insert each", ref_rate,
                   extra={"note": "ceiling of an h11 service before any I/O or work"}))
    # A storage node holding one small chunk per commit we will make.
    node, node_http, node_binary = start_node(work / "node")
    data = b"chunk"
    sha = hashlib.sha256(data).hexdigest()
    try:
        for replicas in (1, 3):
            procs, ports = start_replicas(work, replicas)
            try:
                rate, lat = await load(ports[0], seconds, clients, video_request)
                report.add(Row(f"decisions (POST /video), {replicas} replica(s) (/s)", rate, "/s",
                               "SQLite alone, 1 FULL insert each", ref_rate,
                               target=0.5 if replicas == 3 else 0.8,
                               extra={"p50_ms": percentile(lat, 50) * 1e3,
                                      "p99_ms": percentile(lat, 99) * 1e3, "clients": clients}))
                report.add(Row(f"decisions, {replicas} replica(s), p99 latency (ms)",
                               percentile(lat, 99) * 1e3, "ms", "SQLite alone p99",
                               percentile(ref_lat, 99) * 1e3, higher_is_better=False,
                               extra={"target_ms": 20.0}))
                vid = (await request("POST", f"http://127.0.0.1:{ports[0]}/video",
                                     json_body={"title": "c", "duration_sec": 1},
                                     headers=[("Authorization", f"Bearer {SECRET}")])
                       ).json()["video_id"]
                # Commits may name registered nodes only.
                await request("POST", f"http://127.0.0.1:{ports[0]}/nodes/register",
                              json_body={"node_url": f"http://127.0.0.1:{node_http}",
                                         "node_id": "bench-node"},
                              headers=[("Authorization", f"Bearer {SECRET}")])
                tag = os.urandom(3).hex()
                await store_chunks(node_binary, tag, clients * PER_CLIENT, data)

                def commit_request(c: int, i: int, vid: str = vid, tag: str = tag
                                   ) -> tuple[str, dict[str, object]]:
                    seq = c * PER_CLIENT + i % PER_CLIENT
                    return f"/chunk/{tag}-{seq}/commit", {
                        "node_urls": [f"http://127.0.0.1:{node_http}"], "checksum": sha,
                        "size_bytes": len(data), "video_id": vid, "sequence_num": seq}

                rate, lat = await load(ports[0], seconds, clients, commit_request)
                report.add(Row(f"chunk commits, {replicas} replica(s) (/s)", rate, "/s",
                               "SQLite alone, 1 FULL insert each", ref_rate,
                               target=0.5 if replicas == 3 else 0.8,
                               extra={"p50_ms": percentile(lat, 50) * 1e3,
                                      "p99_ms": percentile(lat, 99) * 1e3, "clients": clients}))
            finally:
                for p in procs:
                    p.terminate()
                    p.wait(10)
    finally:
        node.terminate()
        node.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 5.0
    report = Report("metadata")
    with tempfile.TemporaryDirectory(prefix="vstack-meta-bench-") as tmp:
        trio.run(bench, report, Path(tmp), seconds, args.clients)
    report.write()


if __name__ == "__main__":
    main()
