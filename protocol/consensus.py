"""The metadata replicas' consensus messages (CASPaxos), sans-IO.

Replicas exchange *batches*: one ``POST /paxos`` carries many rounds'
messages to one peer, and its answer carries one reply per message, in
order. The message types follow aosabook 500lines ``cluster/``: each is a
frozen dataclass, and a receiver dispatches on the type (``do_Prepare``,
``do_Accept``, ``do_Commit``).

==========  ==========================================  =====================
message     meaning                                     reply
==========  ==========================================  =====================
Prepare     phase 1: promise not to accept below ballot Promise (with the
                                                        accepted value)
Accept      phase 2: accept ``value`` at ``ballot``     Accepted
Commit      ``value`` was chosen at ``ballot``: learn   Ack
==========  ==========================================  =====================

A refusal is a Promise/Accepted with ``ok`` false naming the ballot the
acceptor promised instead. A message that cannot be read gets a
:class:`Malformed` reply; the rest of the batch is still answered.

Wire form (kept from the first version, so replicas of either can talk):
``{"t": "prepare"|"accept"|"commit", "k": key, "b": ballot, "v": value}``
and replies ``{"ok", "p", "a", "v"}``. Ballots are integers below 2**53
(``round * 64 + replica``); keys are at most :data:`MAX_KEY` characters;
values are JSON objects.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from .errors import ProtocolError
from .validate import ValidationError

__all__ = [
    "CATCH_UP_REQUEST",
    "MAC_SIZE",
    "MAX_BALLOT",
    "MAX_BATCH",
    "MAX_KEY",
    "MAX_PEER_PAYLOAD",
    "Accept",
    "Accepted",
    "Ack",
    "Batch",
    "Commit",
    "Malformed",
    "Message",
    "Prepare",
    "Promise",
    "Reply",
    "decode_batch",
    "decode_message",
    "decode_replies",
    "decode_reply",
    "encode_batch",
    "encode_message",
    "encode_replies",
    "encode_reply",
    "frame_mac",
    "sign",
    "verify",
]

MAX_BALLOT: Final = (1 << 53) - 1
MAX_KEY: Final = 256
MAX_BATCH: Final = 10_000

JsonObject: TypeAlias = dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Prepare:
    key: str
    ballot: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Accept:
    key: str
    ballot: int
    value: JsonObject


@dataclass(frozen=True, kw_only=True, slots=True)
class Commit:
    key: str
    ballot: int
    value: JsonObject


Message: TypeAlias = Prepare | Accept | Commit


@dataclass(frozen=True, kw_only=True, slots=True)
class Promise:
    ok: bool
    promised: int
    accepted: int = 0
    value: JsonObject | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Accepted:
    ok: bool
    promised: int
    accepted: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    ok: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class Malformed:
    error: str


Reply: TypeAlias = Promise | Accepted | Ack | Malformed


def _ballot(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_BALLOT:
        raise ValueError(f"ballot must be an integer in [0, 2**53): {raw!r}")
    return raw


def _key(raw: Any) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_KEY:
        raise ValueError(f"key must be a string of 1..{MAX_KEY} characters")
    return raw


def _value(raw: Any) -> JsonObject:
    """A register value: a JSON object whose bookkeeping fields, if present, are sane
    (``v`` a version, ``op`` an operation id): nothing a proposer adopts can break it."""
    if not isinstance(raw, dict):
        raise ValueError("value must be a JSON object")
    version = raw.get("v", 0)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_BALLOT:
        raise ValueError("a value's version must be a non-negative integer")
    if not isinstance(raw.get("op", ""), str):
        raise ValueError("a value's operation id must be a string")
    return raw


def encode_message(msg: Message) -> JsonObject:
    if isinstance(msg, Prepare):
        return {"t": "prepare", "k": msg.key, "b": msg.ballot}
    kind = "accept" if isinstance(msg, Accept) else "commit"
    return {"t": kind, "k": msg.key, "b": msg.ballot, "v": msg.value}


def decode_message(raw: Any) -> Message:
    """Raises ValueError on anything but a well-formed message."""
    if not isinstance(raw, Mapping):
        raise ValueError("a message must be an object")
    kind, key, ballot = raw.get("t"), _key(raw.get("k")), _ballot(raw.get("b"))
    if kind == "prepare":
        return Prepare(key=key, ballot=ballot)
    if kind == "accept":
        return Accept(key=key, ballot=ballot, value=_value(raw.get("v")))
    if kind == "commit":
        return Commit(key=key, ballot=ballot, value=_value(raw.get("v")))
    raise ValueError(f"unknown message type {kind!r}")


def encode_reply(reply: Reply) -> JsonObject:
    if isinstance(reply, Promise):
        return {"ok": reply.ok, "p": reply.promised, "a": reply.accepted, "v": reply.value}
    if isinstance(reply, Accepted):
        return {"ok": reply.ok, "p": reply.promised, "a": reply.accepted}
    if isinstance(reply, Ack):
        return {"ok": reply.ok}
    return {"ok": False, "error": reply.error}


def decode_reply(raw: Any, sent: Message) -> Reply:
    """The reply to ``sent``; raises ValueError if it is not one."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("ok"), bool):
        raise ValueError("a reply must be an object with a boolean 'ok'")
    if "p" not in raw:
        if isinstance(sent, Commit) and raw["ok"]:
            return Ack()
        return Malformed(error=str(raw.get("error", "refused")))
    promised, accepted = _ballot(raw["p"]), _ballot(raw.get("a", 0))
    if isinstance(sent, Prepare):
        value = raw.get("v")
        return Promise(ok=raw["ok"], promised=promised, accepted=accepted,
                       value=None if value is None else _value(value))
    return Accepted(ok=raw["ok"], promised=promised, accepted=accepted)


