"""How metadata replicas reach each other: binary frames on their peer ports.

One pipelined frame connection per peer (:class:`~nodes.net.frame_client.FrameClient`),
opened on first use and again after it breaks, carries every kind of peer
traffic: Paxos batches (``PAXOS``, in the compact encoding of
:mod:`protocol.consensus`), catch-up (``CATCH_UP``), view counters
(``VIEWS``) and acceptor state (``SLOT``). With ``CLUSTER_SECRET`` set every
frame, both ways, carries an HMAC in its key; an answer whose MAC does not
check is rejected like any broken answer.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import trio

from nodes.net.connect import open_tcp
from nodes.net.frame_client import FrameClient
from protocol.api import decode_answer
from protocol.consensus import (
    CATCH_UP_REQUEST,
    MAX_PEER_PAYLOAD,
    Batch,
    Commit,
    Message,
    Reply,
    decode_message,
    decode_replies,
    encode_batch,
    sign,
    verify,
)
from protocol.errors import RemoteProtocolError
from protocol.frames import Frame, Opcode
from vstack.settings import MetadataSettings

from .learner import Change

__all__ = ["FrameTransport"]

log = logging.getLogger("vstack.metadata.transport")


def _changes(data: Any) -> tuple[str, list[Change]]:
    out: list[Change] = []
    for e in data["entries"]:
        msg = decode_message({**e, "t": "commit"})
        seq = e["s"]
        if not isinstance(msg, Commit) or isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("an entry must be a commit with a change number")
        out.append((seq, msg))
    return str(data["epoch"]), out


class FrameTransport:
    """The replica's side of peer traffic; :meth:`run` keeps its connections' readers."""

    def __init__(self, settings: MetadataSettings) -> None:
        self.self_id = settings.replica_id
        self.secret = settings.cluster_secret
        self.peers = {i: settings.peer_address(i) for i in range(len(settings.peers))
                      if i != settings.replica_id}
        self._clients: dict[int, FrameClient] = {}
        self._locks = {i: trio.Lock() for i in self.peers}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _client(self, peer: int) -> FrameClient:
        async with self._locks[peer]:
            client = self._clients.get(peer)
            if client is not None and client.usable:
                return client
            host, port = self.peers[peer]
            stream = await open_tcp(host, port, what=f"replica {peer} at {host}:{port}")
            client = FrameClient(stream, max_payload=MAX_PEER_PAYLOAD, peer=f"replica {peer}")
            assert self._nursery is not None, "FrameTransport.run is not running"
            self._nursery.start_soon(client.run_reader)
            await self._hello(client, peer)  # a small signed frame first (see peer_api.admit)
            self._clients[peer] = client
            return client

    async def _hello(self, client: FrameClient, peer: int) -> None:
        """A signed PING on a new connection, so the peer takes large frames on it."""
        try:
            await self._exchange(client, peer, Opcode.PING, b"")
        except BaseException:
            with trio.CancelScope(shield=True):
                await client.aclose()
            raise

    async def _request(self, peer: int, opcode: Opcode, payload: bytes) -> bytes | bytearray:
        client = await self._client(peer)
        return await self._exchange(client, peer, opcode, payload)

    async def _exchange(self, client: FrameClient, peer: int, opcode: Opcode,
                        payload: bytes) -> bytes | bytearray:
        rid = client.next_request_id()
        key = b"" if self.secret is None else sign(self.secret, opcode, rid, 0, payload,
                                                    sender=self.self_id, receiver=peer)
        try:
            frame = await client.request(opcode, key, payload, request_id=rid)
        except BaseException:
            # Timed out (cancelled) or broken: a peer that does not answer on this
            # connection gets a fresh one next time, never the same stuck one.
            await self._drop(peer, client)
            raise
        try:
            self._check(peer, frame)
        except RemoteProtocolError:
            await self._drop(peer, client)
            raise
        return frame.payload

    async def _drop(self, peer: int, client: FrameClient) -> None:
        if self._clients.get(peer) is client:
            del self._clients[peer]
        with trio.CancelScope(shield=True):
            await client.aclose()

    def _check(self, peer: int, frame: Frame) -> None:
        """The answer is the peer's (signed by it, for us), and a success."""
        if self.secret is not None and verify(
                self.secret, frame.key, frame.opcode, frame.request_id, frame.status,
                frame.payload, receiver=self.self_id) != peer:
            raise RemoteProtocolError(f"replica {peer} answered without a valid MAC "
                                      f"({frame.status}: {frame.message[:80]})", 502)
        if frame.status >= 400:
            raise RemoteProtocolError(f"replica {peer} refused: {frame.message}", 502)

    async def call(self, peer: int, batch: list[Message]) -> list[Reply]:
        payload = encode_batch(Batch(sender=self.self_id, messages=tuple(batch)))
        answer = await self._request(peer, Opcode.PAXOS, payload)
        try:
            return decode_replies(answer, batch)
        except ValueError as exc:
            raise RemoteProtocolError(f"replica {peer}: malformed replies: {exc}", 502) from None

    async def changes(self, peer: int, since: int, limit: int) -> tuple[str, list[Change]]:
        answer = await self._request(peer, Opcode.CATCH_UP, CATCH_UP_REQUEST.pack(since, limit))
        return decode_answer(_changes, _json(answer), "CATCH_UP")

    async def views(self, peer: int) -> list[tuple[str, int, int]]:
        answer = await self._request(peer, Opcode.VIEWS, b"")
        return decode_answer(lambda d: [(str(v), int(r), int(c)) for v, r, c in d["counts"]],
                             _json(answer), "VIEWS")

    async def slot(self, peer: int, key: str) -> dict[str, Any]:
        answer = await self._request(peer, Opcode.SLOT, key.encode())
        state = _json(answer)
        if not isinstance(state, dict):
            raise RemoteProtocolError(f"replica {peer}: malformed slot state", 502)
        return state

    async def floor(self, peer: int) -> tuple[int, int]:
        answer = await self._request(peer, Opcode.FLOOR, b"")
        return decode_answer(lambda d: (_round(d["round"]), _round(d["slots"])), _json(answer),
                             "FLOOR")

    async def pending(self, peer: int, video_id: str, known: list[str], *,
                      every: bool = False) -> list[str]:
        request = json.dumps({"video": video_id, "keys": known, "every": every}).encode()
        answer = await self._request(peer, Opcode.PENDING, request)
        return decode_answer(lambda d: [str(k) for k in d], _json(answer), "PENDING")

    async def heard(self, peer: int) -> dict[str, float]:
        """Seconds since the peer itself last heard from each storage node.

        The request carries a fresh nonce that the (signed) answer must echo:
        an old answer replayed on a new connection cannot vouch for a node.
        """
        nonce = secrets.token_hex(16)
        answer = _json(await self._request(peer, Opcode.HEARD, nonce.encode()))
        if not isinstance(answer, dict) or answer.get("nonce") != nonce:
            raise RemoteProtocolError(f"replica {peer}: HEARD answer is not for this request",
                                      502)
        return decode_answer(_ages, answer, "HEARD")

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


#: The most nodes a HEARD answer may name (far beyond any cluster's size).
MAX_HEARD_NODES = 10_000


def _ages(data: Any) -> dict[str, float]:
    ages = data["ages"]
    if not isinstance(ages, dict) or len(ages) > MAX_HEARD_NODES:
        raise ValueError(f"ages must be an object of at most {MAX_HEARD_NODES} nodes")
    out: dict[str, float] = {}
    for node_id, age in ages.items():
        if (isinstance(age, bool) or not isinstance(age, int | float)
                or not 0 <= age < 1e9 or len(node_id) > 256):
            raise ValueError("an age is a finite number of seconds, a node id at most 256 chars")
        out[node_id] = float(age)
    return out


def _round(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 47:
        raise ValueError("a round must be a non-negative integer")
    return value


def _json(data: bytes | bytearray) -> Any:
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError):
        raise RemoteProtocolError("peer answer is not JSON", 502) from None

