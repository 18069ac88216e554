"""The metadata service's endpoints, as the contract states them, with real storage nodes."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from nodes.net.http_client import HttpResult, request


class Api:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def __call__(self, method: str, path: str, json_body: Any = None,
                       body: bytes = b"") -> HttpResult:
        with trio.fail_after(20):
            return await request(method, self.base + path, json_body=json_body, body=body)


async def cluster(start_node: Callable[..., Any], start_metadata: Callable[..., Any],
                  tmp_path: Path) -> tuple[Api, list[Any]]:
    nodes = []
    for i in (1, 2, 3):
        node, _ = await start_node(data_dir=tmp_path / f"sn{i}", node_id=f"storage-node-{i}")
        nodes.append(node)
    aliases = tuple((f"http://storage-node-{i}:8081", f"http://127.0.0.1:{n.ports.http}")
                    for i, n in enumerate(nodes, 1))
    svc = await start_metadata(aliases=aliases)
    return Api(svc.port), nodes


async def store_everywhere(api: Api, nodes: list[Any], vid: str, data: bytes) -> tuple[str, Any]:
    """Put ``data`` as chunk 0 of ``vid`` on every node and commit it."""
    cid = f"{vid}-chunk-000"
    for node in nodes:
        await put_chunk(node, cid, data)
    res = await api("POST", f"/chunk/{cid}/commit", {
        "node_urls": [f"http://storage-node-{i}:8081" for i in (1, 2, 3)],
        "checksum": hashlib.sha256(data).hexdigest(), "size_bytes": len(data), "video_id": vid,
        "sequence_num": 0})
    return cid, res.json()


async def put_chunk(node: Any, chunk_id: str, data: bytes) -> None:
    res = await request("PUT", f"http://127.0.0.1:{node.ports.http}/chunk/{chunk_id}", body=data)
    assert res.status == 201


async def test_health_and_banner(start_metadata: Callable[..., Any]) -> None:
    api = Api((await start_metadata()).port)
    health = (await api("GET", "/health")).json()
    assert health["status"] == "healthy"
    assert health["service"] == "metadata-service"
    assert {"healthy_nodes", "total_nodes", "database_status"} <= health.keys()
    assert (await api("GET", "/")).json()["message"] == "V-Stack Metadata Service"
    assert (await api("GET", "/nope")).status == 404
    assert (await api("PUT", "/videos")).status == 405


async def test_video_records(start_metadata: Callable[..., Any]) -> None:
    api = Api((await start_metadata()).port)
    ids = []
    for title, dur in (("first", 30), ("second", "45"), ("third", 12.0)):
        res = await api("POST", "/video", {"title": title, "duration_sec": dur,
                                           "client_video_id": "ignored"})
        assert res.status == 200
        vid = res.json()["video_id"]
        assert str(uuid.UUID(vid)) == vid
        assert len(f"{vid}-chunk-000") <= 54
        ids.append(vid)
    listed = (await api("GET", "/videos")).json()
    assert [v["video_id"] for v in listed] == ids[::-1]  # newest first
    assert listed[0]["status"] == "uploading"
    assert listed[0]["total_chunks"] == 0
    assert listed[1]["duration_sec"] == 45
    assert listed[0]["chunk_size_bytes"] == 2097152

    assert (await api("PATCH", f"/video/{ids[0]}/status", {"status": "deleted"})).status == 200
    assert (await api("PATCH", f"/video/{ids[1]}/status", {"status": "active"})).json()[
        "message"] == "Video status updated to active"
    listed = (await api("GET", "/videos")).json()
    assert [v["video_id"] for v in listed] == [ids[2], ids[1]]
    assert (await api("GET", f"/manifest/{ids[0]}")).json()["status"] == "deleted"
    assert [v["video_id"] for v in (await api("GET", "/videos?limit=1&offset=1")).json()] == [ids[1]]

    bad = await api("PATCH", f"/video/{ids[1]}/status", {"status": "ready"})
    assert bad.status == 400
    assert "Invalid status" in bad.json()["detail"]
    missing = await api("PATCH", f"/video/{uuid.uuid4()}/status", {"status": "active"})
    assert missing.status == 404
    assert missing.json()["detail"] == "Video not found"
    for query, status in (("limit=0", 400), ("limit=1001", 400), ("offset=-1", 400),
                          ("limit=abc", 422)):
        assert (await api("GET", f"/videos?{query}")).status == status, query


async def test_bad_video_input_changes_nothing(start_metadata: Callable[..., Any]) -> None:
    api = Api((await start_metadata()).port)
    for payload in ({"duration_sec": 3}, {"title": "", "duration_sec": 3},
                    {"title": "x" * 256, "duration_sec": 3}, {"title": "t", "duration_sec": 0},
                    {"title": "t", "duration_sec": "soon"}, {"title": 5, "duration_sec": 3}, [1]):
        res = await api("POST", "/video", payload)
        assert res.status == 422, payload
        assert isinstance(res.json()["detail"], list)
    res = await api("POST", "/video", body=b"{not json")
    assert res.status == 422
    assert (await api("GET", "/videos")).json() == []


async def test_values_no_table_holds_are_refused_and_the_replica_lives(
        start_metadata: Callable[..., Any]) -> None:
    # Each of these once reached the tables and killed the replica's flusher (and
    # so the replica, at every restart too): OverflowError, UnicodeEncodeError.
    api = Api((await start_metadata()).port)
    for path, payload in (
        ("/video", {"title": "t", "duration_sec": 2**70}),
        ("/video", {"title": "t", "duration_sec": 1e300}),
        ("/video", {"title": "t", "duration_sec": "9" * 30}),
        ("/video", {"title": "\ud800x", "duration_sec": 5}),
        ("/nodes/register", {"node_url": "http://127.0.0.1:1", "node_id": "\ud800"}),
    ):
        res = await api("POST", path, payload)
        assert res.status == 422, (payload, res.body)
        assert isinstance(res.json()["detail"], list)
        assert (await api("GET", "/health")).status == 200
    assert (await api("GET", "/videos")).json() == []
    assert (await api("GET", "/nodes/all")).json() == {"nodes": []}
    assert (await api("POST", "/video", {"title": "t", "duration_sec": 5})).status == 200


async def test_commit_verifies_nodes_then_decides(
    start_node: Callable[..., Any], start_metadata: Callable[..., Any], tmp_path: Path
) -> None:
    api, nodes = await cluster(start_node, start_metadata, tmp_path)
    vid = (await api("POST", "/video", {"title": "v", "duration_sec": 20})).json()["video_id"]
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    cid = f"{vid}-chunk-000"
    await put_chunk(nodes[0], cid, data)
    await put_chunk(nodes[1], cid, data)
    urls = [f"http://storage-node-{i}:8081" for i in (1, 2, 3)]
    commit = {"node_urls": urls, "checksum": sha, "size_bytes": len(data), "video_id": vid,
              "sequence_num": 0, "duration_sec": 10.0, "start_sec": 0.0}
    res = (await api("POST", f"/chunk/{cid}/commit", commit)).json()
    assert res["success"] is True
    assert res["committed_nodes"] == urls[:2]
    manifest = (await api("GET", f"/manifest/{vid}")).json()
    assert manifest["total_chunks"] == 1
    assert manifest["chunk_duration_sec"] == 10
    [chunk] = manifest["chunks"]
    assert chunk["checksum"] == f"sha256:{sha}"
    assert chunk["sequence_num"] == 0
    assert chunk["redundancy_mode"] == "replication"
    assert chunk["fragments"] is None
    assert chunk["duration_sec"] == 10.0
    assert chunk["start_sec"] == 0.0
    for replica in chunk["replicas"]:  # host-reachable, and really holding the bytes
        assert (await request("GET", f"{replica}/chunk/{cid}")).body == data
    state = (await api("GET", f"/consensus/{cid}")).json()
    assert state["phase"] == "committed"
    assert state["accepted_ballot"] >= 1
    assert state["promised_ballot"] < 2**53
    assert state["acceptors"][0]["phase"] == "committed"
    assert len(json.loads(state["accepted_value"])) == 2  # a JSON-encoded list of node URLs

    # "sha256:" checksums are accepted too; a re-commit replaces the placement.
    await put_chunk(nodes[2], cid, data)
    res = (await api("POST", f"/chunk/{cid}/commit", {**commit, "checksum": f"sha256:{sha}"})).json()
    assert res["committed_nodes"] == urls
    assert len((await api("GET", f"/manifest/{vid}")).json()["chunks"][0]["replicas"]) == 3

    # Wrong bytes, or too few holders: success false, nothing recorded.
    other = f"{vid}-chunk-001"
    await put_chunk(nodes[0], other, data)
    with trio.fail_after(10):
        res = (await api("POST", f"/chunk/{other}/commit",
                         {**commit, "sequence_num": 1, "node_urls": urls[:2]})).json()
    assert res == {"success": False, "committed_nodes": [],
                   "message": f"Failed to reach consensus for chunk {other}"}
    assert (await api("GET", f"/consensus/{other}")).status == 404
    bad_sum = await api("POST", f"/chunk/{other}/commit", {**commit, "checksum": "0" * 64,
                                                          "node_urls": urls[:1]})
    assert bad_sum.json()["success"] is False
    assert (await api("GET", f"/manifest/{vid}")).json()["total_chunks"] == 1
    invalid = await api("POST", f"/chunk/{other}/commit", {**commit, "checksum": "XYZ"})
    assert invalid.status == 422


async def test_delete_video_removes_record_and_chunks(
    start_node: Callable[..., Any], start_metadata: Callable[..., Any], tmp_path: Path
) -> None:
    api, nodes = await cluster(start_node, start_metadata, tmp_path)
    vid = (await api("POST", "/video", {"title": "gone", "duration_sec": 5})).json()["video_id"]
    cid, res = await store_everywhere(api, nodes, vid, b"chunk bytes" * 1000)
    assert res["success"] is True
    deleted = await api("DELETE", f"/video/{vid}")
    assert deleted.status == 200
    assert deleted.json()["chunks_deleted"] == 3
    assert (await api("GET", f"/manifest/{vid}")).status == 404
    assert (await api("DELETE", f"/video/{vid}")).status == 404
    for node in nodes:
        assert (await request("GET", f"http://127.0.0.1:{node.ports.http}/chunk/{cid}")).status == 404
    assert (await api("GET", "/stats")).json()["total_chunks"] == 0


async def test_nodes_registration_and_heartbeats(start_metadata: Callable[..., Any]) -> None:
    api = Api((await start_metadata()).port)
    reg = await api("POST", "/nodes/register", {"node_url": "http://10.9.9.9:8081",
                                                 "node_id": "n1"})
    assert reg.json() == {"status": "registered", "node_id": "n1", "node_url": "http://10.9.9.9:8081"}
    assert (await api("POST", "/nodes/register", {"node_url": "ftp://x", "node_id": "n2"})).status == 400
    assert (await api("POST", "/nodes/register", {"node_id": "n2"})).status == 422
    beat = await api("POST", "/nodes/n1/heartbeat", {"disk_usage_percent": 42.5, "chunk_count": 7})
    assert beat.status == 200
    assert (await api("POST", "/nodes/n9/heartbeat", {"disk_usage_percent": 1, "chunk_count": 1})
            ).status == 404
    assert (await api("POST", "/nodes/n1/heartbeat", {"disk_usage_percent": 101, "chunk_count": 1})
            ).status == 422
    [node] = (await api("GET", "/nodes/healthy")).json()
    assert node["node_id"] == "n1"
    assert node["disk_usage_percent"] == 42.5
    assert node["chunk_count"] == 7
    assert node["status"] == "healthy"
    assert (await api("GET", "/nodes/all")).json()["nodes"][0]["node_url"] == "http://10.9.9.9:8081"
    assert (await api("GET", "/nodes/health-summary")).json() == {"healthy": 1, "degraded": 0,
                                                                  "down": 0}
    # Re-registering under a new URL replaces the old row.
    await api("POST", "/nodes/register", {"node_url": "http://10.9.9.8:8081", "node_id": "n1"})
    assert [n["node_url"] for n in (await api("GET", "/nodes/all")).json()["nodes"]] == [
        "http://10.9.9.8:8081"]


async def test_stats_overhead_popularity_and_redundancy(
    start_node: Callable[..., Any], start_metadata: Callable[..., Any], tmp_path: Path
) -> None:
    api, nodes = await cluster(start_node, start_metadata, tmp_path)
    vid = (await api("POST", "/video", {"title": "p", "duration_sec": 5})).json()["video_id"]
    cid, _ = await store_everywhere(api, nodes, vid, b"x" * 1000)
    stats = (await api("GET", "/stats")).json()
    assert (stats["total_videos"], stats["total_chunks"], stats["total_replicas"]) == (1, 1, 3)
    over = (await api("GET", "/storage/overhead")).json()
    assert over["total_logical_bytes"] == 1000
    assert over["total_physical_bytes"] == 3000.0
    assert over["replication_overhead_bytes"] == 2000
    assert over["storage_savings_percent"] == 0

    for _ in range(3):
        assert (await api("POST", f"/video/{vid}/view")).status == 200
    assert (await api("GET", f"/video/{vid}/popularity")).json() == {"video_id": vid,
                                                                     "view_count": 3}
    rec = (await api("GET", f"/redundancy/recommend/{vid}")).json()
    assert rec["recommended_mode"] == "erasure_coding"
    assert rec["config"]["total_shards"] == 5
    assert (await api("POST", f"/redundancy/override/{vid}?mode=replication")).status == 200
    rec = (await api("GET", f"/redundancy/recommend/{vid}")).json()
    assert rec["recommended_mode"] == "replication"
    assert rec["config"]["copies"] == 3
    assert (await api("POST", f"/redundancy/override/{vid}")).status == 422
    assert (await api("POST", f"/redundancy/override/{vid}?mode=raid5")).status == 400
    assert (await api("DELETE", f"/redundancy/override/{vid}")).status == 200
    assert (await api("GET", f"/redundancy/recommend/{vid}")).json()["recommended_mode"] == (
        "erasure_coding")
    eff = (await api("GET", "/redundancy/efficiency")).json()
    assert round(eff["efficiency"]["storage_savings_percent"], 2) == 44.44
    assert (await api("GET", "/redundancy/config")).json()["erasure_total_shards"] == 5
    assert (await api("GET", f"/chunk/{cid}/fragments")).json() == {"chunk_id": cid,
                                                                    "fragments": []}


async def test_manifest_announces_the_configured_chunk_duration(
        start_metadata: Callable[..., Any]) -> None:
    api = Api((await start_metadata(chunk_duration=4)).port)
    vid = (await api("POST", "/video", {"title": "short chunks", "duration_sec": 8})).json()
    manifest = (await api("GET", f"/manifest/{vid['video_id']}")).json()
    assert manifest["chunk_duration_sec"] == 4
    assert manifest["chunks"] == []


async def test_a_create_retried_with_its_idempotency_key_gets_the_first_decision(
        start_metadata: Callable[..., Any]) -> None:
    api = Api((await start_metadata()).port)
    body = {"title": "once", "duration_sec": 12}

    async def create(key: str, payload: dict[str, Any]) -> HttpResult:
        with trio.fail_after(20):
            return await request("POST", api.base + "/video", json_body=payload,
                                 headers=[("Idempotency-Key", key)])

    first = await create("upload-1", body)
    assert first.status == 200
    again = await create("upload-1", body)
    assert again.json()["video_id"] == first.json()["video_id"]
    assert [v["video_id"] for v in (await api("GET", "/videos")).json()] == [first.json()["video_id"]]
    other = await create("upload-2", body)
    assert other.json()["video_id"] != first.json()["video_id"]
    reused = await create("upload-1", {"title": "something else", "duration_sec": 12})
    assert reused.status == 422
    assert "Idempotency-Key" in reused.json()["error"]
    assert (await create("x" * 256, body)).status == 400
    assert (await api("DELETE", f"/video/{first.json()['video_id']}")).status == 200
    assert (await create("upload-1", body)).status == 409  # created, then deleted
    assert len((await api("GET", "/videos")).json()) == 1


async def test_a_manifest_read_names_its_consistency(start_metadata: Callable[..., Any]) -> None:
    api = Api((await start_metadata()).port)
    vid = (await api("POST", "/video", {"title": "t", "duration_sec": 3})).json()["video_id"]
    assert (await api("GET", f"/manifest/{vid}?consistency=linearizable")).status == 200
    assert (await api("GET", f"/manifest/{vid}?consistency=local")).status == 200
    assert (await api("GET", f"/manifest/{vid}?consistency=eventual")).status == 400


async def test_activation_may_set_the_length_found_by_cutting(
        start_metadata: Callable[..., Any]) -> None:
    """``PATCH /video/{id}/status`` takes an optional ``duration_sec`` (a video cut as it
    arrived was created with an estimate); a bad one changes nothing."""
    svc = await start_metadata()
    base = f"http://127.0.0.1:{svc.port}"
    vid = (await request("POST", f"{base}/video",
                         json_body={"title": "t", "duration_sec": 30})).json()["video_id"]
    for bad in ("abc", 0, -5, 1.5, 10**12, True):
        res = await request("PATCH", f"{base}/video/{vid}/status",
                            json_body={"status": "active", "duration_sec": bad})
        assert res.status in (400, 422), (bad, res.status)
    video = (await request("GET", f"{base}/manifest/{vid}")).json()
    assert (video["status"], video["duration_sec"]) == ("uploading", 30)
    res = await request("PATCH", f"{base}/video/{vid}/status",
                        json_body={"status": "active", "duration_sec": 25})
    assert res.status == 200
    video = (await request("GET", f"{base}/manifest/{vid}")).json()
    assert (video["status"], video["duration_sec"]) == ("active", 25)
    res = await request("PATCH", f"{base}/video/{vid}/status", json_body={"status": "active"})
    assert res.status == 200  # existing clients send the status alone: the length stays
    assert (await request("GET", f"{base}/manifest/{vid}")).json()["duration_sec"] == 25
