"""A seeded chaos round against a real cluster: ``python -m tools.chaos --seed 1 --seconds 60``.

The cluster, every service a child process on 127.0.0.1: 3 metadata replicas,
4 storage nodes behind the network emulator (each registers its proxy's URL,
so every read and write of a chunk crosses a proxy), the uploader and the
redundancy manager (passes every second, repairs after 3 s). While uploads (a
real clip, cut by FFmpeg) and playbacks (the smart client, every byte checked)
run, faults are drawn from the seed every 1-2 s, for ``--seconds``:

* a storage node SIGKILLed, restarted 1-3 s later (one down at a time);
* a metadata replica SIGKILLed, restarted 1-3 s later (a majority stays up);
* emulator faults on one node's proxy for 2 s: latency with jitter, or resets;
* one byte flipped in a superblock file of a node (a disk gone bad).

Then the faults stop, everything is started again, and the round waits (at
most ``--converge`` seconds) until the cluster has converged: every replica
shows the same manifest for every acknowledged upload, no chunk is short of
copies on the metadata's count, and every acknowledged upload reads back
whole with the right SHA-256. It prints, and returns as a :class:`Report`:
the invariants (every acknowledged upload readable, every playback
finished), the rebuffering events, the faults by kind, and the time the
cluster took to converge after the last fault. The same seed draws the same
faults at the same moments (what the processes do meanwhile is up to the
kernel). Bounded: the round, every wait and every request have deadlines.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import trio

from nodes.client.client import open_smart_client
from nodes.client.fetcher import FetchFailed
from nodes.net.http_client import HttpClient, request
from nodes.uploader.ffmpeg import find_ffmpeg
from protocol.errors import VStackError
from tools.launch import ServiceProcess, free_port
from tools.make_sample import make_sample
from tools.put_cli import send_multipart
from vstack.media import parse_probe, probe_command
from vstack.playback import BufferPolicy

__all__ = ["Report", "run_round"]


@dataclass
class Report:
    seed: int
    seconds: float
    uploads_acknowledged: list[str] = field(default_factory=list)
    uploads_failed: int = 0
    playbacks: int = 0
    playbacks_failed: list[str] = field(default_factory=list)
    rebuffering_events: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    converged_after_sec: float | None = None
    unreadable: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    #: The clip's chunks' SHA-256, from an upload before any fault: every acknowledged
    #: upload of the same clip must read back as exactly these.
    reference: list[str] = field(default_factory=list)

    @property
    def invariants_hold(self) -> bool:
        return (self.converged_after_sec is not None and not self.unreadable
                and not self.playbacks_failed and not self.disagreements)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "seconds": self.seconds,
                "uploads_acknowledged": len(self.uploads_acknowledged),
                "uploads_failed": self.uploads_failed, "playbacks": self.playbacks,
                "playbacks_failed": self.playbacks_failed,
                "rebuffering_events": self.rebuffering_events, "faults": dict(self.faults),
                "reference_chunks": len(self.reference),
                "converged_after_sec": self.converged_after_sec,
                "unreadable": self.unreadable, "disagreements": self.disagreements,
                "invariants_hold": self.invariants_hold}


class Cluster:
    """The round's processes (see the module's docstring)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        logs = work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        ports, peers = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
        self.meta = [f"http://127.0.0.1:{p}" for p in ports]
        meta_env = {"METADATA_PEERS": ",".join(self.meta), "NODE_TIMEOUT": "3",
                    "HEARTBEAT_INTERVAL": "0.5", "LOG_LEVEL": "WARNING",
                    "METADATA_PEER_ADDRS": ",".join(f"127.0.0.1:{p}" for p in peers)}
        self.replicas = [ServiceProcess("metadata", {
            **meta_env, "PORT": str(ports[i]), "METADATA_ID": str(i),
            "METADATA_PEER_PORT": str(peers[i]),
            "DATABASE_URL": str(work / f"meta{i}" / "metadata.db")},
            ports=(ports[i],), log=logs / f"meta{i}.log") for i in range(3)]
        self.control = free_port()
        specs, self.nodes, self.proxies = [], [], []
        for i in range(4):
            port, binary, proxy = free_port(), free_port(), free_port()
            specs.append(f"{proxy}=127.0.0.1:{port}")
            self.proxies.append(proxy)
            self.nodes.append(ServiceProcess("storage", {
                "PORT": str(port), "BINARY_PORT": str(binary), "DATA_DIR": str(work / f"n{i}"),
                "NODE_ID": f"n{i}", "NODE_URL": f"http://127.0.0.1:{proxy}",
                "METADATA_SERVICE_URL": ",".join(self.meta), "HEARTBEAT_INTERVAL": "0.5",
                "SCRUB_RATE": "0", "LOG_LEVEL": "WARNING"},
                ports=(port, binary), log=logs / f"n{i}.log"))
        self.netem = ServiceProcess("netem", {
            "NETEM_PROXIES": " ".join(specs), "NETEM_CONTROL_PORT": str(self.control),
            "LOG_LEVEL": "WARNING"}, ports=(self.control, *self.proxies), log=logs / "netem.log")
        up = free_port()
        self.uploader_url = f"http://127.0.0.1:{up}"
        self.uploader = ServiceProcess("uploader", {
            "PORT": str(up), "METADATA_SERVICE_URL": ",".join(self.meta),
            "TEMP_DIR": str(work / "uploads"), "CHUNK_DURATION": "1", "LOG_LEVEL": "WARNING"},
            ports=(up,), log=logs / "uploader.log")
        self.manager = ServiceProcess("redundancy", {
            "METADATA_SERVICE_URL": ",".join(self.meta), "REDUNDANCY_INTERVAL_SEC": "1",
            "REPAIR_GRACE_SEC": "3", "ORPHAN_GRACE_SEC": "30", "REDUNDANCY_PORT": "0",
            "LOG_LEVEL": "WARNING"}, log=logs / "manager.log")
        self.restarting: set[ServiceProcess] = set()  # killed, and not yet back

    def everything(self) -> list[ServiceProcess]:
        return [*self.replicas, self.netem, *self.nodes, self.uploader, self.manager]

    def start(self) -> None:
        for p in self.replicas:
            p.start()
        for p in self.everything()[3:]:
            p.start(timeout=30)

    def stop(self) -> None:
        for p in self.everything():
            if p.running:
                p.kill(signal.SIGKILL)


