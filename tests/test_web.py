"""The web page's service (port 8085): its API as the contract says, uploads streamed
through, bad input refused with JSON, the dashboard pushed over a websocket and
quick to see a node go down. Real services on 127.0.0.1, a real upload (FFmpeg)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

from nodes.net.http_client import request
from vstack.auth import AuthPolicy

from .test_uploader import multipart
from .webcluster import WebCluster, start_web_cluster


async def upload_through_page(c: WebCluster, name: str, data: bytes, title: str = "clip"
                              ) -> tuple[int, Any]:
    body, ctype = multipart({"title": title}, (name, data))
    with trio.fail_after(60):
        res = await request("POST", f"{c.url}/api/upload", body=body,
                            headers=[("Content-Type", ctype)])
    return res.status, res.json()


async def wait_completed(c: WebCluster, session: str) -> dict[str, Any]:
    with trio.fail_after(120):
        while True:
            state = (await request("GET", f"{c.url}/api/upload/status/{session}")).json()
            if state["status"] in ("completed", "failed"):
                return dict(state)
            await trio.sleep(0.2)


async def next_message(ws: Any) -> dict[str, Any]:
    with trio.fail_after(10):
        return dict(json.loads(await ws.get_message()))


async def test_an_upload_through_the_page_is_stored_listed_and_served(
        media: dict[str, Path], nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    c = await start_web_cluster(nursery, start_node, start_metadata, start_uploader, tmp_path)
    status, answer = await upload_through_page(c, "clip.mp4", media["clip.mp4"].read_bytes(),
                                               title="from the page")
    assert status == 200, answer
    state = await wait_completed(c, answer["upload_session_id"])
    assert state["status"] == "completed", state
    listed = (await request("GET", f"{c.url}/api/videos")).json()
    assert [v["title"] for v in listed] == ["from the page"]
    config = (await request("GET", f"{c.url}/api/config")).json()
    assert config["hls_base"] == f"{c.client}/hls"
    assert not config["uploads_need_token"]  # open on loopback
    playlist = await request("GET", f"{config['hls_base']}/{answer['video_id']}.m3u8")
    assert playlist.status == 200
    assert b"#EXT-X-ENDLIST" in playlist.body
    for path in ("/api/stats", "/api/storage/overhead", "/api/redundancy/efficiency"):
        res = await request("GET", c.url + path)
        assert res.status == 200, (path, res.body)
    overhead = (await request("GET", f"{c.url}/api/storage/overhead")).json()
    assert overhead["total_logical_bytes"] > 0
    consensus = (await request("GET", f"{c.url}/api/consensus")).json()
    with trio.fail_after(10):  # the snapshot lists the video within a second or so
        while not consensus["chunks"]:
            await trio.sleep(0.5)
            consensus = (await request("GET", f"{c.url}/api/consensus")).json()
    assert consensus["chunks"][0]["chunk_id"].startswith(answer["video_id"])
    assert consensus["chunks"][0]["phase"] == "committed"
    assert consensus["replicas"] >= 1


async def test_bad_uploads_get_a_json_error_and_change_nothing(
        media: dict[str, Path], nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    c = await start_web_cluster(nursery, start_node, start_metadata, start_uploader, tmp_path,
                                max_upload_bytes=10_000)
    not_multipart = await request("POST", f"{c.url}/api/upload", body=b"hello",
                                  headers=[("Content-Type", "text/plain")])
    assert not_multipart.status == 400
    assert "No video file" in not_multipart.json()["error"]
    status, answer = await upload_through_page(c, "notes.mp4", b"this is not a video" * 100)
    assert status == 400
    assert answer["error"]
    status, answer = await upload_through_page(c, "clip.mp4", media["clip.mp4"].read_bytes())
    assert status == 413
    assert "limit" in answer["error"]
    assert (await request("GET", f"{c.url}/api/videos")).json() == []


async def test_pages_and_assets_are_served_and_nothing_else(
        nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    c = await start_web_cluster(nursery, start_node, start_metadata, start_uploader, tmp_path)
    for path in ("/", "/index.html", "/consensus", "/consensus.html", "/storage-efficiency",
                 "/storage_efficiency.html"):
        res = await request("GET", c.url + path)
        assert res.status == 200, path
        assert res.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/vendor/hls.min.js", "/static/vendor/uPlot.iife.min.js"):
        res = await request("GET", c.url + asset)
        assert res.status == 200, asset
    page = (await request("GET", c.url + "/")).body.decode()
    assert "http://" not in page.replace("http://www.w3.org", "")  # no outside asset
    for bad in ("/static/..%2Fapi.py", "/static/vendor/..%2F..%2Fapi.py", "/static/.hidden",
                "/static/nope.js", "/static/vendor/%2Fetc%2Fpasswd"):
        assert (await request("GET", c.url + bad)).status == 404, bad
    health = (await request("GET", f"{c.url}/api/health")).json()
    assert {"metadata", "uploader", "client", "storage_nodes"} <= set(health)
    assert health["metadata"]["status"] == "healthy"


async def test_the_dashboard_sees_a_node_go_down_and_come_back_within_seconds(
        nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    c = await start_web_cluster(nursery, start_node, start_metadata, start_uploader, tmp_path)
    victim = c.nodes[1]

    def status_of(message: dict[str, Any]) -> str | None:
        for node in (message["health"] or {}).get("storage_nodes", []):
            if node["node_url"] == victim:
                return str(node["status"])
        return None

    async with open_websocket_url(f"ws://127.0.0.1:{c.web.port}/ws") as ws:
        message = await next_message(ws)
        while status_of(message) != "healthy":
            message = await next_message(ws)
        assert message["health"]["metadata"]["status"] == "healthy"
        await c.stops[victim]()
        stopped = trio.current_time()
        while status_of(message) != "down":
            message = await next_message(ws)
        assert trio.current_time() - stopped < 3.0
        await start_node(data_dir=tmp_path / "n1", port=c.node_ports[1], node_id="n1",
                         node_url=victim, metadata_urls=(c.meta,))
        back = trio.current_time()
        while status_of(message) != "healthy":
            message = await next_message(ws)
        assert trio.current_time() - back < 3.0


async def test_a_websocket_route_refuses_plain_http(
        nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    c = await start_web_cluster(nursery, start_node, start_metadata, start_uploader, tmp_path,
                                nodes=1)
    res = await request("GET", f"{c.url}/ws")
    assert res.status == 400
    assert "websocket" in res.json()["error"]


async def test_where_uploads_need_a_token_the_page_is_told_and_the_token_opens_them(
        media: dict[str, Path], nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    token = "t" * 24
    c = await start_web_cluster(nursery, start_node, start_metadata, start_uploader, tmp_path,
                                nodes=1, auth=AuthPolicy(api_token=token.encode()))
    assert (await request("GET", f"{c.url}/api/config")).json()["uploads_need_token"]
    status, answer = await upload_through_page(c, "clip.mp4", media["clip.mp4"].read_bytes())
    assert status == 401
    assert "token" in answer["error"]
    body, ctype = multipart({"title": "with a token"}, ("clip.mp4", media["clip.mp4"].read_bytes()))
    res = await request("POST", f"{c.url}/api/upload", body=body, headers=[
        ("Content-Type", ctype), ("Authorization", f"Bearer {token}")])
    assert res.status == 200, res.body
