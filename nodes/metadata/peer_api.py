"""What a metadata replica answers on its peer port: Paxos, catch-up, views, slots.

Replica-to-replica traffic has a listener of its own (the HTTP port + 100 by
default), apart from the clients' HTTP port, and speaks the binary frame
protocol (:mod:`nodes.net.frame_server`) with the compact encoding of
:mod:`protocol.consensus`.

Every frame is authenticated: with ``CLUSTER_SECRET`` set, its key must be
the HMAC of its opcode, request id, status and payload (answers are signed
the same way); without one (open mode) the peer must be on the loopback
network. A frame that fails is answered 401 and the connection closed, and
nothing it carried is looked at: a forged ``commit`` is never learned.
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Any

import trio

from nodes.net.frame_server import FrameLimits, FrameSession, serve_frames
from protocol.consensus import (
    CATCH_UP_REQUEST,
    MAX_PEER_PAYLOAD,
    decode_batch,
    encode_message,
    encode_replies,
    sign,
    verify,
)
from protocol.errors import ProtocolError
from protocol.frames import Frame, FrameHeader, Opcode, response
from vstack.auth import is_loopback

from .replication import slot_state
from .state import MetadataService

__all__ = ["handle", "serve_peers"]

log = logging.getLogger("vstack.metadata.peers")

#: Peer-port connections served per replica in the cluster (each peer keeps a few).
PEER_CONNECTIONS_PER_REPLICA = 16
#: Seconds a new peer connection has to send a whole frame's head.
FIRST_FRAME_SECONDS = 5.0
#: Largest payload a connection may send before one of its frames proved authentic
#: (replicas open each connection with a small signed PING): a header promising
#: megabytes reserves nothing until the sender is known.
UNPROVEN_PAYLOAD = 4096
#: The mark of a connection whose frames proved authentic.
PEER = b"peer"


def admit(session: FrameSession, header: FrameHeader) -> None:
    """Refuse, at its header, a large frame on a connection not yet proven (413)."""
    if session.bearer is None and header.payload_length > UNPROVEN_PAYLOAD:
        raise ProtocolError(f"a first frame carries at most {UNPROVEN_PAYLOAD} bytes", 413)


class Unauthenticated(ProtocolError):
    def __init__(self, why: str) -> None:
        super().__init__(f"peer traffic refused: {why}", 401)


def _check_peer(svc: MetadataService, session: FrameSession, req: Frame) -> int:
    """The authenticated sender's replica id (-1 in open mode, where nothing is signed)."""
    secret = svc.settings.cluster_secret
    if secret is not None:
        me = svc.settings.replica_id
        sender = verify(secret, req.key, req.opcode, req.request_id, 0, req.payload, receiver=me)
        if sender is None or sender == me or sender >= svc.settings.replicas:
            raise Unauthenticated("bad or missing MAC (is CLUSTER_SECRET the same everywhere?)")
        return sender
    try:
        loopback = is_loopback(session.stream.socket.getpeername()[0])
    except (OSError, AttributeError):
        loopback = False
    if not loopback:
        raise Unauthenticated("no CLUSTER_SECRET is configured, so only loopback peers are served")
    return -1


async def _answer(svc: MetadataService, session: FrameSession, req: Frame, status: int,
                  payload: bytes, peer: int) -> None:
    """An answer signed for ``peer`` (errors too: a forged error is refused as well)."""
    secret = svc.settings.cluster_secret
    frame = response(req, status, payload)
    if secret is not None:
        key = sign(secret, req.opcode, req.request_id, status, payload,
                   sender=svc.settings.replica_id, receiver=peer)
        frame = Frame(opcode=frame.opcode, request_id=frame.request_id, status=frame.status,
                      payload=payload, flags=frame.flags, key=key)
    await session.send(frame)


async def handle(svc: MetadataService, session: FrameSession, req: Frame) -> None:
    """Answer one peer frame; a frame that is not authentic closes the connection."""
    try:
        peer = _check_peer(svc, session, req)
    except Unauthenticated as exc:
        log.warning("%s", exc.msg)
        await session.send(response(req, 401, exc.msg.encode()))
        await session.stream.aclose()
        return
    session.bearer = PEER  # authentic: this connection's frames may be large from now on
    status = 200
    try:
        payload = await _dispatch(svc, req)
    except (ValueError, struct.error) as exc:  # struct.error is no ValueError
        status, payload = 400, f"malformed {req.opcode.name} request: {exc}".encode()
    except ProtocolError as exc:
        status, payload = exc.status, exc.msg.encode()
    await _answer(svc, session, req, status, payload, peer)


async def _dispatch(svc: MetadataService, req: Frame) -> bytes:
    if req.opcode is Opcode.PAXOS:
        batch = decode_batch(req.payload)
        return encode_replies(await svc.replica.handle_batch(batch.messages))
    if req.opcode is Opcode.CATCH_UP:
        since, limit = CATCH_UP_REQUEST.unpack(req.payload)
        epoch, changes = await svc.replica.changes_since(since, max(1, min(limit, 5000)))
        return _json({"epoch": epoch,
                      "entries": [{"s": seq, **encode_message(c)} for seq, c in changes]})
    if req.opcode is Opcode.VIEWS:
        return _json({"counts": svc.reader.view_counts_of(svc.settings.replica_id)})
    if req.opcode is Opcode.SLOT:
        return _json(slot_state(svc, bytes(req.payload).decode()))
    if req.opcode is Opcode.PENDING:
        ask = json.loads(bytes(req.payload))
        video = ask.get("video") if isinstance(ask, dict) else None
        keys = ask.get("keys") if isinstance(ask, dict) else None
        if not isinstance(video, str) or not isinstance(keys, list) or len(keys) > 100_000:
            raise ValueError("PENDING wants a video id and at most 100000 keys")
        every = ask.get("every") is True
        return _json(svc.replica.pending_of_video(video, {str(k) for k in keys}, every=every))
    if req.opcode is Opcode.FLOOR:
        round_, slots = svc.replica.highest_round()
        return _json({"round": round_, "slots": slots})
    if req.opcode is Opcode.HEARD:
        nonce = bytes(req.payload)
        if len(nonce) > 64 or not nonce.isalnum():
            raise ValueError("a HEARD request carries a nonce of at most 64 letters and digits")
        return _json({"nonce": nonce.decode(), "ages": svc.heard_ages()})
    if req.opcode is Opcode.PING:
        return b""
    raise ProtocolError(f"{req.opcode.name} is not served on the peer port", 400)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def serve_peers(svc: MetadataService, *,
                      task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    s = svc.settings
    # A peer sends its first frame (signed) at once: a connection that sends
    # nothing is closed within FIRST_FRAME_SECONDS, so idle connections cannot
    # fill the cap and keep restarted replicas out.
    limits = FrameLimits(max_payload=MAX_PEER_PAYLOAD, read_timeout=s.read_timeout,
                         idle_timeout=max(s.idle_timeout, 600.0),
                         header_timeout=FIRST_FRAME_SECONDS,
                         max_connections=PEER_CONNECTIONS_PER_REPLICA * s.replicas)

    async def on_frame(session: FrameSession, req: Frame) -> None:
        await handle(svc, session, req)

    def loopback_only(stream: trio.SocketStream) -> bool:
        """Open mode serves loopback peers only: refused before a byte is read."""
        if s.cluster_secret is not None:
            return True
        try:
            return is_loopback(stream.socket.getpeername()[0])
        except OSError:
            return False

    await serve_frames(on_frame, host=s.host, port=s.effective_peer_port, limits=limits,
                       admit=loopback_only, admit_frame=admit, task_status=task_status)
