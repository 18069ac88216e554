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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from .errors import ProtocolError
from .validate import ValidationError

__all__ = [
    "MAX_BALLOT",
    "MAX_BATCH",
    "MAX_KEY",
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
    "decode_message",
    "decode_reply",
    "encode_message",
    "encode_reply",
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
    if not isinstance(raw, dict):
        raise ValueError("value must be a JSON object")
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
