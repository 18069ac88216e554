"""The smart client against real storage nodes: playback, failover, hedging, damage.

A real cluster (metadata replica, storage nodes on 127.0.0.1, real bytes
checked by SHA-256) and trio's MockClock: a playback in real time at speed
1 takes virtual seconds, so the buffer's behaviour (level, rebuffering,
hedging while it is low) is what a viewer would see, measured exactly.
"""

from __future__ import annotations

import gc
import json
import socket as pysocket
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from nodes.client.client import SmartClient, open_smart_client
from nodes.client.fetcher import FetchFailed
from nodes.client.service import serve_client_http
from nodes.client.session import Playback, PlaybackError
from nodes.net.http_client import request
from nodes.netem.service import serve_netem
from nodes.netem.state import Netem
from protocol.api import chunk_id
from protocol.errors import VStackError
from vstack.netem import NetemSettings, ProxySpec
from vstack.playback import BufferPolicy
from vstack.settings import ClientSettings

from .cluster import Cluster, start_cluster

POLICY = BufferPolicy()  # the documented defaults: 30 s target, 15 s low water, 4 at once


class Recorder:
    """A sink that keeps what it was given, and the buffer level at each chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.play: Playback | None = None
        self.levels: list[float] = []

    async def __call__(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.play is not None:
            self.levels.append(self.play.buffer.level_sec(trio.current_time()))


async def play(client: SmartClient, vid: str, *, during: Callable[[Playback], Any] | None = None,
               speed: float = 1.0, naive: bool = False) -> tuple[Playback, Recorder]:
    """Play ``vid`` to the end (running ``during(playback)`` beside it); raises what
    the playback raised, as itself."""
    p = await client.playback(vid, speed=speed, naive=naive)
    rec = Recorder()
    rec.play = p
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        if during is not None:
            nursery.start_soon(during, p)
        try:
            await p.run(rec)
        except Exception as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return p, rec


async def cluster(nursery: trio.Nursery, start_node: Callable[..., Any],
                  start_metadata: Callable[..., Any], tmp_path: Any, nodes: int = 4,
                  **kwargs: Any) -> Cluster:
    return await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=nodes,
                               **kwargs)


async def test_a_playback_delivers_every_chunk_in_order_and_counts_a_view(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path)
    vid = await c.pinned_video("replication", chunks=6, size=200_000)
    async with open_smart_client((c.meta,), POLICY) as client:
        start = trio.current_time()
        p, rec = await play(client, vid)
        took = trio.current_time() - start
    assert rec.chunks == c.data[vid]
    stats = p.stats()
    assert stats["rebuffering_events"] == 0
    assert stats["total_chunks_played"] == 6
    assert p.startup_latency is not None
    assert p.startup_latency < 1.0
    assert 60 <= took < 62  # real time: six chunks of 10 s
    views = (await request("GET", f"{c.meta}/video/{vid}/popularity")).json()
    assert views["view_count"] == 1


async def test_the_buffer_refills_between_the_low_water_mark_and_the_target(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path)
    vid = await c.pinned_video("replication", chunks=12, size=20_000, duration=5.0)
    peak = 0.0
    held = 0

    async def watch(p: Playback) -> None:
        nonlocal peak, held
        while True:
            peak = max(peak, p.buffer.level_sec(trio.current_time()))
            held = max(held, len(p.buffer.buffered))
            await trio.sleep(0.25)

    async with open_smart_client((c.meta,), POLICY) as client:
        _, rec = await play(client, vid, during=watch)
    assert rec.chunks == c.data[vid]
    # Never much past the target (30 s: six 5 s chunks, plus the one playing).
    assert 25 <= peak <= 35
    assert held <= 6
    # Once started, the level stays above the low-water mark until the end nears.
    assert min(rec.levels[1:-4]) >= POLICY.low_water_sec


async def test_erasure_coded_video_plays_with_two_shards_lost(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path, nodes=5)
    vid = await c.pinned_video("erasure_coding", chunks=4, size=150_001)
    # Two shards of every chunk gone (deleted from whichever node holds them).
    m = await c.manifest(vid)
    for chunk in m.chunks:
        assert chunk.fragments is not None
        for f in chunk.fragments[:2]:
            await request("DELETE", f"{f.node_url}/chunk/{f.fragment_id}")
    async with open_smart_client((c.meta,), POLICY) as client:
        p, rec = await play(client, vid)
        stats = client.fetcher.stats
    assert rec.chunks == c.data[vid]
    assert p.stats()["rebuffering_events"] == 0
    assert stats.failed_downloads >= 1  # asked a node for a shard it no longer holds


async def test_a_node_killed_mid_playback_costs_no_rebuffering(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path)
    vid = await c.pinned_video("replication", chunks=8, size=200_000)
    victim = c.nodes[0]  # holds every chunk (replicas go on the first three)

    async def kill_at_chunk_2(p: Playback) -> None:
        while p.buffer.chunks_played < 2:
            await trio.sleep(0.1)
        await c.stops.pop(victim)()

    async with open_smart_client((c.meta,), POLICY) as client:
        p, rec = await play(client, vid, during=kill_at_chunk_2)
        stats = client.fetcher.stats
        ejected = client.book[victim].score(trio.current_time()) == 0.0
    assert rec.chunks == c.data[vid]
    assert p.stats()["rebuffering_events"] == 0
    assert stats.failover_count >= 1 or stats.downloads_per_node.get(victim, 0) <= 2
    assert ejected  # the probes found it down
    assert all(t < 0.1 for t in stats.failover_times)  # a refused connection: next copy at once


async def test_a_damaged_copy_is_detected_avoided_and_reported(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = await c.pinned_video("replication", chunks=3, size=100_000)
    # Nodes 0 and 1 hold other bytes under each chunk's id (as a disk gone bad, or a
    # node that lies, would serve them).
    damaged = c.nodes[:2]
    for url in damaged:
        for seq in range(3):
            cid = chunk_id(vid, seq)
            await request("DELETE", f"{url}/chunk/{cid}")
            await c.store(url, cid, b"x" * 100_000)
    manifest = await c.manifest(vid)
    async with open_smart_client((c.meta,), POLICY) as client:
        # The damaged nodes look best: whichever two the choice draws, one is asked first.
        for url, latency in zip(c.nodes, (0.0001, 0.001, 0.01), strict=True):
            client.book[url].probed(latency, trio.current_time())
        got = [await client.fetcher.fetch(chunk) for chunk in manifest.chunks]
        stats = client.fetcher.stats
        assert got == c.data[vid]  # never the damaged bytes
        bad = {(d["node_url"], d["chunk_id"]) for d in stats.corrupt_copies}
        assert bad
        assert {url for url, _ in bad} <= set(damaged)
        assert client.status()["scheduler_stats"]["corrupt_copies"]
        _, rec = await play(client, vid, speed=0)
        assert rec.chunks == c.data[vid]


async def test_a_chunk_no_copy_serves_ends_playback_with_one_error(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = await c.pinned_video("replication", chunks=3, size=10_000)
    for url in c.nodes:
        await request("DELETE", f"{url}/chunk/{chunk_id(vid, 1)}")
    async with open_smart_client((c.meta,), POLICY) as client:
        with pytest.raises(PlaybackError, match="chunk 1"):
            await play(client, vid, speed=0)
        with pytest.raises(FetchFailed, match="no video"):
            await client.playback("no-such-video")


async def start_proxies(nursery: trio.Nursery, ports: list[int]) -> tuple[Netem, dict[int, int]]:
    """A network emulator proxy in front of each port; returns it and port -> proxy port."""
    settings = NetemSettings(proxies=tuple(ProxySpec(listen_port=0, host="127.0.0.1", port=p)
                                           for p in ports), control_port=0)
    em: Netem = await nursery.start(serve_netem, settings)
    by_target = {proxy.spec.port: port for port, proxy in em.proxies.items()}
    return em, by_target


async def proxied_cluster(nursery: trio.Nursery, start_node: Callable[..., Any],
                          start_metadata: Callable[..., Any], tmp_path: Any
                          ) -> tuple[Cluster, Netem, list[str]]:
    """Three nodes, each registered at the URL of an emulator proxy in front of it."""
    from tools.launch import free_port

    ports = [free_port() for _ in range(3)]
    em, proxy_of = await start_proxies(nursery, ports)
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=3,
                            public_url=lambda port: f"http://127.0.0.1:{proxy_of[port]}",
                            ports=iter(ports))
    return c, em, c.nodes


async def set_faults(em: Netem, url: str, **faults: Any) -> None:
    port = url.rsplit(":", 1)[1]
    res = await request("PUT", f"http://127.0.0.1:{em.control_port}/proxies/{port}",
                        json_body=faults)
    assert res.status == 200, res.body


async def test_a_slow_download_while_the_buffer_is_low_is_hedged_and_the_hedge_wins(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c, em, urls = await proxied_cluster(nursery, start_node, start_metadata, tmp_path)
    vid = await c.pinned_video("replication", chunks=1, size=500_000)
    [chunk] = (await c.manifest(vid)).chunks
    async with open_smart_client((c.meta,), POLICY, binary=False) as client:
        slow = urls[0]
        for url in urls:  # the slow node looks best, so it is asked first
            client.book[url].probed(0.001 if url == slow else 0.010, trio.current_time())
        await set_faults(em, slow, latency_ms=5000)
        start = trio.current_time()
        data = await client.fetcher.fetch(chunk, urgent=lambda: True, best=True)
        took = trio.current_time() - start
        stats = client.fetcher.stats
        assert data == c.data[vid][0]
        assert (stats.hedges, stats.hedges_won) == (1, 1)
        assert took < 0.5  # not the 10 s the slow node would take
        # Not urgent (the buffer is healthy): no hedge; the slow download runs to
        # its timeout, then the next copy is asked.
        client.book[slow].probed(0.001, trio.current_time() + 60)
        client.book[slow].throughput = 1e9
        data = await client.fetcher.fetch(chunk, urgent=lambda: False)
        assert data == c.data[vid][0]
        assert stats.hedges == 1


async def test_a_node_turning_slow_mid_playback_costs_no_rebuffering(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c, em, urls = await proxied_cluster(nursery, start_node, start_metadata, tmp_path)
    vid = await c.pinned_video("replication", chunks=10, size=500_000)

    async def slow_down_at_chunk_2(p: Playback) -> None:
        while p.buffer.chunks_played < 2:
            await trio.sleep(0.1)
        await set_faults(em, urls[0], latency_ms=8000)

    async with open_smart_client((c.meta,), POLICY, binary=False) as client:
        p, rec = await play(client, vid, during=slow_down_at_chunk_2)
        slow_score = client.book[urls[0]].score(trio.current_time())
        others = min(client.book[u].score(trio.current_time()) for u in urls[1:])
    assert rec.chunks == c.data[vid]
    assert p.stats()["rebuffering_events"] == 0
    assert min(rec.levels[1:-4]) >= POLICY.low_water_sec
    assert slow_score < others / 10  # the probes saw it: it is avoided


async def test_the_dashboard_websocket_pushes_the_status(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = await c.pinned_video("replication", chunks=3, size=10_000)
    async with open_smart_client((c.meta,), POLICY) as client, trio.open_nursery() as n:
        svc = await _service(n, c, client)
        res = await request("POST", f"http://127.0.0.1:{svc.port}/api/control",
                            json_body={"command": "play", "video_id": vid})
        assert res.status == 200, res.body
        async with open_websocket_url(f"ws://127.0.0.1:{svc.port}/ws") as ws:
            seen: list[dict[str, Any]] = []
            with trio.fail_after(60):
                while not seen or seen[-1]["buffer_stats"]["total_chunks_played"] < 2:
                    seen.append(json.loads(await ws.get_message()))
        assert seen[-1]["video_id"] == vid
        assert seen[-1]["buffer"]["state"] in ("healthy", "full", "low")
        assert set(seen[-1]["node_scores"]) <= set(c.nodes)
        page = await request("GET", f"http://127.0.0.1:{svc.port}/")
        assert page.status == 200
        assert b"/ws" in page.body
        n.cancel_scope.cancel()


async def test_the_client_service_answers_as_the_contract_says(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = await c.pinned_video("erasure_coding", chunks=3, size=70_000)
    async with open_smart_client((c.meta,), POLICY) as client, trio.open_nursery() as n:
        svc = await _service(n, c, client)
        base = f"http://127.0.0.1:{svc.port}"
        assert (await request("GET", f"{base}/health")).json() == {"status": "healthy"}
        streamed = await request("GET", f"{base}/api/stream/{vid}", max_bytes=10_000_000)
        assert streamed.status == 200
        assert streamed.body == b"".join(c.data[vid])
        missing = await request("GET", f"{base}/api/stream/nope")
        assert missing.status == 404
        assert missing.body == b"Video not found or failed to start"
        for body, status, error in [
                (b"{", 400, "Invalid JSON"), (b"[]", 400, None), (b"{}", 400, "command"),
                (b'{"command": "play"}', 400, "video_id"),
                (b'{"command": "play", "video_id": " "}', 400, "empty"),
                (b'{"command": "dance"}', 400, "Unknown command"),
                (b'{"command": "play", "video_id": "nope"}', 404, None)]:
            res = await request("POST", f"{base}/api/control", body=body,
                                headers=[("Content-Type", "application/json")])
            assert res.status == status, (body, res.body)
            assert "error" in res.json()
            if error:
                assert error in res.json()["error"]
        stop = await request("POST", f"{base}/api/control", json_body={"command": "stop"})
        assert stop.json() == {"status": "stopped"}
        hist = (await request("GET", f"{base}/api/history")).json()["history"]
        assert hist
        assert {"timestamp", "buffer_level", "buffer_health", "download_rate",
                         "active_downloads", "node_scores"} <= set(hist[0])
        status = (await request("GET", f"{base}/api/status")).json()
        assert {"is_initialized", "video_id", "playing", "startup_latency", "buffer",
                "buffer_stats", "scheduler_stats", "network_stats", "node_scores"} <= set(status)
        assert isinstance(status["network_stats"], list)
        n.cancel_scope.cancel()


async def test_the_hls_playlist_lists_every_chunk_and_segments_are_the_chunks(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path, nodes=5)
    vid = await c.pinned_video("erasure_coding", chunks=4, size=90_000, duration=9.6)
    async with open_smart_client((c.meta,), POLICY) as client, trio.open_nursery() as n:
        svc = await _service(n, c, client)
        base = f"http://127.0.0.1:{svc.port}/hls"
        res = await request("GET", f"{base}/{vid}.m3u8")
        assert res.status == 200
        assert res.headers["content-type"] == "application/vnd.apple.mpegurl"
        lines = res.body.decode().splitlines()
        assert lines[0] == "#EXTM3U"
        assert lines[-1] == "#EXT-X-ENDLIST"
        assert "#EXT-X-TARGETDURATION:10" in lines
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in lines
        assert [ln for ln in lines if ln.startswith("#EXTINF")] == ["#EXTINF:9.600,"] * 4
        segments = [ln for ln in lines if not ln.startswith("#")]
        assert segments == [f"{vid}/{i}.ts" for i in range(4)]
        for i, seg in enumerate(segments):
            got = await request("GET", f"{base}/{seg}")
            assert got.status == 200
            assert got.body == c.data[vid][i]
        assert client_hits(svc) >= 2  # the next segments were prefetched
        for bad in (f"{vid}/4.ts", f"{vid}/-1.ts", f"{vid}/99999999999.ts", "nope.m3u8"):
            assert (await request("GET", f"{base}/{bad}")).status == 404, bad
        assert (await request("GET", f"{base}/a%2Fb.m3u8")).status in (400, 404)
        n.cancel_scope.cancel()


def client_hits(svc: Any) -> int:
    return int(svc.hls.cache_hits)

async def _service(n: trio.Nursery, c: Cluster, client: SmartClient, **kw: Any) -> Any:
    settings = ClientSettings(metadata_urls=(c.meta,), port=0, **kw)
    return await n.start(lambda task_status: serve_client_http(
        client, n, settings, port=0, task_status=task_status))


async def test_stream_stops_when_the_viewer_disconnects(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = await c.pinned_video("replication", chunks=40, size=1_000_000)
    async with open_smart_client((c.meta,), POLICY) as client, trio.open_nursery() as n:
        svc = await _service(n, c, client)
        s = await trio.open_tcp_stream("127.0.0.1", svc.port)
        await s.send_all(f"GET /api/stream/{vid} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        got = 0
        while got < 100_000:
            got += len(await s.receive_some(65536))
        await s.aclose()  # the viewer leaves
        await trio.sleep(5)
        gc.collect()
        await trio.sleep(5)
        before = client.fetcher.stats.total_downloads
        await trio.sleep(30)
        assert client.fetcher.stats.total_downloads == before, "still fetching for nobody"
        # The service is still up and serving.
        res = await request("GET", f"http://127.0.0.1:{svc.port}/health")
        assert res.status == 200
        n.cancel_scope.cancel()


async def test_a_stream_that_loses_a_chunk_does_not_end_as_if_complete(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = await c.pinned_video("replication", chunks=3, size=50_000)
    for url in c.nodes:
        await request("DELETE", f"{url}/chunk/{chunk_id(vid, 1)}")
    async with open_smart_client((c.meta,), POLICY) as client, trio.open_nursery() as n:
        svc = await _service(n, c, client)
        try:
            res = await request("GET", f"http://127.0.0.1:{svc.port}/api/stream/{vid}",
                                max_bytes=10_000_000)
        except VStackError:
            pass  # the transfer was cut: the viewer knows the video is incomplete
        else:
            assert res.body == b"".join(c.data[vid]), (
                f"{res.status}, {len(res.body)} of {3 * 50_000} bytes, ended as complete")
        n.cancel_scope.cancel()


def _tasks_named(fragment: str) -> int:
    """How many running tasks have ``fragment`` in their name."""
    found = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        t = stack.pop()
        if fragment in t.name:
            found += 1
        for n in t.child_nurseries:
            stack.extend(n.child_tasks)
    return found


async def test_a_websocket_that_never_reads_is_dropped(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    async with open_smart_client((c.meta,), POLICY) as client, trio.open_nursery() as n:
        svc = await _service(n, c, client)
        sock = trio.socket.socket()
        sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, 2048)
        await sock.connect(("127.0.0.1", svc.port))
        s = trio.SocketStream(sock)
        await s.send_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
        head = await s.receive_some(200)
        assert head.startswith(b"HTTP/1.1 101"), head
        await trio.sleep(1)
        assert _tasks_named("send_loop") == 1
        # Never read again: after the kernel buffers fill, the send must time out.
        with trio.move_on_after(300):
            while _tasks_named("send_loop"):
                await trio.sleep(10)
        assert _tasks_named("send_loop") == 0, "a browser that never reads is kept forever"
        await s.aclose()
        n.cancel_scope.cancel()