async def _healthy_nodes(meta: str) -> int:
    try:
        res = await request("GET", f"{meta}/nodes/healthy")
        return len(res.json()) if res.status == 200 else 0
    except VStackError:
        return 0


async def _faults(c: Cluster, rng: random.Random, until: float, report: Report,
                  nursery: trio.Nursery) -> None:
    """Draw and apply faults until ``until`` (see the module's docstring)."""
    while trio.current_time() < until:
        await trio.sleep(rng.uniform(1.0, 2.0))
        kind = rng.choice(["kill node", "kill replica", "netem", "flip byte"])
        if kind == "kill node" or kind == "kill replica":
            group = c.nodes if kind == "kill node" else c.replicas
            if any(p in c.restarting for p in group):
                continue  # one of a kind down at a time: a majority, and 3 of 4 nodes
            victim = rng.choice(group)
            victim.kill(signal.SIGKILL)
            c.restarting.add(victim)
            nursery.start_soon(_restart_later, c, victim, rng.uniform(1.0, 3.0))
        elif kind == "netem":
            proxy = rng.choice(c.proxies)
            faults: dict[str, Any] = rng.choice([{"latency_ms": 300, "jitter_ms": 100},
                                                 {"reset_rate": 0.05}])
            await _set_faults(c, proxy, faults)
            nursery.start_soon(_clear_later, c, proxy, 2.0)
        else:
            node = rng.choice(c.nodes)
            files = sorted((Path(node.env["DATA_DIR"]) / "data").glob("superblock_*.dat"))
            files = [f for f in files if f.stat().st_size > 4096]
            if not files:
                continue
            target = rng.choice(files)
            await trio.to_thread.run_sync(_flip, target, rng.randrange(target.stat().st_size))
        report.faults[kind] += 1


