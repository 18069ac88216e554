"""CASPaxos: replicated registers, one per key, in pure logic (no I/O, no clock).

Theory of operation
-------------------
Every decision of the metadata service (a video record, a chunk's placement,
a redundancy override, a node's liveness verdict) is a *register* named by a
key. Its value changes only through a full Paxos round, as in CASPaxos
(Rystsov, 2018):

1. **Prepare.** The proposer picks a ballot higher than any it has seen and
   sends it to every acceptor. An acceptor *promises* not to accept lower
   ballots and answers with the value it last accepted (and that value's
   ballot), or refuses, naming the ballot it promised instead.
2. **Adopt.** With promises from a quorum (a strict majority), the proposer
   takes the accepted value with the highest ballot among them: the value
   that may already have been chosen. It never starts from its own guess.
3. **Apply.** It applies the requested change to that value.
4. **Accept.** It sends the new value with the same ballot; an acceptor
   accepts unless it has promised a higher ballot.
5. **Commit.** Accepted by a quorum, the value is chosen; the proposer tells
   every learner, which applies it to its materialized tables.

Ballots are ``(round, replica)`` pairs compared whole, so two proposers never
share one; as integers they are ``round * MAX_REPLICAS + replica`` (below
2**53, safe in JSON). Every value carries a version (``v``) that each change
increments, and the id of the last operation applied (``op``) so that a
retried operation is not applied twice.

Safety needs only that an acceptor's promise and acceptance are durable
before it answers; :class:`Acceptor` returns the slots it changed so the I/O
layer can persist them (in one transaction for a whole batch) first.

Rules can be overridden in a subclass (:meth:`Acceptor.outranks`,
:meth:`Proposal.adopt`); the tests plant bugs that way to prove the
simulation catches them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from protocol.errors import VStackError

__all__ = [
    "MAX_REPLICAS",
    "ZERO",
    "Acceptor",
    "Ballot",
    "ChangeRejected",
    "Phase",
    "Proposal",
    "Reply",
    "Slot",
    "Value",
    "apply_op",
]

MAX_REPLICAS: Final = 64
MAX_ROUND: Final = (1 << 53) // MAX_REPLICAS - 1

#: A register's value: a JSON object with at least ``v`` (version) and ``op``.
Value = dict[str, Any]


@dataclass(frozen=True, order=True, slots=True)
class Ballot:
    round: int
    replica: int

    def __post_init__(self) -> None:
        if not 0 <= self.round <= MAX_ROUND or not 0 <= self.replica < MAX_REPLICAS:
            raise ValueError(f"ballot out of range: {self.round}.{self.replica}")

    def to_int(self) -> int:
        return self.round * MAX_REPLICAS + self.replica

    @classmethod
    def from_int(cls, n: int) -> Ballot:
        return cls(n // MAX_REPLICAS, n % MAX_REPLICAS)

    def __str__(self) -> str:
        return f"{self.round}.{self.replica}"


ZERO: Final = Ballot(0, 0)


class Phase(enum.Enum):
    NONE = "none"
    PREPARE = "prepare"  # promised, nothing accepted at this ballot yet
    ACCEPT = "accept"  # accepted, not yet known to be chosen
    COMMITTED = "committed"  # known chosen


@dataclass(frozen=True, slots=True)
class Slot:
    """An acceptor's durable state for one key."""

    promised: Ballot = ZERO
    accepted: Ballot = ZERO
    value: Value | None = None
    phase: Phase = Phase.NONE


@dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    """An acceptor's answer to a prepare or an accept."""

    ok: bool
    promised: Ballot
    accepted: Ballot = ZERO
    value: Value | None = None


class Acceptor:
    """The acceptor role over in-memory slots (the caller persists changes)."""

    def __init__(self, slots: Mapping[str, Slot] | None = None) -> None:
        self.slots: dict[str, Slot] = dict(slots or {})
        #: A promise made to every key at once: set when an acceptor rejoins with
        #: its state lost, above any ballot it may have promised before.
        self.floor: Ballot = ZERO

    def _promised(self, slot: Slot) -> Ballot:
        return max(slot.promised, self.floor)

    def outranks(self, new: Ballot, old: Ballot) -> bool:
        """``new >= old``: compared whole, round then replica."""
        return new >= old

    def prepare(self, key: str, ballot: Ballot) -> tuple[Reply, Slot | None]:
        """Phase 1. Returns the reply and the slot to persist (``None``: unchanged)."""
        slot = self.slots.get(key, Slot())
        if not self.outranks(ballot, self._promised(slot)):
            return Reply(ok=False, promised=self._promised(slot)), None
        changed = None
        if ballot != slot.promised:
            phase = Phase.PREPARE if slot.phase is not Phase.COMMITTED else slot.phase
            changed = self.slots[key] = replace(slot, promised=ballot, phase=phase)
        return Reply(ok=True, promised=ballot, accepted=slot.accepted, value=slot.value), changed

    def accept(self, key: str, ballot: Ballot, value: Value) -> tuple[Reply, Slot | None]:
        """Phase 2. Returns the reply and the slot to persist (``None``: unchanged)."""
        slot = self.slots.get(key, Slot())
        if not self.outranks(ballot, self._promised(slot)):
            return Reply(ok=False, promised=self._promised(slot)), None
        if slot.accepted == ballot and slot.value == value:
            return Reply(ok=True, promised=ballot, accepted=ballot), None  # a duplicate
        new = self.slots[key] = Slot(promised=ballot, accepted=ballot, value=value,
                                     phase=Phase.ACCEPT)
        return Reply(ok=True, promised=ballot, accepted=ballot), new

    def learn(self, key: str, ballot: Ballot, value: Value) -> Slot | None:
        """A value was chosen at ``ballot``; mark it committed if we hold it."""
        slot = self.slots.get(key, Slot())
        if slot.accepted > ballot:
            return None
        if slot.accepted == ballot and slot.phase is Phase.COMMITTED:
            return None
        if slot.accepted < ballot:
            # We missed the accept: adopt the chosen value (it is safe to
            # accept a chosen value at its own ballot if we promised no higher).
            if slot.promised > ballot:
                return None
            new = self.slots[key] = Slot(promised=ballot, accepted=ballot, value=value,
                                         phase=Phase.COMMITTED)
            return new
        new = self.slots[key] = replace(slot, phase=Phase.COMMITTED)
        return new


