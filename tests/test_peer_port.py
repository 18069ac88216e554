"""Replica-to-replica traffic: its own port, a compact codec, and an HMAC on every frame."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from nodes.net.frame_client import open_frame_client
from nodes.net.http_client import request
from protocol.consensus import (
    Accept,
    Accepted,
    Ack,
    Batch,
    Commit,
    Malformed,
    Message,
    Prepare,
    Promise,
    Reply,
    decode_batch,
    decode_replies,
    encode_batch,
    encode_replies,
    sign,
    verify,
)
from protocol.frames import FrameConnection, Opcode
from tools.launch import free_port
from vstack.auth import AuthPolicy, is_loopback

SECRET = b"sixteen+ bytes of cluster secret"

keys = st.text(min_size=1, max_size=40)
ballots = st.integers(0, (1 << 53) - 1)
values = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("v", "op")),
                         st.integers() | st.text(max_size=8) | st.none(), max_size=4).map(
    lambda d: {**d, "v": 3, "op": "x"})
messages = st.one_of(
    st.builds(Prepare, key=keys, ballot=ballots),
    st.builds(Accept, key=keys, ballot=ballots, value=values),
    st.builds(Commit, key=keys, ballot=ballots, value=values),
)


@given(st.integers(0, 63), st.lists(messages, max_size=20))
def test_batches_round_trip_through_the_binary_codec(sender: int, msgs: list[Message]) -> None:
    batch = Batch(sender=sender, messages=tuple(msgs))
    assert decode_batch(encode_batch(batch)) == batch


def reply_for(msg: Message, ok: bool, promised: int, accepted: int, value: Any) -> Reply:
    if isinstance(msg, Prepare):
        return Promise(ok=ok, promised=promised, accepted=accepted, value=value)
    if isinstance(msg, Accept):
        return Accepted(ok=ok, promised=promised, accepted=accepted)
    return Ack(ok=ok)


@given(st.lists(st.tuples(messages, st.booleans(), ballots, ballots, st.none() | values),
                max_size=20))
def test_replies_round_trip_through_the_binary_codec(
        rows: list[tuple[Message, bool, int, int, Any]]) -> None:
    sent = [m for m, *_ in rows]
    replies = [reply_for(m, ok, p, a, v) for m, ok, p, a, v in rows]
    assert decode_replies(encode_replies(replies), sent) == replies


def test_a_malformed_reply_stays_one_reply() -> None:
    sent: list[Message] = [Prepare(key="k", ballot=1)]
    assert decode_replies(encode_replies([Malformed(error="bad")]), sent) == [
        Malformed(error="bad")]


@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_batch_or_a_value_error(data: bytes) -> None:
    try:
        batch = decode_batch(data)
    except ValueError:
        return
    assert decode_batch(encode_batch(batch)) == batch


@pytest.mark.parametrize("data", [
    encode_batch(Batch(sender=1, messages=(Prepare(key="k", ballot=1),)))[:-1],  # truncated
    encode_batch(Batch(sender=1, messages=(Prepare(key="k", ballot=1),))) + b"x",  # trailing
    encode_batch(Batch(sender=1, messages=(Prepare(key="k", ballot=1 << 60),))),  # ballot range
    encode_batch(Batch(sender=1, messages=(Accept(key="k", ballot=1, value={}),))
                 ).replace(b"{}", b"[]"),  # a value that is not an object
])
def test_malformed_batches_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the codec's one error type
        decode_batch(data)


async def test_a_forged_commit_is_never_learned(start_metadata: Callable[..., Any]) -> None:
    port, peer_port = free_port(), free_port()
    svc = await start_metadata(
        port=port, replica_id=0, bootstrap=True, auth=AuthPolicy(cluster_secret=SECRET), peer_port=peer_port,
        peers=(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
        peer_addresses=(f"127.0.0.1:{peer_port}", f"127.0.0.1:{free_port()}"))
    video = {"video_id": "forged", "title": "forged", "duration_sec": 5, "status": "active",
             "created_at": "2026-11-26 12:00:00", "created_ns": 1, "v": 1, "op": "x"}
    payload = encode_batch(Batch(sender=1, messages=(
        Commit(key="video/forged", ballot=1 << 40, value=video),)))
    async with open_frame_client("127.0.0.1", peer_port) as client:
        refused = await client.request(Opcode.PAXOS, b"\0" * 32, payload)
    assert refused.status == 401
    async with open_frame_client("127.0.0.1", peer_port) as client:
        refused = await client.request(Opcode.PAXOS, b"", payload)  # no MAC at all
    assert refused.status == 401
    videos = (await request("GET", f"http://127.0.0.1:{svc.port}/videos")).json()
    assert videos == []
    assert "video/forged" not in svc.replica.learned
    # The same frame signed with the cluster's secret is a peer's, and is learned:
    # the refusal above was the MAC's doing, not the message's.
    async with open_frame_client("127.0.0.1", peer_port) as client:
        rid = client.next_request_id()
        mac = sign(SECRET, Opcode.PAXOS, rid, 0, payload, sender=1, receiver=0)
        answer = await client.request(Opcode.PAXOS, mac, payload, request_id=rid)
    assert answer.status == 200
    with trio.fail_after(5):
        while not (await request("GET", f"http://127.0.0.1:{svc.port}/videos")).json():
            await trio.sleep(0.01)


async def test_replica_traffic_is_not_served_on_the_client_port(
        start_metadata: Callable[..., Any]) -> None:
    svc = await start_metadata()
    res = await request("POST", f"http://127.0.0.1:{svc.port}/paxos",
                        json_body={"from": 1, "msgs": []})
    assert res.status == 404


@pytest.mark.parametrize(("opcode", "payload"), [
    (Opcode.CATCH_UP, b"abc"),  # not the 12 bytes of a change number and a page size
    (Opcode.PENDING, b"\xff\xfe"),  # not UTF-8
    (Opcode.PENDING, b'{"video": 1, "keys": []}'),  # a video id that is no string
    (Opcode.PENDING, b'["V"]'),  # not an object
    (Opcode.PAXOS, b"\x01"),  # a truncated batch
])
async def test_a_signed_but_malformed_request_is_a_400(
        start_metadata: Callable[..., Any], opcode: Opcode, payload: bytes) -> None:
    port, peer_port = free_port(), free_port()
    await start_metadata(
        port=port, replica_id=0, bootstrap=True, auth=AuthPolicy(cluster_secret=SECRET), peer_port=peer_port,
        peers=(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
        peer_addresses=(f"127.0.0.1:{peer_port}", f"127.0.0.1:{free_port()}"))
    async with open_frame_client("127.0.0.1", peer_port) as client:
        rid = client.next_request_id()
        key = sign(SECRET, opcode, rid, 0, payload, sender=1, receiver=0)
        answer = await client.request(opcode, key, payload, request_id=rid)
    assert answer.status == 400


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    ("::ffff:127.0.0.1", True),  # an IPv4 peer of a dual-stack ("::") listener
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("fe80::1%lo", False), ("not an ip", False),
])
def test_open_mode_serves_loopback_peers_only(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_the_peer_port_serves_a_bounded_number_of_connections(
        start_metadata: Callable[..., Any]) -> None:
    """Each connection may buffer a frame before its MAC is checked: past the cap,
    a new connection is closed before a byte of it is read."""
    from nodes.metadata.peer_api import PEER_CONNECTIONS_PER_REPLICA

    port, peer_port = free_port(), free_port()
    await start_metadata(
        port=port, replica_id=0, bootstrap=True, auth=AuthPolicy(cluster_secret=SECRET), peer_port=peer_port,
        peers=(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
        peer_addresses=(f"127.0.0.1:{peer_port}", f"127.0.0.1:{free_port()}"))
    cap = PEER_CONNECTIONS_PER_REPLICA * 2
    held = [await trio.open_tcp_stream("127.0.0.1", peer_port) for _ in range(cap)]
    try:
        await trio.sleep(0.2)
        extra = await trio.open_tcp_stream("127.0.0.1", peer_port)
        with trio.fail_after(5):  # refused: one 503 error frame, then closed by the server
            refusal = FrameConnection()
            while data := await extra.receive_some(4096):
                refusal.receive_data(data)
            refusal.receive_data(b"")
            assert getattr(refusal.next_event(), "status", None) == 503
        await extra.aclose()
        await held.pop().aclose()
        await trio.sleep(0.2)
        async with open_frame_client("127.0.0.1", peer_port) as client:  # a slot is free again
            assert (await client.request(Opcode.PING, b"\0" * 32, b"")).status == 401
    finally:
        for stream in held:
            await stream.aclose()


async def test_silent_connections_cannot_hold_the_peer_port(
        clock: trio.testing.MockClock, start_metadata: Callable[..., Any]) -> None:
    """Connections that never send a frame are closed within FIRST_FRAME_SECONDS, so
    an attacker who fills the cap with them cannot keep a restarted replica out."""
    from nodes.metadata.peer_api import FIRST_FRAME_SECONDS, PEER_CONNECTIONS_PER_REPLICA

    port, peer_port = free_port(), free_port()
    await start_metadata(
        port=port, replica_id=0, bootstrap=True, auth=AuthPolicy(cluster_secret=SECRET),
        peer_port=peer_port, peers=(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
        peer_addresses=(f"127.0.0.1:{peer_port}", f"127.0.0.1:{free_port()}"))
    held = [await trio.open_tcp_stream("127.0.0.1", peer_port)
            for _ in range(PEER_CONNECTIONS_PER_REPLICA * 2)]
    start = trio.current_time()
    with trio.fail_after(60):
        for stream in held:  # every one closed by the server, soon
            while await stream.receive_some(4096):
                pass
    assert trio.current_time() - start <= FIRST_FRAME_SECONDS + 1
    async with open_frame_client("127.0.0.1", peer_port) as client:  # room for a real peer
        assert (await client.request(Opcode.PING, b"\0" * 32, b"")).status == 401
    for stream in held:
        await stream.aclose()


@pytest.mark.parametrize(("sender", "receiver"), [(1, 2), (0, 0), (5, 0)])
async def test_a_frame_signed_for_another_pair_is_refused(
        start_metadata: Callable[..., Any], sender: int, receiver: int) -> None:
    """A MAC binds a frame to who sent it to whom: one meant for another replica,
    one claiming to come from the receiver itself, or from no replica of the
    cluster, is refused like a forgery."""
    port, peer_port = free_port(), free_port()
    svc = await start_metadata(
        port=port, replica_id=0, bootstrap=True, auth=AuthPolicy(cluster_secret=SECRET), peer_port=peer_port,
        peers=(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}",
               f"http://127.0.0.1:{free_port()}"),
        peer_addresses=(f"127.0.0.1:{peer_port}", f"127.0.0.1:{free_port()}",
                        f"127.0.0.1:{free_port()}"))
    payload = encode_batch(Batch(sender=1, messages=(Prepare(key="video/x", ballot=900),)))
    async with open_frame_client("127.0.0.1", peer_port) as client:
        rid = client.next_request_id()
        key = sign(SECRET, Opcode.PAXOS, rid, 0, payload, sender=sender, receiver=receiver)
        answer = await client.request(Opcode.PAXOS, key, payload, request_id=rid)
    assert answer.status == 401
    assert "video/x" not in svc.replica.acceptor.slots  # the prepare was never looked at
    async with open_frame_client("127.0.0.1", peer_port) as client:  # the same, signed right
        rid = client.next_request_id()
        key = sign(SECRET, Opcode.PAXOS, rid, 0, payload, sender=1, receiver=0)
        answer = await client.request(Opcode.PAXOS, key, payload, request_id=rid)
    assert answer.status == 200
    assert verify(SECRET, answer.key, Opcode.PAXOS, rid, 200, answer.payload, receiver=1) == 0
    assert "video/x" in svc.replica.acceptor.slots


def test_an_answer_must_be_signed_by_the_peer_asked_errors_included() -> None:
    from nodes.metadata.transport import FrameTransport
    from protocol.errors import RemoteProtocolError
    from protocol.frames import FLAG_RESPONSE, Frame
    from vstack.settings import MetadataSettings

    settings = MetadataSettings(
        database=Path("unused.db"), replica_id=0, bootstrap=True, auth=AuthPolicy(cluster_secret=SECRET),
        peers=("http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"))
    transport = FrameTransport(settings)

    def answer(status: int, key: bytes) -> Frame:
        return Frame(opcode=Opcode.PAXOS, request_id=7, status=status, payload=b"oops",
                     flags=FLAG_RESPONSE, key=key)

    signed_error = sign(SECRET, Opcode.PAXOS, 7, 503, b"oops", sender=1, receiver=0)
    with pytest.raises(RemoteProtocolError, match="refused"):  # a real error of replica 1
        transport._check(1, answer(503, signed_error))
    for key in (b"", signed_error):  # forged (unsigned), or replica 1's answer passed off as 2's
        with pytest.raises(RemoteProtocolError, match="without a valid MAC"):
            transport._check(2, answer(503, key))
    ok = sign(SECRET, Opcode.PAXOS, 7, 200, b"oops", sender=2, receiver=0)
    transport._check(2, answer(200, ok))