def _flip(path: Path, offset: int) -> None:
    """Blocking: invert one byte of ``path``, as a disk gone bad would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


async def _restart_later(c: Cluster, p: ServiceProcess, delay: float) -> None:
    await trio.sleep(delay)
    try:
        await _start(p)
    finally:
        c.restarting.discard(p)


async def _start(p: ServiceProcess) -> None:
    """Start ``p`` again; a few tries (its port may be taken for a moment by an
    outgoing connection of this machine)."""
    for attempt in range(5):
        try:
            await trio.to_thread.run_sync(p.start, 30.0)
            return
        except RuntimeError:
            if attempt == 4:
                raise
            await trio.sleep(1)


async def _set_faults(c: Cluster, proxy: int, faults: dict[str, Any]) -> None:
    body = {"mode": "normal", "latency_ms": 0, "jitter_ms": 0, "reset_rate": 0,
            "stall_rate": 0, **faults}
    await request("PUT", f"http://127.0.0.1:{c.control}/proxies/{proxy}", json_body=body)


async def _clear_later(c: Cluster, proxy: int, delay: float) -> None:
    await trio.sleep(delay)
    await _set_faults(c, proxy, {})


async def _uploads(c: Cluster, clip: Path, until: float, report: Report) -> None:
    async with HttpClient(max_idle_per_host=0) as http:
        n = 0
        while trio.current_time() < until:
            n += 1
            try:
                with trio.fail_after(60):
                    answer = await send_multipart(c.uploader_url, clip, f"chaos {n}", http=http)
                    session = answer["upload_session_id"]
                    while True:
                        state = (await http.request(
                            "GET", f"{c.uploader_url}/upload/status/{session}")).json()
                        if state["status"] in ("completed", "failed"):
                            break
                        await trio.sleep(0.2)
            except (VStackError, trio.TooSlowError, KeyError, TypeError) as exc:
                report.uploads_failed += 1
                click.echo(f"  upload {n} failed: {exc}", err=True)
                await trio.sleep(0.5)
                continue
            if state["status"] == "completed":
                report.uploads_acknowledged.append(str(answer["video_id"]))
            else:
                report.uploads_failed += 1


async def _playbacks(c: Cluster, until: float, rng: random.Random, report: Report) -> None:
    async with open_smart_client(tuple(c.meta), BufferPolicy(), binary=False,
                                 monitoring_interval=1.0) as client:
        while trio.current_time() < until:
            if not report.uploads_acknowledged:
                await trio.sleep(0.5)
                continue
            vid = rng.choice(report.uploads_acknowledged)
            report.playbacks += 1
            try:
                with trio.fail_after(60):
                    play = await client.playback(vid, speed=4, count_view=False)
                    await play.run(_discard)
                report.rebuffering_events += play.buffer.rebuffering_events
            except (VStackError, trio.TooSlowError) as exc:
                report.playbacks_failed.append(f"{vid}: {exc}")


async def _reference(c: Cluster, clip: Path) -> list[str]:
    """The clip uploaded once with no fault; its chunks' SHA-256 as read back."""
    async with HttpClient(max_idle_per_host=0) as http:
        with trio.fail_after(60):
            answer = await send_multipart(c.uploader_url, clip, "reference", http=http)
            for _ in range(300):  # the uploader's status, polled
                state = (await http.request("GET", f"{c.uploader_url}/upload/status/"
                                            f"{answer['upload_session_id']}")).json()
                if state["status"] in ("completed", "failed"):
                    break
                await trio.sleep(0.2)
    if state["status"] != "completed":
        raise RuntimeError(f"the reference upload failed: {state}")
    got: list[str] = []

    async def keep(data: bytes) -> None:
        got.append(hashlib.sha256(data).hexdigest())

    parts: list[bytes] = []

    async def keep_bytes(data: bytes) -> None:
        parts.append(data)
        await keep(data)

    async with open_smart_client(tuple(c.meta), BufferPolicy(), binary=False) as client:
        play = await client.playback(str(answer["video_id"]), speed=0, count_view=False)
        await play.run(keep_bytes)
    # Independent of the system under test: FFmpeg must find the whole clip in what
    # came back (a store that dropped a chunk would agree with itself, not with this).
    whole, back = await trio.to_thread.run_sync(_durations, clip, b"".join(parts))
    if abs(whole - back) > 0.2:
        raise RuntimeError(f"the reference upload read back {back:.2f} s of a {whole:.2f} s clip")
    return got


def _durations(clip: Path, stored: bytes) -> tuple[float, float]:
    """Blocking: the clip's duration, and that of the bytes read back, by FFmpeg."""
    ffmpeg = find_ffmpeg()
    copy = clip.with_suffix(".readback.ts")
    copy.write_bytes(stored)
    out = []
    for path in (clip, copy):
        run = subprocess.run(probe_command(ffmpeg, path), capture_output=True, text=True,
                             timeout=60)
        out.append(parse_probe(run.stderr).duration)
    return out[0], out[1]


async def _discard(data: bytes) -> None:
    return None


