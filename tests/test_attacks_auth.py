"""Attack suite, part 1: who may call what (issue 9, classes 2, 3 and 7).

Real services on 127.0.0.1 with real secrets: every write without the right
credentials is refused with 401 and changes nothing; a node id stays bound
to the node that registered it; a commit never makes the metadata service
contact an address its caller made up; FFmpeg opens nothing an upload names.
Each test is bounded in count and in (virtual) time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from click.testing import CliRunner

from nodes.net.frame_client import open_frame_client
from nodes.net.http_client import HttpResult, request
from nodes.uploader.ffmpeg import probe
from protocol.api import MAX_COPIES
from protocol.errors import ProtocolError, VStackError
from tools import node_cli
from vstack.auth import Access, AuthPolicy, check_bind
from vstack.media import ProbeError

from .conftest import ffmpeg_exe

CLUSTER = b"cluster-secret-for-the-attack-suite"
TOKEN = b"api-token-for-the-attack-suite-0001"
SECURED = AuthPolicy(cluster_secret=CLUSTER, api_token=TOKEN)


def bearer(secret: bytes) -> list[tuple[str, str]]:
    return [("Authorization", "Bearer " + secret.decode())]


# -- the policy itself ---------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "access", "token", "peer", "allowed"), [
    # open (no secrets): loopback callers need nothing, others get nothing but public reads
    (AuthPolicy(), Access.CLUSTER, None, "127.0.0.1", True),
    (AuthPolicy(), Access.USER, None, "::1", True),
    (AuthPolicy(), Access.CLUSTER, None, "10.1.2.3", False),
    (AuthPolicy(), Access.USER, None, "::ffff:10.1.2.3", False),
    (AuthPolicy(), Access.READ, None, "10.1.2.3", True),
    (AuthPolicy(public_reads=False), Access.READ, None, "10.1.2.3", False),
    (AuthPolicy(insecure=True), Access.CLUSTER, None, "10.1.2.3", True),
    # secured: loopback is no excuse; the token opens users' writes, not the cluster's calls
    (SECURED, Access.CLUSTER, None, "127.0.0.1", False),
    (SECURED, Access.USER, None, "127.0.0.1", False),
    (SECURED, Access.CLUSTER, TOKEN, "127.0.0.1", False),
    (SECURED, Access.USER, TOKEN, "10.1.2.3", True),
    (SECURED, Access.USER, CLUSTER, "10.1.2.3", True),
    (SECURED, Access.CLUSTER, CLUSTER, "10.1.2.3", True),
    (SECURED, Access.USER, TOKEN[:-1] + b"2", "127.0.0.1", False),
    (SECURED, Access.READ, None, "10.1.2.3", True),
    (SECURED, Access.PUBLIC, None, "10.1.2.3", True),
    # only a token: services on this host still talk, users need the token
    (AuthPolicy(api_token=TOKEN), Access.CLUSTER, None, "127.0.0.1", True),
    (AuthPolicy(api_token=TOKEN), Access.USER, None, "127.0.0.1", False),
])
def test_who_may_call_what(policy: AuthPolicy, access: Access, token: bytes | None, peer: str,
                           allowed: bool) -> None:
    assert policy.allows(access, token, peer) is allowed


def test_a_service_beyond_loopback_needs_a_secret_or_says_it_is_insecure() -> None:
    assert check_bind("127.0.0.1", AuthPolicy()) is None
    assert check_bind("0.0.0.0", SECURED) is None
    with pytest.raises(ValueError, match="CLUSTER_SECRET"):
        check_bind("0.0.0.0", AuthPolicy())
    with pytest.raises(ValueError, match=r"refusing to listen on 192\.168\.1\.5"):
        check_bind("192.168.1.5", AuthPolicy(api_token=TOKEN))
    assert "NO authentication" in (check_bind("::", AuthPolicy(insecure=True)) or "")
    with pytest.raises(ValueError, match="16 bytes"):
        AuthPolicy(cluster_secret=b"short")


@pytest.mark.parametrize("role", ["metadata", "storage", "uploader", "all"])
def test_the_cli_refuses_to_listen_beyond_loopback_open(role: str, tmp_path: Path) -> None:
    env = {"HOST": "0.0.0.0", "CLUSTER_SECRET": "", "API_TOKEN": "", "VSTACK_INSECURE": "",
           "DATA_DIR": str(tmp_path), "METADATA_SERVICE_URL": "http://127.0.0.1:1"}
    if role == "all":  # the embedded cluster makes its secrets instead: only check they appear
        from tools.credentials import ensure_secret_files, read_secret
        cluster, token = ensure_secret_files(tmp_path)
        assert read_secret("CLUSTER_SECRET", tmp_path) == cluster
        assert len(token) >= 32
        assert (tmp_path / "secrets" / "api_token").stat().st_mode & 0o077 == 0
        return
    result = CliRunner().invoke(node_cli.main, [role], env=env)
    assert result.exit_code != 0
    assert "refusing to listen on 0.0.0.0 without CLUSTER_SECRET" in result.output


# -- the metadata service with secrets ------------------------------------------------------


async def test_writes_without_credentials_are_refused_and_change_nothing(
        start_metadata: Callable[..., Any]) -> None:
    svc = await start_metadata(auth=SECURED)
    base = f"http://127.0.0.1:{svc.port}"
    video = {"title": "mine", "duration_sec": 10}
    for headers in ([], bearer(b"not-the-token-at-all-x")):
        res = await request("POST", f"{base}/video", json_body=video, headers=headers)
        assert res.status == 401, res.body
        assert "API token" in res.json()["error"]
    assert (await request("GET", f"{base}/videos")).json() == []  # reads stay open
    made = await request("POST", f"{base}/video", json_body=video, headers=bearer(TOKEN))
    assert made.status == 200
    vid = made.json()["video_id"]
    for method, path, body in [
        ("DELETE", f"/video/{vid}", None),
        ("PATCH", f"/video/{vid}/status", {"status": "deleted"}),
        ("POST", f"/video/{vid}/view", None),
        ("POST", f"/redundancy/override/{vid}?mode=replication", None),
    ]:
        res = await request(method, base + path, json_body=body)
        assert res.status == 401, (path, res.body)
    assert (await request("GET", f"{base}/video/{vid}/popularity")).json()["view_count"] == 0
    listed = (await request("GET", f"{base}/videos")).json()
    assert [v["video_id"] for v in listed] == [vid]
    assert listed[0]["status"] == "uploading"
    # Service-to-service calls need the cluster secret: a user's token is not enough.
    commit = {"node_urls": ["http://127.0.0.1:1"], "checksum": "0" * 64, "size_bytes": 1,
              "video_id": vid, "sequence_num": 0}
    for path, body in [(f"/chunk/{vid}-0/commit", commit),
                       ("/nodes/register", {"node_url": "http://127.0.0.1:2", "node_id": "evil"})]:
        res = await request("POST", base + path, json_body=body, headers=bearer(TOKEN))
        assert res.status == 401, (path, res.body)
    assert (await request("GET", f"{base}/nodes/all")).json() == {"nodes": []}


async def test_closed_reads_need_a_token(start_metadata: Callable[..., Any]) -> None:
    svc = await start_metadata(auth=AuthPolicy(cluster_secret=CLUSTER, api_token=TOKEN,
                                               public_reads=False))
    base = f"http://127.0.0.1:{svc.port}"
    assert (await request("GET", f"{base}/videos")).status == 401
    assert (await request("GET", f"{base}/videos", headers=bearer(TOKEN))).status == 200
    assert (await request("GET", f"{base}/health")).status == 200  # liveness stays public


# -- storage nodes ------------------------------------------------------------------------


async def test_a_secured_node_takes_writes_from_the_cluster_only(
        start_node: Callable[..., Any]) -> None:
    node, _ = await start_node(auth=SECURED)
    url = f"http://127.0.0.1:{node.ports.http}/chunk/victim-0"
    for headers in ([], bearer(TOKEN)):
        res = await request("PUT", url, body=b"forged", headers=headers)
        assert res.status == 401
    assert (await request("GET", url)).status == 404  # nothing was stored
    assert (await request("PUT", url, body=b"real", headers=bearer(CLUSTER))).status == 201
    assert (await request("DELETE", url, headers=bearer(TOKEN))).status == 401
    got = await request("GET", url)
    assert (got.status, got.body) == (200, b"real")


async def test_binary_writes_need_the_cluster_secret_presented_first(
        start_node: Callable[..., Any]) -> None:
    node, _ = await start_node(auth=SECURED)
    for write in ("put", "delete"):  # refused at the header, and the connection is closed
        async with open_frame_client("127.0.0.1", node.ports.binary) as client:
            await client.ping()  # public
            with pytest.raises(ProtocolError) as refused:
                await client.head("victim-1")  # reads are public: 404, not 401
            assert refused.value.status == 404
            with pytest.raises(ProtocolError) as refused:
                await (client.put("victim-1", b"forged") if write == "put"
                       else client.delete("victim-1"))
            assert refused.value.status == 401
            with pytest.raises(VStackError):
                await client.ping()
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        await client.authenticate(TOKEN)  # a user's token: still no writes
        with pytest.raises(ProtocolError) as refused:
            await client.put("victim-1", b"forged")
        assert refused.value.status == 401
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        with pytest.raises(ProtocolError) as refused:
            await client.authenticate(b"a-guess-at-the-cluster-secret")
        assert refused.value.status == 401
        with pytest.raises(VStackError):  # and the connection is gone
            await client.ping()
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        await client.authenticate(CLUSTER)
        assert (await client.put("victim-1", b"real"))[0] == 201
        assert await client.get("victim-1") == b"real"
        await client.delete("victim-1")


async def test_a_secured_node_registers_and_heartbeats_with_its_secret(
        clock: trio.testing.MockClock, start_metadata: Callable[..., Any],
        start_node: Callable[..., Any]) -> None:
    svc = await start_metadata(auth=SECURED)
    meta = f"http://127.0.0.1:{svc.port}"
    _node, _ = await start_node(auth=SECURED, metadata_urls=(meta,), heartbeat_interval=1.0,
                               node_url="http://127.0.0.1:9", node_id="good-node")
    with trio.fail_after(30):
        while not (await request("GET", f"{meta}/nodes/healthy")).json():
            await trio.sleep(0.5)
    assert [n["node_id"] for n in (await request("GET", f"{meta}/nodes/healthy")).json()] == [
        "good-node"]


# -- node identity -------------------------------------------------------------------------


async def post(url: str, body: dict[str, Any]) -> HttpResult:
    return await request("POST", url, json_body=body)


async def test_a_node_id_stays_bound_to_the_node_that_registered_it(
        start_metadata: Callable[..., Any]) -> None:
    svc = await start_metadata()  # open mode, on loopback: identity still holds
    base = f"http://127.0.0.1:{svc.port}"
    real = {"node_url": "http://127.0.0.1:8081", "node_id": "storage-node-1",
            "node_key": "the-real-nodes-key-0123456789"}
    assert (await post(f"{base}/nodes/register", real)).status == 200
    for forged in [{**real, "node_url": "http://127.0.0.1:6666", "node_key": "x" * 32},
                   {"node_url": "http://127.0.0.1:6666", "node_id": "storage-node-1"}]:
        res = await post(f"{base}/nodes/register", forged)
        assert res.status == 409, res.body
    beat = {"disk_usage_percent": 1.0, "chunk_count": 0}
    assert (await post(f"{base}/nodes/storage-node-1/heartbeat", beat)).status == 409
    assert (await post(f"{base}/nodes/storage-node-1/heartbeat",
                       {**beat, "node_key": real["node_key"]})).status == 200
    nodes = (await request("GET", f"{base}/nodes/all")).json()["nodes"]
    assert [(n["node_id"], n["node_url"]) for n in nodes] == [("storage-node-1",
                                                               "http://127.0.0.1:8081")]
    # The real node, restarted at a new address with its key, moves freely.
    moved = {**real, "node_url": "http://127.0.0.1:8091"}
    assert (await post(f"{base}/nodes/register", moved)).status == 200


# -- commits name registered nodes only ----------------------------------------------------


class Listener:
    """A TCP port that counts the connections made to it (and answers nothing)."""

    def __init__(self) -> None:
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])

        async def handle(stream: trio.SocketStream) -> None:
            self.connections += 1
            await stream.aclose()

        await trio.serve_listeners(handle, listeners)


async def test_a_commit_never_contacts_an_address_its_caller_made_up(
        nursery: trio.Nursery, start_metadata: Callable[..., Any],
        start_node: Callable[..., Any]) -> None:
    trap = Listener()
    trap_port = await nursery.start(trap.serve)
    svc = await start_metadata()
    base = f"http://127.0.0.1:{svc.port}"
    node, _ = await start_node()
    node_url = f"http://127.0.0.1:{node.ports.http}"
    data = b"a chunk the node really holds"
    sha = hashlib.sha256(data).hexdigest()
    assert (await request("PUT", f"{node_url}/chunk/v-0", body=data)).status == 201
    vid = (await post(f"{base}/video", {"title": "t", "duration_sec": 1})).json()["video_id"]
    commit = {"checksum": sha, "size_bytes": len(data), "video_id": vid, "sequence_num": 0}
    made_up = [f"http://127.0.0.1:{trap_port}", f"http://127.0.0.1:{trap_port}/x?y=1",
               f"http://localhost:{trap_port}"]
    res = await post(f"{base}/chunk/v-0/commit", {**commit, "node_urls": made_up})
    answer = res.json()
    assert res.status == 200
    assert answer["success"] is False
    assert "not registered storage nodes" in answer["message"]
    too_many = [f"http://127.0.0.1:{trap_port + 1 + i}" for i in range(MAX_COPIES + 1)]
    res = await post(f"{base}/chunk/v-0/commit", {**commit, "node_urls": too_many})
    assert res.status == 400
    assert trap.connections == 0
    # Once the node is registered, naming it (by id or URL) commits.
    assert (await post(f"{base}/nodes/register", {"node_url": node_url,
                                                  "node_id": "n1"})).status == 200
    for names in (["n1"], [node_url]):
        res = await post(f"{base}/chunk/v-0/commit", {**commit, "node_urls": names})
        assert res.json()["success"] is True, res.body


# -- FFmpeg opens only the upload itself ---------------------------------------------------


async def test_an_uploaded_playlist_opens_no_other_file(tmp_path: Path,
                                                         media: dict[str, Path]) -> None:
    secret = media["clip.mp4"]  # a real video: a demuxer that followed the name would read it
    reasons = []
    for target in (secret, tmp_path / "missing.ts"):
        for name, text in [
            ("list.m3u8", f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n"
                          "#EXT-X-ENDLIST\n"),
            ("manifest.mpd", f'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" '
                             f'type="static"><Period><AdaptationSet><Representation id="1">'
                             f'<BaseURL>file://{target}</BaseURL></Representation>'
                             f'</AdaptationSet></Period></MPD>'),
            ("concat.txt", f"ffconcat version 1.0\nfile '{target}'\n"),
        ]:
            upload = tmp_path / f"{target.stem}-{name}"
            upload.write_text(text)
            with pytest.raises(ProbeError) as info:
                await probe(ffmpeg_exe(), upload)
            reasons.append(str(info.value).replace(str(upload), "UPLOAD"))
    # The same answer whether the named file exists or not: nothing was opened.
    assert reasons[:3] == reasons[3:]


# -- a whole secured cluster ---------------------------------------------------------------


async def test_a_secured_cluster_takes_an_upload_with_the_token_only(
        media: dict[str, Path], start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    """Every hop authenticated: uploader -> metadata (user and cluster calls), uploader ->
    nodes (binary PUT after AUTH), metadata -> nodes (commit checks)."""
    from .test_uploader import multipart

    meta = await start_metadata(auth=SECURED)
    meta_url = f"http://127.0.0.1:{meta.port}"
    for i in range(3):
        node, _ = await start_node(data_dir=tmp_path / f"sn{i}", node_id=f"n{i}", auth=SECURED)
        res = await request("POST", f"{meta_url}/nodes/register", headers=bearer(CLUSTER),
                            json_body={"node_url": f"http://127.0.0.1:{node.ports.http}",
                                       "node_id": f"n{i}"})
        assert res.status == 200
    up, _ = await start_uploader(metadata_urls=(meta_url,), auth=SECURED)
    body, ctype = multipart({"title": "secured"}, ("clip.mp4", media["clip.mp4"].read_bytes()))
    url = f"http://127.0.0.1:{up.port}/upload"
    refused = await request("POST", url, body=body, headers=[("Content-Type", ctype)])
    assert refused.status == 401
    assert (await request("GET", f"{meta_url}/videos")).json() == []
    answer = (await request("POST", url, body=body,
                            headers=[("Content-Type", ctype), *bearer(TOKEN)])).json()
    with trio.fail_after(60):
        while True:
            state = (await request(
                "GET", f"http://127.0.0.1:{up.port}/upload/status/{answer['upload_session_id']}"
            )).json()
            if state["status"] in ("completed", "failed"):
                break
            await trio.sleep(0.1)
    assert state["status"] == "completed", state
    manifest = (await request("GET", f"{meta_url}/manifest/{answer['video_id']}")).json()
    assert manifest["status"] == "active"
    assert all(len(c["fragments"]) == 5 for c in manifest["chunks"])  # cold: erasure-coded


# -- a web page of another site cannot use an open local cluster --------------------------


async def test_an_open_local_cluster_refuses_writes_from_other_sites_pages(
        start_metadata: Callable[..., Any], start_node: Callable[..., Any]) -> None:
    """Open mode trusts loopback callers, but a browser on this machine is one too:
    a write with a foreign Origin, or a Host that is not loopback (DNS rebinding), is
    refused; the same write from a local tool or a local page goes through."""
    svc = await start_metadata()
    base = f"http://127.0.0.1:{svc.port}"
    node, _ = await start_node()
    video = b'{"title": "csrf", "duration_sec": 1}'
    for headers in ([("Origin", "https://evil.example"), ("Content-Type", "text/plain")],
                    [("Origin", "null")]):
        res = await request("POST", f"{base}/video", body=video, headers=headers)
        assert res.status == 401, (headers, res.body)
    for host in ("attacker.example", f"rebound.example:{svc.port}"):  # DNS rebinding
        stream = await trio.open_tcp_stream("127.0.0.1", svc.port)
        await stream.send_all(b"POST /video HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n"
                              b"Connection: close\r\n\r\n%s" % (host.encode(), len(video),
                                                                  video))
        answer = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                answer += chunk
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    res = await request("PUT", f"http://127.0.0.1:{node.ports.http}/chunk/csrf-0", body=b"x",
                        headers=[("Origin", "https://evil.example")])
    assert res.status == 401
    assert (await request("GET", f"{base}/videos")).json() == []
    for headers in ([], [("Origin", "http://localhost:8085")],
                    [("Origin", "http://127.0.0.1:8085")]):
        res = await request("POST", f"{base}/video", body=video, headers=headers)
        assert res.status == 200, (headers, res.body)
    vid = res.json()["video_id"]
    # Views count for videos that exist only (made-up ids would grow the counters forever).
    assert (await request("POST", f"{base}/video/{vid}/view")).status == 200
    assert (await request("POST", f"{base}/video/{'f' * 36}/view")).status == 404


@pytest.mark.parametrize(("origin", "host", "local"), [
    (None, "LOCALHOST:8080", True),  # curl keeps the case it was given
    (None, "localhost.:8080", True),
    (None, "[::1]:8080", True),
    ("http://[::1]:8085", None, True),
    (None, "[::1]evil.com", False),
    (None, "localhost%evil", False),
    (None, "evil@localhost", False),
    ("http://localhost:1@evil.com", None, False),  # userinfo: the host is evil.com
    ("http://evil@localhost", None, False),
    ("http://localhost.evil.com", None, False),
    ("ftp://localhost", None, False),
    ("null", None, False),
])
def test_origin_and_host_are_read_strictly(origin: str | None, host: str | None,
                                           local: bool) -> None:
    from vstack.auth import local_request

    assert local_request(origin, host) is local