@dataclass(frozen=True, kw_only=True, slots=True)
class Batch:
    """One ``POST /paxos`` body: messages from replica ``sender``.

    Entries that are not well-formed messages decode to :class:`Malformed`
    so that the answer still has one reply per entry.
    """

    sender: int
    messages: tuple[Message | Malformed, ...]

    def to_json(self) -> JsonObject:
        return {"from": self.sender, "msgs": [
            encode_message(m) for m in self.messages if not isinstance(m, Malformed)]}

    @classmethod
    def from_json(cls, data: Any) -> Batch:
        if not isinstance(data, Mapping):
            raise ValidationError([{"type": "model_type", "loc": ["body"],
                                    "msg": "body must be a JSON object", "input": None}])
        msgs, sender = data.get("msgs"), data.get("from", -1)
        if not isinstance(msgs, list):
            raise ProtocolError("msgs must be a list", 400)
        if len(msgs) > MAX_BATCH:
            raise ProtocolError(f"at most {MAX_BATCH} messages per batch", 413)
        if isinstance(sender, bool) or not isinstance(sender, int):
            raise ProtocolError("from must be a replica index", 400)
        decoded: list[Message | Malformed] = []
        for raw in msgs:
            try:
                decoded.append(decode_message(raw))
            except ValueError as exc:
                decoded.append(Malformed(error=f"malformed message: {exc}"))
        return cls(sender=sender, messages=tuple(decoded))


# -- the compact binary form, for the replicas' peer port --------------------------------
#
#   Batch   := sender u8, count u32, Message*
#   Message := kind u8 (1 prepare, 2 accept, 3 commit), ballot u64, key_len u16, key (UTF-8),
#              [value_len u32, value (UTF-8 JSON object)]   -- accept and commit only
#   Replies := count u32, Reply*
#   Reply   := kind u8 (1 promise, 2 accepted, 3 ack, 4 malformed), ok u8, promised u64,
#              accepted u64, value_len u32 (0xFFFFFFFF: none), value (UTF-8 JSON)

_BATCH_HEAD = struct.Struct("!BI")
_MSG_HEAD = struct.Struct("!BQH")
_LEN = struct.Struct("!I")
_REPLY_HEAD = struct.Struct("!BBQQI")
_NONE = 0xFFFFFFFF
_KINDS = {Prepare: 1, Accept: 2, Commit: 3}
_REPLY_KINDS = {Promise: 1, Accepted: 2, Ack: 3, Malformed: 4}
MAC_SIZE: Final = 32
#: Payload of a CATCH_UP request: the change number to start after, and a page size.
CATCH_UP_REQUEST: Final = struct.Struct("!QI")
#: The largest frame payload replicas exchange (a batch of 1000 messages of
#: values up to ~16 KB each; a connection may buffer this much before its MAC
#: is checked, so it is kept small, and connections are capped).
MAX_PEER_PAYLOAD: Final = 16 * 1024 * 1024


def _json_bytes(value: JsonObject) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class _Reader:
    def __init__(self, data: bytes | bytearray) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.view):
            raise ValueError("truncated")
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def json_object(self, n: int) -> JsonObject:
        try:
            value = json.loads(bytes(self.take(n)))
        except (UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"value is not JSON: {exc}") from None
        return _value(value)

    def done(self) -> None:
        if self.pos != len(self.view):
            raise ValueError("trailing bytes")