class ChangeRejected(VStackError):
    """The change function refused to apply (e.g. the record does not exist).

    Raised inside a round, after phase 1: nothing is written; the caller gets
    the reason.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def apply_op(
    change: Callable[[Value | None], Value | None], op: str
) -> Callable[[Value | None], Value | None]:
    """Wrap ``change`` so it is applied at most once and versions the value.

    The result keeps ``op`` as the last operation applied; if the adopted
    value already carries ``op`` (an earlier attempt of this very operation
    was accepted), it is returned unchanged. ``change`` returning ``None``
    means "no change"; it may raise :class:`ChangeRejected`.
    """

    def run(current: Value | None) -> Value | None:
        if current is not None and current.get("op") == op:
            return current
        new = change(None if current is None else {k: v for k, v in current.items()
                                                    if k not in ("v", "op")})
        if new is None:
            return current
        version = 0 if current is None else int(current.get("v", 0))
        return {**new, "v": version + 1, "op": op}

    return run


@dataclass(eq=False)
class Proposal:
    """One CASPaxos round for one key, as a state machine driven by replies.

    Feed replies with :meth:`on_promise` / :meth:`on_accepted`; they return
    what to do next. Duplicate and stale replies are ignored.
    """

    key: str
    ballot: Ballot
    change: Callable[[Value | None], Value | None]
    replicas: int
    state: str = "prepare"  # prepare -> accept -> chosen | failed
    value: Value | None = None  # what we propose in phase 2 (and what is chosen)
    error: ChangeRejected | None = None
    highest_seen: Ballot = ZERO
    _promises: dict[int, Reply] = field(default_factory=dict)
    _accepts: set[int] = field(default_factory=set)
    _refusals: set[int] = field(default_factory=set)

    @property
    def quorum(self) -> int:
        return self.replicas // 2 + 1

    def adopt(self, promises: list[Reply]) -> Value | None:
        """The value to build on: the one accepted with the highest ballot."""
        best = max(promises, key=lambda r: r.accepted)
        return best.value

    def on_promise(self, sender: int, reply: Reply) -> str | None:
        """Returns ``"accept"`` when phase 2 should start, ``"chosen"`` (nothing to
        write), ``"failed"``, or ``None``."""
        if self.state != "prepare":
            return None
        if not reply.ok:
            return self._refused(sender, reply)
        if sender in self._promises or reply.promised != self.ballot:
            return None
        self._promises[sender] = reply
        if len(self._promises) < self.quorum:
            return None
        base = self.adopt(list(self._promises.values()))
        try:
            new = self.change(base)
        except ChangeRejected as exc:
            self.error = exc
            self.state = "failed"
            return "failed"
        if new is None and base is None:
            # Nothing was ever chosen and nothing is to be written.
            self.state = "chosen"
            return "chosen"
        # A change, or a read: a read writes the adopted value back at our
        # ballot, so what it returns is chosen (it may have been accepted by
        # a minority only).
        self.value = base if new is None else new
        self.state = "accept"
        return "accept"

    def on_accepted(self, sender: int, reply: Reply) -> str | None:
        """Returns ``"chosen"``, ``"failed"`` or ``None``."""
        if self.state != "accept":
            return None
        if not reply.ok:
            return self._refused(sender, reply)
        if reply.accepted != self.ballot:
            return None
        self._accepts.add(sender)
        if len(self._accepts) >= self.quorum:
            self.state = "chosen"
            return "chosen"
        return None

    def _refused(self, sender: int, reply: Reply) -> str | None:
        self.highest_seen = max(self.highest_seen, reply.promised)
        self._refusals.add(sender)
        if len(self._refusals) > self.replicas - self.quorum:
            self.state = "failed"
            return "failed"
        return None
