"""The web page against slow or hostile upstreams (fake services on 127.0.0.1): the
dashboard keeps its cadence and its shape whatever a node or the metadata service
answers, uploads are forwarded as they arrive, and other sites cannot read it."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.lowlevel
from trio_websocket import open_websocket_url

from nodes.net.http_client import request
from nodes.net.http_server import HttpLimits, serve_http
from protocol.http import Response, Router
from vstack.settings import WebSettings
from web.service import serve_web


def _json(body: bytes) -> Response:
    return Response(status=200, headers=[("Content-Type", "application/json")], body=body)


async def fake_cluster(nursery: trio.Nursery, answers: dict[str, Any]) -> Any:
    """A fake metadata service, one fake storage node, a fake uploader; the web page
    in front. ``answers`` (mutable) says what each answers."""
    ports: dict[str, int] = {}
    meta: Router[Any] = Router()
    node: Router[Any] = Router()
    up: Router[Any] = Router()

    def fixed(key: str, default: bytes) -> Any:
        async def h(req: Any, body: Any) -> Response:
            delay = answers.get(key + "_delay", 0)
            if delay:
                await trio.sleep(delay)
            return _json(answers.get(key, default))
        return h

    async def nodes_all(req: Any, body: Any) -> Response:
        urls = answers.get("node_urls") or [f"http://127.0.0.1:{ports['node']}"]
        return _json(json.dumps({"nodes": [{"node_url": u, "node_id": f"n{i}"}
                                           for i, u in enumerate(urls)]}).encode())

    for path, key, default in (("/health", "m_health", b'{"status":"healthy"}'),
                               ("/stats", "stats", b'{"total_videos":0}'),
                               ("/storage/overhead", "overhead", b"{}"),
                               ("/videos", "videos", b"[]")):
        meta.add("GET", path, fixed(key, default))
    meta.add("GET", "/nodes/all", nodes_all)
    node.add("GET", "/health", fixed("node_health", b'{"status":"healthy","chunk_count":1}'))
    up.add("GET", "/health", fixed("u_health", b'{"status":"healthy"}'))

    async def upload(req: Any, body: Any) -> Response:
        async for piece in body.chunks(1 << 30):
            answers.setdefault("uploader_got", []).append((trio.current_time(), len(piece)))
        return _json(b'{"video_id":"v","upload_session_id":"s"}')

    up.add("POST", "/upload", upload)
    for name, router in (("meta", meta), ("node", node), ("up", up)):
        ports[name] = await nursery.start(lambda task_status, r=router: serve_http(
            r, host="127.0.0.1", port=0, limits=HttpLimits(), task_status=task_status))
    return await nursery.start(serve_web, WebSettings(
        metadata_urls=(f"http://127.0.0.1:{ports['meta']}",),
        uploader_url=f"http://127.0.0.1:{ports['up']}", client_url="http://127.0.0.1:9",
        port=0))


async def fresh_snapshots(svc: Any, count: int, within: float) -> list[dict[str, Any]]:
    out = []
    with trio.fail_after(within):
        for _ in range(count):
            await svc.snapshot.changed.wait()
            out.append(svc.snapshot.message)
    return out


async def test_a_node_answering_deeply_nested_json_does_not_freeze_the_dashboard(
        nursery: trio.Nursery) -> None:
    answers: dict[str, Any] = {"node_health": b"[" * 200_000}  # RecursionError in json.loads
    svc = await fake_cluster(nursery, answers)
    snaps = await fresh_snapshots(svc, 2, within=5)
    assert snaps[-1]["health"]["storage_nodes"][0]["status"] == "down"


async def test_a_list_where_an_object_is_expected_does_not_freeze_the_dashboard(
        nursery: trio.Nursery) -> None:
    answers: dict[str, Any] = {"stats": b"[1, 2]", "videos": b'{"videos": "x"}'}
    svc = await fake_cluster(nursery, answers)
    snaps = await fresh_snapshots(svc, 3, within=5)
    assert snaps[-1]["stats"]["total_videos"] is None
    assert snaps[-1]["videos"] == []
    assert snaps[-1]["health"]["storage_nodes"][0]["status"] == "healthy"


async def test_a_node_reporting_nan_does_not_close_every_dashboard_socket(
        nursery: trio.Nursery) -> None:
    answers: dict[str, Any] = {"node_health": b'{"status":"healthy","disk_usage":NaN}'}
    svc = await fake_cluster(nursery, answers)
    await fresh_snapshots(svc, 1, within=5)
    async with open_websocket_url(f"ws://127.0.0.1:{svc.port}/ws") as ws:
        with trio.fail_after(5):
            message = json.loads(await ws.get_message())
    assert message["type"] == "dashboard"


async def test_a_node_that_accepts_but_never_answers_is_down_and_the_cadence_is_kept(
        nursery: trio.Nursery) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    held: list[Any] = []

    accepting = trio.CancelScope()

    async def accept_and_hold() -> None:
        with accepting:
            while True:
                held.append(await listener.accept())  # never reads, never answers

    nursery.start_soon(accept_and_hold)
    port = listener.socket.getsockname()[1]
    svc = await fake_cluster(nursery, {"node_urls": [f"http://127.0.0.1:{port}"]})
    start = trio.current_time()
    snaps = await fresh_snapshots(svc, 3, within=5)
    assert trio.current_time() - start < 5
    assert snaps[-1]["health"]["storage_nodes"][0]["status"] == "down"
    accepting.cancel()
    await trio.lowlevel.checkpoint()
    for stream in held:
        await stream.aclose()
    await listener.aclose()


async def test_the_upload_is_forwarded_while_the_browser_is_still_sending(
        nursery: trio.Nursery) -> None:
    answers: dict[str, Any] = {}
    svc = await fake_cluster(nursery, answers)
    boundary = "XB"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nt\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; "
            f"filename=\"a.mp4\"\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    video = b"\0" * 4_000_000
    body = head + video + tail
    stream = await trio.open_tcp_stream("127.0.0.1", svc.port)
    await stream.send_all(
        (f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
         f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode())
    await stream.send_all(body[:2_000_000])
    await trio.sleep(1.0)  # the browser pauses half-way: the uploader has the first half already
    assert sum(n for _, n in answers.get("uploader_got", [])) > 1_000_000
    await stream.send_all(body[2_000_000:])
    with trio.fail_after(10):
        answer = await stream.receive_some(4096)
    assert b" 200 " in answer.split(b"\r\n")[0]
    await stream.aclose()


async def test_a_page_of_another_site_cannot_read_the_dashboard_socket(
        nursery: trio.Nursery) -> None:
    svc = await fake_cluster(nursery, {})
    refused = await request("GET", f"http://127.0.0.1:{svc.port}/ws", headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Origin", "https://evil.example")])
    assert refused.status == 403
    assert "another site" in refused.json()["error"]
    # The page's own origin is served.
    async with open_websocket_url(
            f"ws://127.0.0.1:{svc.port}/ws",
            extra_headers=[(b"Origin", f"http://127.0.0.1:{svc.port}".encode())]) as ws:
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["type"] == "dashboard"


async def test_api_health_does_not_wait_on_a_hung_uploader(nursery: trio.Nursery) -> None:
    svc = await fake_cluster(nursery, {"u_health_delay": 30})
    with trio.fail_after(5):
        res = await request("GET", f"http://127.0.0.1:{svc.port}/api/health")
    assert res.json()["uploader"]["status"] == "error"
