"""Three real metadata replica processes on loopback: kill one mid-stream, lose nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from nodes.net.http_client import HttpResult, request
from protocol.errors import TransportError
from tools.launch import ServiceProcess, free_port

SECRET = "test cluster secret, 32 bytes long"


class Replica(ServiceProcess):
    """Metadata replica ``i`` of the group on ``ports``; :meth:`start` does not wait for it."""

    def __init__(self, tmp: Path, i: int, ports: list[int], peer_ports: list[int]) -> None:
        self.i, self.port, self.tmp = i, ports[i], tmp
        super().__init__(
            "metadata",
            {"PORT": str(self.port), "HOST": "127.0.0.1",
             "DATABASE_URL": str(tmp / f"replica-{i}" / "metadata.db"),
             "METADATA_PEERS": ",".join(f"http://127.0.0.1:{p}" for p in ports),
             "METADATA_PEER_ADDRS": ",".join(f"127.0.0.1:{p}" for p in peer_ports),
             "METADATA_PEER_PORT": str(peer_ports[i]), "CLUSTER_SECRET": SECRET,
             "METADATA_ID": str(i), "LOG_LEVEL": "WARNING", "VIEWS_MERGE_INTERVAL": "0.2"},
            log=tmp / f"replica-{i}.log",
        )


def start_cluster(tmp: Path, count: int = 3) -> list[Replica]:
    """``count`` replica processes on fresh ports (started, not yet waited for)."""
    ports = [free_port() for _ in range(count)]
    peer_ports = [free_port() for _ in range(count)]
    replicas = [Replica(tmp, i, ports, peer_ports) for i in range(count)]
    for r in replicas:
        r.start()
    return replicas


async def call(port: int, method: str, path: str, body: object = None) -> HttpResult:
    with trio.fail_after(15):
        # With CLUSTER_SECRET set, writes need it (or an API token): send it.
        return await request(method, f"http://127.0.0.1:{port}{path}", json_body=body,
                             headers=[("Authorization", f"Bearer {SECRET}")])


async def wait_up(port: int) -> None:
    with trio.fail_after(20):
        while True:
            try:
                res = await request("GET", f"http://127.0.0.1:{port}/health")
                if res.status == 200 and not res.json().get("joining"):
                    return  # up, and voting (a new replica joins the others first)
            except TransportError:
                pass
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_sigkill_one_replica_during_commits(tmp_path: Path) -> None:
    replicas = start_cluster(tmp_path)
    ports = [r.port for r in replicas]
    try:
        for r in replicas:
            await wait_up(r.port)
        acked: list[str] = []
        killed = trio.Event()

        async def writer(w: int) -> None:
            for n in range(60):
                target = ports[(w + n) % 2]  # replicas 0 and 1 take the writes
                res = await call(target, "POST", "/video", {"title": f"w{w}-{n}", "duration_sec": 5})
                assert res.status == 200, res.body
                acked.append(res.json()["video_id"])
                if len(acked) == 40:
                    replicas[2].kill()
                    killed.set()

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for w in range(4):
                nursery.start_soon(writer, w)
        assert killed.is_set()
        assert len(acked) == 240
        elapsed = time.monotonic() - started
        for port in ports[:2]:  # the survivors have every acknowledged video
            listed = {v["video_id"] for v in (await call(port, "GET", "/videos?limit=1000")).json()}
            assert set(acked) <= listed
        # The killed replica comes back and catches up.
        replicas[2].start()
        await wait_up(ports[2])
        with trio.fail_after(30):
            while True:
                listed = {v["video_id"] for v in
                          (await call(ports[2], "GET", "/videos?limit=1000")).json()}
                if set(acked) <= listed:
                    break
                await trio.sleep(0.2)
        # And it takes part in new decisions.
        res = await call(ports[2], "POST", "/video", {"title": "after", "duration_sec": 1})
        assert res.status == 200
        vid = res.json()["video_id"]
        for port in ports:
            assert (await call(port, "GET", f"/manifest/{vid}")).status == 200
        assert elapsed < 60
        # Views counted at every replica add up everywhere, without consensus rounds.
        for n, port in enumerate(ports):
            for _ in range(n + 1):
                assert (await call(port, "POST", f"/video/{vid}/view")).status == 200
        with trio.fail_after(20):
            while True:
                counts = [(await call(p, "GET", f"/video/{vid}/popularity")).json()["view_count"]
                          for p in ports]
                if counts == [6, 6, 6]:
                    break
                assert all(c <= 6 for c in counts), "a view was counted twice"
                await trio.sleep(0.1)
    finally:
        for r in replicas:
            if r.running:
                r.kill()


@pytest.mark.slow
async def test_sigkill_the_proposing_replica_while_it_rewrites_the_same_keys(tmp_path: Path) -> None:
    """Replica 0 (the distinguished proposer) takes writes to the same few videos
    over and over and is killed mid-stream; every status it acknowledged last is
    what a linearizable read through the survivors returns; it comes back and
    agrees."""
    replicas = start_cluster(tmp_path)
    ports = [r.port for r in replicas]
    try:
        for r in replicas:
            await wait_up(r.port)
        videos = []
        for n in range(4):
            res = await call(ports[0], "POST", "/video", {"title": f"v{n}", "duration_sec": 5})
            videos.append(res.json()["video_id"])
        last_acked: dict[str, str] = {}
        statuses = ("uploading", "active", "deleted")  # cycled: a stale read shows

        async def rewriter(k: int) -> None:
            vid = videos[k]
            for n in range(400):
                status = statuses[n % 3]
                try:
                    res = await call(ports[0], "PATCH", f"/video/{vid}/status", {"status": status})
                except TransportError:
                    return  # replica 0 is gone: what it acknowledged is what counts
                if res.status != 200:
                    return
                last_acked[vid] = status
                if k == 0 and n == 60:
                    replicas[0].kill()

        async with trio.open_nursery() as nursery:
            for k in range(len(videos)):
                nursery.start_soon(rewriter, k)
        assert len(last_acked) == len(videos)
        for vid, status in last_acked.items():  # through a quorum of the survivors
            res = await call(ports[1], "GET", f"/manifest/{vid}?consistency=linearizable")
            assert res.status == 200, res.body
            # The last acknowledged write, or the one sent after it, which may have
            # been chosen without its answer arriving (its outcome was unknown);
            # never an older one.
            after = statuses[(statuses.index(status) + 1) % 3]
            assert res.json()["status"] in (status, after)
        final = {vid: (await call(ports[1], "GET", f"/manifest/{vid}?consistency=linearizable")
                       ).json()["status"] for vid in videos}
        replicas[0].start()
        await wait_up(ports[0])
        for vid, status in final.items():  # the restarted proposer agrees
            res = await call(ports[0], "GET", f"/manifest/{vid}?consistency=linearizable")
            # ... or its read round completes the write it had accepted alone when
            # it was killed (the one after the last acknowledged: its outcome was
            # unknown, so it may take effect now; linearizable all the same).
            in_flight = statuses[(statuses.index(last_acked[vid]) + 1) % 3]
            assert res.json()["status"] in (status, in_flight)
        res = await call(ports[0], "PATCH", f"/video/{videos[0]}/status", {"status": "active"})
        assert res.status == 200
        for port in ports:
            with trio.fail_after(10):
                while (await call(port, "GET", f"/manifest/{videos[0]}")).json()["status"] != "active":
                    await trio.sleep(0.05)
    finally:
        for r in replicas:
            if r.running:
                r.kill()