async def _converged(c: Cluster, report: Report) -> bool:
    """Replicas agree on every acknowledged upload, nothing is short of copies, and
    every acknowledged upload reads back whole (SHA-256 checked)."""
    report.disagreements, report.unreadable = [], []
    for vid in report.uploads_acknowledged:
        seen = set()
        for meta in c.meta:
            # Each replica's own tables (a local read): a linearizable one would make
            # the replica catch up first, and hide one that does not by itself.
            res = await request("GET", f"{meta}/manifest/{vid}")
            if res.status != 200:
                report.disagreements.append(f"{vid}: {meta} answered {res.status}")
                continue
            seen.add(json.dumps([(ch["chunk_id"], ch["checksum"], sorted(ch["replicas"] or []),
                                  sorted((f["fragment_index"], f["node_url"])
                                         for f in ch.get("fragments") or []))
                                 for ch in res.json()["chunks"]]))
        if len(seen) > 1:
            report.disagreements.append(f"{vid}: replicas show different placements")
    overhead = (await request("GET", f"{c.meta[0]}/storage/overhead")).json()
    if overhead.get("under_replicated_chunks") or overhead.get("unreadable_chunks"):
        return False
    async with open_smart_client(tuple(c.meta), BufferPolicy(), binary=False) as client:
        for vid in report.uploads_acknowledged:
            got: list[str] = []

            async def check(data: bytes, got: list[str] = got) -> None:
                got.append(hashlib.sha256(data).hexdigest())  # checked here, independently

            try:
                with trio.fail_after(30):
                    play = await client.playback(vid, speed=0, count_view=False)
                    await play.run(check)
            except (FetchFailed, VStackError, trio.TooSlowError) as exc:
                report.unreadable.append(f"{vid}: {exc}")
                continue
            if got != [ch.checksum for ch in play.manifest.chunks]:
                report.unreadable.append(f"{vid}: bytes that do not match their SHA-256")
            elif got != report.reference:  # the same clip is cut into the same chunks
                report.unreadable.append(f"{vid}: {len(got)} chunks, not the {len(report.reference)}"
                                         " the clip is cut into, or other bytes")
    return not report.disagreements and not report.unreadable


async def run_round(seed: int, seconds: float, work: Path, *, converge: float = 120.0
                    ) -> Report:
    rng = random.Random(seed)
    report = Report(seed=seed, seconds=seconds)
    await trio.Path(work).mkdir(parents=True, exist_ok=True)
    clip = await trio.to_thread.run_sync(lambda: make_sample(
        work / "clip.mp4", seconds=4, size="320x240", rate=25))
    c = Cluster(work)
    try:
        await trio.to_thread.run_sync(c.start)
        for _ in range(300):  # a remote condition, polled for at most 60 s
            if await _healthy_nodes(c.meta[0]) >= 4:
                break
            await trio.sleep(0.2)
        else:
            raise RuntimeError("the storage nodes did not register within 60 s")
        report.reference = await _reference(c, clip)
        until = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_uploads, c, clip, until, report)
            nursery.start_soon(_playbacks, c, until, random.Random(seed + 1), report)
            await _faults(c, rng, until, report, nursery)
        last_fault = trio.current_time()  # restarts and clears are done: the nursery waited
        for p in c.everything():
            if not p.running:
                await _start(p)
        with trio.move_on_after(converge):
            while True:
                try:
                    if await _converged(c, report):
                        report.converged_after_sec = round(trio.current_time() - last_fault, 2)
                        break
                except VStackError:
                    pass
                await trio.sleep(1)
    finally:
        await trio.to_thread.run_sync(c.stop)
    return report


@click.command()
@click.option("--seed", default=1, show_default=True, help="Draws the faults and their times.")
@click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="How long faults are injected.")
@click.option("--converge", default=180.0, show_default=True, type=click.FloatRange(1, 3600),
              help="The longest the cluster may take to converge afterwards.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the cluster's data and logs go (default: a temporary directory).")
def main(seed: int, seconds: float, converge: float, work: Path | None) -> None:
    """Run one seeded chaos round against a cluster this command starts, print the report."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vstack-chaos-") as tmp:
        report = trio.run(lambda: run_round(seed, seconds, work or Path(tmp),
                                            converge=converge))
    click.echo(json.dumps({**report.to_json(), "wall_sec": round(time.monotonic() - started)},
                          indent=2))
    if not report.invariants_hold:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