def encode_batch(batch: Batch) -> bytes:
    msgs = [m for m in batch.messages if not isinstance(m, Malformed)]
    out = [_BATCH_HEAD.pack(batch.sender, len(msgs))]
    for m in msgs:
        key = m.key.encode()
        out.append(_MSG_HEAD.pack(_KINDS[type(m)], m.ballot, len(key)) + key)
        if not isinstance(m, Prepare):
            value = _json_bytes(m.value)
            out.append(_LEN.pack(len(value)) + value)
    return b"".join(out)


def decode_batch(data: bytes | bytearray) -> Batch:
    """Raises ValueError on anything but a well-formed batch (a peer must not
    send one: the whole batch is refused)."""
    r = _Reader(data)
    sender, count = r.unpack(_BATCH_HEAD)
    if count > MAX_BATCH:
        raise ValueError(f"more than {MAX_BATCH} messages")
    msgs: list[Message | Malformed] = []
    for _ in range(count):
        kind, ballot, key_len = r.unpack(_MSG_HEAD)
        key = _key(bytes(r.take(key_len)).decode())
        _ballot(ballot)
        if kind == 1:
            msgs.append(Prepare(key=key, ballot=ballot))
            continue
        if kind not in (2, 3):
            raise ValueError(f"unknown message kind {kind}")
        (n,) = r.unpack(_LEN)
        value = r.json_object(n)
        msgs.append(Accept(key=key, ballot=ballot, value=value) if kind == 2
                    else Commit(key=key, ballot=ballot, value=value))
    r.done()
    return Batch(sender=sender, messages=tuple(msgs))


def encode_replies(replies: list[Reply]) -> bytes:
    out = [_LEN.pack(len(replies))]
    for reply in replies:
        promised = getattr(reply, "promised", 0)
        accepted = getattr(reply, "accepted", 0)
        ok = bool(getattr(reply, "ok", False))
        value = reply.value if isinstance(reply, Promise) else None
        if isinstance(reply, Malformed):
            body = reply.error.encode()[:1024]
        else:
            body = b"" if value is None else _json_bytes(value)
        size = _NONE if (value is None and not isinstance(reply, Malformed)) else len(body)
        out.append(_REPLY_HEAD.pack(_REPLY_KINDS[type(reply)], ok, promised, accepted, size) + body)
    return b"".join(out)


def decode_replies(data: bytes | bytearray, sent: list[Message]) -> list[Reply]:
    """One reply per message ``sent``; raises ValueError otherwise."""
    r = _Reader(data)
    (count,) = r.unpack(_LEN)
    if count != len(sent):
        raise ValueError(f"{count} replies to {len(sent)} messages")
    out: list[Reply] = []
    for msg in sent:
        kind, ok, promised, accepted, size = r.unpack(_REPLY_HEAD)
        _ballot(promised)
        _ballot(accepted)
        if kind == 4:
            out.append(Malformed(error=bytes(r.take(size)).decode("utf-8", "replace")))
            continue
        value = None if size == _NONE else r.json_object(size)
        expected = {Prepare: 1, Accept: 2, Commit: 3}[type(msg)]
        if kind != expected:
            raise ValueError(f"reply kind {kind} to a {type(msg).__name__}")
        if kind == 1:
            out.append(Promise(ok=bool(ok), promised=promised, accepted=accepted, value=value))
        elif kind == 2:
            out.append(Accepted(ok=bool(ok), promised=promised, accepted=accepted))
        else:
            out.append(Ack(ok=bool(ok)))
    r.done()
    return out


def frame_mac(secret: bytes, opcode: int, request_id: int, status: int,
              payload: bytes | bytearray, *, sender: int, receiver: int) -> bytes:
    """HMAC-SHA256 over one replica frame: its opcode, request id, status, who sent
    it to whom, and its payload (a frame for one replica is refused by another)."""
    head = struct.pack("!HIHBB", opcode, request_id, status, sender, receiver)
    mac = hmac.new(secret, head, hashlib.sha256)
    mac.update(payload)
    return mac.digest()


def sign(secret: bytes, opcode: int, request_id: int, status: int, payload: bytes | bytearray,
         *, sender: int, receiver: int) -> bytes:
    """The ``key`` field of a signed replica frame: the sender's id, then the MAC."""
    return bytes([sender]) + frame_mac(secret, opcode, request_id, status, payload,
                                       sender=sender, receiver=receiver)


def verify(secret: bytes, key: bytes, opcode: int, request_id: int, status: int,
           payload: bytes | bytearray, *, receiver: int) -> int | None:
    """The sender's id if ``key`` signs this frame for ``receiver``, else ``None``."""
    if len(key) != 1 + MAC_SIZE:
        return None
    sender = key[0]
    expected = frame_mac(secret, opcode, request_id, status, payload, sender=sender,
                         receiver=receiver)
    return sender if hmac.compare_digest(key[1:], expected) else None
