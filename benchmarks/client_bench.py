"""Smart-client benchmark: startup, rebuffering, failover and hedging cost, against --naive.

Run: ``.venv/bin/python -m benchmarks.client_bench`` (``--quick`` for a short run).

A real cluster on loopback, each service a child process: a metadata
replica, 3 storage nodes, and the network emulator (``vstack-node netem``)
with one proxy in front of each node; the nodes register the proxies' URLs,
so every chunk a client reads crosses a proxy (HTTP transport). One video of
12 chunks of 1 MiB, 10 s each, replicated on the 3 nodes, is played at 10x
real time (a 120 s video in 12 s of wall time; the buffer policy scales with
it: a 30 s buffer is 3 s of wall time).

Each scenario is played by the smart client and by ``--naive`` (round robin,
no scoring, hedging or buffer policy), each a fresh client as a new viewer
would be, in the same run; the fault is applied once two chunks have played:

* ``no faults``;
* ``one node killed``: its proxy refuses connections (a process gone);
* ``one node hangs``: its proxy accepts and never answers (a blackhole);
* ``one node slowed``: its proxy adds 50 ms each way and caps it at 2 MB/s
  (a 1 MiB chunk takes ~0.6 s instead of ~5 ms: over 100x slower);
* ``one node failing 5%``: its proxy resets 5% of the data it forwards.

Figures (the guide's list): startup latency (median of several startups);
throughput to one viewer and to 4 concurrent viewers, unpaced; average
buffer level and load distribution over the nodes (and probe latency per
node) with no faults; smooth playback, the
media time over media time plus stalls (100%: no rebuffering); the longest
failover (from the start of a request that failed or was hedged to the
answer that replaced it); the bytes hedges asked for, and the bytes
delivered beyond the video's size. Targets on loopback: startup <= 300 ms median, zero
rebuffering with any one node down or slow, failover <= 100 ms on a refused
connection and <= 1 s on a hang, hedging <= 5% extra bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from nodes.client.client import open_smart_client
from nodes.client.fetcher import FetchFailed
from nodes.client.session import Playback
from nodes.net.http_client import request
from protocol.api import chunk_id
from tools.launch import ServiceProcess, free_port
from vstack.playback import BufferPolicy

from .harness import Report, Row

CHUNK = 1024 * 1024
CHUNKS = 12
SPEED = 10.0
POLICY = BufferPolicy()

FAULTS: dict[str, dict[str, Any]] = {
    "no faults": {},
    "one node killed": {"mode": "refuse"},
    "one node hangs": {"mode": "blackhole"},
    "one node slowed": {"latency_ms": 50, "bandwidth_bps": 2_000_000},
    "one node failing 5%": {"reset_rate": 0.05},
}


class Cluster:
    def __init__(self, work: Path) -> None:
        self.meta_port = free_port()
        self.meta = f"http://127.0.0.1:{self.meta_port}"
        self.control = free_port()
        self.children = [ServiceProcess("metadata", {
            "PORT": str(self.meta_port), "DATABASE_URL": str(work / "meta.db"),
            "LOG_LEVEL": "WARNING", "NODE_TIMEOUT": "5", "HEARTBEAT_INTERVAL": "1",
            "METADATA_BOOTSTRAP": "1"}, ports=(self.meta_port,))]
        self.proxies: list[int] = []
        specs = []
        for i in range(3):
            port, binary, proxy = free_port(), free_port(), free_port()
            self.proxies.append(proxy)
            specs.append(f"{proxy}=127.0.0.1:{port}")
            self.children.append(ServiceProcess("storage", {
                "PORT": str(port), "BINARY_PORT": str(binary), "DATA_DIR": str(work / f"n{i}"),
                "NODE_ID": f"n{i}", "NODE_URL": f"http://127.0.0.1:{proxy}",
                "METADATA_SERVICE_URL": self.meta, "HEARTBEAT_INTERVAL": "1",
                "SCRUB_RATE": "0", "LOG_LEVEL": "WARNING"}, ports=(port, binary)))
        self.children.insert(1, ServiceProcess("netem", {
            "NETEM_PROXIES": " ".join(specs), "NETEM_CONTROL_PORT": str(self.control),
            "LOG_LEVEL": "WARNING"}, ports=(self.control, *self.proxies)))
        self.nodes = [f"http://127.0.0.1:{p}" for p in self.proxies]

    def start(self) -> None:
        for child in self.children:
            child.start(timeout=30)

    def stop(self) -> None:
        for child in self.children:
            if child.running:
                child.kill(signal.SIGTERM)

    async def faults(self, proxy: int, settings: dict[str, Any]) -> None:
        body = {"mode": "normal", "latency_ms": 0, "jitter_ms": 0, "bandwidth_bps": 0,
                "reset_rate": 0, "stall_rate": 0, **settings}
        res = await request("PUT", f"http://127.0.0.1:{self.control}/proxies/{proxy}",
                            json_body=body)
        assert res.status == 200, res.body

    async def store_video(self) -> tuple[str, int]:
        vid = (await request("POST", f"{self.meta}/video",
                             json_body={"title": "bench", "duration_sec": CHUNKS * 10})
               ).json()["video_id"]
        for seq in range(CHUNKS):
            data = os.urandom(CHUNK)
            cid = chunk_id(vid, seq)
            for url in self.nodes:
                assert (await request("PUT", f"{url}/chunk/{cid}", body=data)).status == 201
            body = {"checksum": hashlib.sha256(data).hexdigest(), "size_bytes": CHUNK,
                    "video_id": vid, "sequence_num": seq, "node_urls": self.nodes,
                    "duration_sec": 10.0, "start_sec": seq * 10.0}
            res = await request("POST", f"{self.meta}/chunk/{cid}/commit", json_body=body)
            assert res.json()["success"], res.body
        await request("PATCH", f"{self.meta}/video/{vid}/status", json_body={"status": "active"})
        await request("POST", f"{self.meta}/redundancy/override/{vid}?mode=replication")
        return str(vid), CHUNK * CHUNKS


async def play_once(cluster: Cluster, vid: str, naive: bool,
                    fault: Callable[[Playback], Awaitable[None]] | None,
                    stop_after_start: bool = False) -> dict[str, Any]:
    async with open_smart_client((cluster.meta,), POLICY, binary=False) as client:
        play = await client.playback(vid, speed=SPEED, naive=naive, count_view=False)
        error = None
        levels: list[float] = []

        async def sample_level() -> None:
            while True:
                if play.buffer.started:
                    levels.append(play.buffer.level_sec(trio.current_time()))
                await trio.sleep(0.05)

        with trio.move_on_after(120):  # bounded, whatever happens
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample_level)
                if fault is not None:
                    nursery.start_soon(fault, play)

                async def sink(data: bytes) -> None:
                    if stop_after_start:
                        nursery.cancel_scope.cancel()

                try:
                    await play.run(sink)
                except FetchFailed as exc:
                    error = str(exc)
                nursery.cancel_scope.cancel()
        fetcher = client.naive_fetcher if naive else client.fetcher
        stats = play.stats()
        return {"startup_ms": None if play.startup_latency is None
                else play.startup_latency * 1000,
                "rebuffering_events": stats["rebuffering_events"],
                "rebuffering_sec": stats["rebuffering_sec"] * SPEED,  # in media seconds
                "played": stats["total_chunks_played"], "error": error,
                "failover_ms": max(fetcher.stats.failover_times, default=0.0) * 1000,
                "failovers": fetcher.stats.failover_count, "hedges": fetcher.stats.hedges,
                "hedge_bytes": fetcher.stats.hedge_bytes,
                "bytes_fetched": fetcher.stats.bytes_fetched,
                "downloads": fetcher.stats.total_downloads,
                "average_buffer_sec": statistics.mean(levels) if levels else 0.0,
                "downloads_per_node": dict(fetcher.stats.downloads_per_node),
                "node_latency_ms": {u: s.latency_ms_sum / s.measurements
                                    for u, s in client.book.nodes.items() if s.measurements}}


async def throughput(cluster: Cluster, vid: str, naive: bool, viewers: int) -> float:
    """MB/s delivered to ``viewers`` viewers at once, each playing the video unpaced."""
    async def one() -> None:
        async with open_smart_client((cluster.meta,), POLICY, binary=False) as client:
            play = await client.playback(vid, speed=0, naive=naive, count_view=False)
            await play.run(_discard)

    started = trio.current_time()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(viewers):
                nursery.start_soon(one)
    return viewers * CHUNK * CHUNKS / (trio.current_time() - started) / 1e6


async def _discard(data: bytes) -> None:
    return None


def _spread(per_node: dict[str, int]) -> float:
    counts = [*per_node.values(), *[0] * (3 - len(per_node))]
    return max(counts) / max(1, min(counts))


def smooth(r: dict[str, Any]) -> float:
    """Media time played over media time plus stalls, in percent (100: never stalled)."""
    media = CHUNKS * 10.0
    return 100.0 * media / (media + float(r["rebuffering_sec"]))


def fault_after_two_chunks(cluster: Cluster, settings: dict[str, Any]
                           ) -> Callable[[Playback], Awaitable[None]]:
    async def apply(play: Playback) -> None:
        while play.buffer.chunks_played < 2:
            await trio.sleep(0.01)
        await cluster.faults(cluster.proxies[0], settings)

    return apply


async def bench(report: Report, work: Path, startups: int) -> None:
    cluster = Cluster(work)
    try:
        await trio.to_thread.run_sync(cluster.start)
        while len((await request("GET", f"{cluster.meta}/nodes/healthy")).json()) < 3:
            await trio.sleep(0.2)
        vid, size = await cluster.store_video()
        # Startup: several fresh viewers, no faults.
        starts: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(startups):
            for naive in (False, True):
                r = await play_once(cluster, vid, naive, None, stop_after_start=True)
                starts[naive].append(r["startup_ms"])
        smart_ms, naive_ms = statistics.median(starts[False]), statistics.median(starts[True])
        report.add(Row("startup latency, median (ms)", smart_ms, "ms", "--naive, same run (ms)",
                       naive_ms, higher_is_better=False,
                       extra={"target_ms": 300, "meets_target_ms": smart_ms <= 300,
                              "smart_ms": starts[False], "naive_ms": starts[True]}))
        for viewers in (1, 4):
            rate = {naive: await throughput(cluster, vid, naive, viewers)
                    for naive in (False, True)}
            what = "one viewer" if viewers == 1 else f"{viewers} concurrent viewers"
            report.add(Row(f"throughput, {what} (MB/s)", rate[False], "MB/s",
                           "--naive, same run (MB/s)", rate[True]))
        failover: dict[str, dict[bool, float]] = {}
        for name, settings in FAULTS.items():
            results = {}
            for naive in (False, True):
                await cluster.faults(cluster.proxies[0], {})
                fault = fault_after_two_chunks(cluster, settings) if settings else None
                results[naive] = await play_once(cluster, vid, naive, fault)
            await cluster.faults(cluster.proxies[0], {})
            smart, naive_r = results[False], results[True]
            print(f"    {name}: smart {smart}\n    {'':{len(name)}}  naive {naive_r}", flush=True)
            failover[name] = {n: r["failover_ms"] for n, r in results.items()}
            report.add(Row(f"{name}: smooth playback (%)", smooth(smart), "%",
                           "--naive, same run (%)", smooth(naive_r), extra={
                               "smart": smart, "naive": naive_r,
                               "zero_rebuffering": smart["rebuffering_events"] == 0,
                               "hedge_requested_bytes_percent":
                                   round(100.0 * smart["hedge_bytes"] / size, 2),
                               "extra_bytes_delivered_percent":
                                   round(100.0 * (smart["bytes_fetched"] - size) / size, 2)}))
            if not settings:  # the guide's no-fault figures
                report.add(Row("average buffer level, no faults (s)",
                               smart["average_buffer_sec"], "s", "--naive, same run (s)",
                               naive_r["average_buffer_sec"], extra={
                                   "target_sec": POLICY.target_sec,
                                   "node_latency_ms": smart["node_latency_ms"]}))
                spread = {n: _spread(r["downloads_per_node"]) for n, r in results.items()}
                report.add(Row("load spread, no faults (busiest / idlest node)",
                               spread[False], "x", "--naive, same run", spread[True],
                               higher_is_better=False, extra={
                                   "smart": smart["downloads_per_node"],
                                   "naive": naive_r["downloads_per_node"]}))
        for name, limit in (("one node killed", 100), ("one node hangs", 1000)):
            ms = failover[name]
            report.add(Row(f"{name}: longest failover (ms)", max(ms[False], 0.001), "ms",
                           "--naive, same run (ms)", max(ms[True], 0.001),
                           higher_is_better=False,
                           extra={"target_ms": limit, "meets_target_ms": ms[False] <= limit}))
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    report = Report("client")
    with tempfile.TemporaryDirectory(prefix="vstack-client-bench-") as tmp:
        trio.run(bench, report, Path(tmp), 3 if args.quick else 9)
    report.write()


if __name__ == "__main__":
    main()
