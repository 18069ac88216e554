"""Redundancy benchmark: repair after a node loss, and what each mode costs in bytes.

Run: ``.venv/bin/python -m benchmarks.redundancy_bench`` (``--quick`` for a short run).

A real cluster on loopback (a metadata replica and 5 storage nodes, each a
child process, real sockets and fsyncs; the redundancy manager in this one)
holds a hot video (3 replicas of each chunk) and a cold one (3+2 shards),
2 MiB chunks of random bytes. Measured:

* storage overhead: physical bytes on the nodes over logical bytes, per mode
  and for the mix, from ``GET /storage/overhead``, beside 3x replication;
* repair: one node stopped for good, the time the redundancy manager takes to
  bring every chunk back to full redundancy (read, decode where needed,
  write, commit through Paxos), as MB/s of new copies written; beside a plain
  copy of the same number of bytes between the same nodes (read from a
  surviving node, write to the node the repair chose), in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from nodes.net.http_client import request
from nodes.redundancy.repair import run_repairs
from nodes.redundancy.service import observe, serve_redundancy
from protocol.api import chunk_id, shard_id
from tools.launch import ServiceProcess, free_port
from vstack import erasure
from vstack.placement import NodeInfo, choose_shard_nodes
from vstack.reconcile import copies_of, plan_repairs
from vstack.settings import RedundancySettings

from .harness import Report, Row

CHUNK = 2 * 1024 * 1024


async def store_video(meta: str, nodes: list[str], mode: str, chunks: int) -> str:
    vid = (await request("POST", f"{meta}/video", json_body={"title": mode, "duration_sec": 1})
           ).json()["video_id"]
    infos = [NodeInfo(url=u, node_id=u) for u in nodes]
    for seq in range(chunks):
        data = os.urandom(CHUNK)
        cid = chunk_id(vid, seq)
        body: dict[str, Any] = {"checksum": hashlib.sha256(data).hexdigest(), "size_bytes": CHUNK,
                                "video_id": vid, "sequence_num": seq, "redundancy_mode": mode}
        if mode == "replication":
            targets = [nodes[(seq + i) % len(nodes)] for i in range(3)]
            for url in targets:
                await request("PUT", f"{url}/chunk/{cid}", body=data)
            body["node_urls"] = targets
        else:
            layout = choose_shard_nodes(infos, turn=seq)
            frags = []
            for s in erasure.encode(data):
                url = layout[s.index].url
                await request("PUT", f"{url}/chunk/{shard_id(cid, s.index)}", body=bytes(s.data))
                frags.append({"fragment_id": shard_id(cid, s.index), "fragment_index": s.index,
                              "node_url": url, "size_bytes": s.size, "checksum": s.sha256})
            body |= {"node_urls": sorted({str(f["node_url"]) for f in frags}),
                     "fragments_metadata": frags}
        assert (await request("POST", f"{meta}/chunk/{cid}/commit", json_body=body)
                ).json()["success"]
    await request("PATCH", f"{meta}/video/{vid}/status", json_body={"status": "active"})
    return str(vid)


async def bench(report: Report, work: Path, chunks: int) -> None:
    """The metadata replica and the 5 nodes are child processes (as deployed); the
    manager runs here."""
    meta_port = free_port()
    meta = f"http://127.0.0.1:{meta_port}"
    children = [ServiceProcess("metadata", {
        "PORT": str(meta_port), "DATABASE_URL": str(work / "meta.db"), "LOG_LEVEL": "WARNING",
        "NODE_TIMEOUT": "2", "HEARTBEAT_INTERVAL": "0.5", "METADATA_BOOTSTRAP": "1"},
        ports=(meta_port,))]
    nodes: list[str] = []
    for i in range(5):
        port, binary = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        children.append(ServiceProcess("storage", {
            "PORT": str(port), "BINARY_PORT": str(binary), "DATA_DIR": str(work / f"n{i}"),
            "NODE_ID": f"n{i}", "NODE_URL": url, "METADATA_SERVICE_URL": meta,
            "HEARTBEAT_INTERVAL": "0.5", "SCRUB_RATE": "0", "LOG_LEVEL": "WARNING"},
            ports=(port, binary)))
        nodes.append(url)
    try:
        for child in children:
            child.start(timeout=30)
        async with trio.open_nursery() as nursery:
            mgr = await nursery.start(serve_redundancy, RedundancySettings(
                metadata_urls=(meta,), interval=1e9, repair_grace=0, rate_bytes=1 << 40))
            while len((await request("GET", f"{meta}/nodes/healthy")).json()) < 5:
                await trio.sleep(0.2)
            hot = await store_video(meta, nodes, "replication", chunks)
            cold = await store_video(meta, nodes, "erasure_coding", chunks)
            for vid, mode in ((hot, "replication"), (cold, "erasure_coding")):
                await request("POST", f"{meta}/redundancy/override/{vid}?mode={mode}")
            overhead(report, (await request("GET", f"{meta}/storage/overhead")).json(), chunks)
            await repair(report, mgr, meta, nodes, children[1])
            nursery.cancel_scope.cancel()
    finally:
        for child in children:
            if child.running:
                child.kill(signal.SIGTERM)


def overhead(report: Report, o: dict[str, Any], chunks: int) -> None:
    logical = chunks * CHUNK
    repl = (logical + o["replication_overhead_bytes"]) / logical
    ec = (logical + o["erasure_overhead_bytes"]) / logical
    mix = o["total_physical_bytes"] / o["total_logical_bytes"]
    for name, value in (("hot video (3 replicas)", repl), ("cold video (3+2 shards)", ec),
                        ("the mix, half hot, half cold", mix)):
        report.add(Row(f"storage: {name}, physical/logical", value, "x", "3x replication", 3.0,
                       higher_is_better=False))


async def repair(report: Report, mgr: Any, meta: str, nodes: list[str],
                 victim_process: ServiceProcess) -> None:
    victim = nodes[0]
    before = {vid: await mgr.metadata.manifest(vid) for vid in await mgr.metadata.video_ids()}
    victim_process.kill()
    while not any(n["node_url"] == victim and n["status"] == "down"
                  for n in (await request("GET", f"{meta}/nodes/all")).json()["nodes"]):
        await trio.sleep(0.2)
    moved0, t0 = mgr.stats.bytes_moved, time.perf_counter()
    while True:  # what a pass does for repairs (its garbage collection is not timed)
        snap = await observe(mgr)
        plan = plan_repairs(snap.manifests, snap.lost)
        if not plan:
            break
        await run_repairs(mgr, snap, plan, limit=len(plan))
    seconds, moved = time.perf_counter() - t0, mgr.stats.bytes_moved - moved0
    # The same bytes, copied plainly: from a surviving holder to the node the repair chose.
    pairs = []
    for vid, m in before.items():
        after = await mgr.metadata.manifest(vid)
        for old, new in zip(m.chunks, after.chunks, strict=True):
            kept = {(c.node_url, c.stored_id) for c in copies_of(old)}
            src = next(c for c in copies_of(old) if c.node_url != victim)
            pairs += [(src, c.node_url) for c in copies_of(new)
                      if (c.node_url, c.stored_id) not in kept]
    t1 = time.perf_counter()
    copied = 0
    for n, (src, dst) in enumerate(pairs):
        data = await mgr.pool.get(src.node_url, src.stored_id, src.checksum)
        await mgr.pool.put(dst, f"plain-copy-{n}", data, src.checksum)
        copied += len(data)
    plain = time.perf_counter() - t1
    report.add(Row("repair after a node loss (MB/s of new copies)", moved / seconds / 1e6, "MB/s",
                   "plain copy of the same bytes, same nodes (MB/s)", copied / plain / 1e6,
                   target=0.5, extra={"repaired_bytes": moved, "seconds": seconds,
                                      "copies": len(pairs)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    report = Report("redundancy")
    with tempfile.TemporaryDirectory(prefix="vstack-redundancy-bench-") as tmp:
        trio.run(bench, report, Path(tmp), 8 if args.quick else 32)
    report.write()


if __name__ == "__main__":
    main()
