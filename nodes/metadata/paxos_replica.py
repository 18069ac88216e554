"""A metadata replica's consensus engine: CASPaxos rounds driven by trio.

The roles are pure (:mod:`vstack.paxos`); this module carries their messages
and owns time. Messages are the typed ones of :mod:`protocol.consensus`
(Prepare -> Promise, Accept -> Accepted, Commit -> Ack); an acceptor
dispatches on the type to ``do_Prepare``, ``do_Accept``, ``do_Commit``.

**Batching.** Messages to one peer are queued and sent together, one batch in
flight per peer: under load, one request carries many rounds' messages. An
acceptor answers a batch only after the slots it changed are durable, and
every change made while a transaction is being written waits for the next
one: concurrent rounds share one SQLite commit (group commit).

**Rounds.** :meth:`PaxosReplica.change` runs prepare / adopt / apply / accept
/ commit for one key, retrying with a higher ballot after a randomized
back-off when another proposer wins, and failing with :class:`NoQuorum` if
no quorum answers before the deadline: never with a wrong answer. The
highest round a replica may use is persisted (in blocks) before use.

The transport and the way blocking work runs are injected, so the
deterministic simulation in the tests runs this very code on an in-memory
network under trio's MockClock.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from protocol.consensus import (
    Accept,
    Accepted,
    Ack,
    Commit,
    Malformed,
    Message,
    Prepare,
    Promise,
)
from protocol.consensus import Reply as WireReply
from protocol.errors import VStackError
from vstack.metadata_db import Learned, MetadataDB
from vstack.paxos import (
    Acceptor,
    Ballot,
    ChangeRejected,
    Proposal,
    Reply,
    Slot,
    Value,
    apply_op,
)

from .learner import Change, LearnerMixin, NoQuorum, ReplicaJoining, ReplicaStopped

__all__ = ["Change", "ChangeRejected", "NoQuorum", "PaxosReplica", "ReplicaJoining",
           "ReplicaStopped", "Transport"]

log = logging.getLogger("vstack.paxos")

T = TypeVar("T")
RunBlocking = Callable[[Callable[[], T]], Awaitable[T]]

ROUND_BLOCK = 1000  # rounds reserved per persisted ceiling
NOT_VOTING = Malformed(error="joining the cluster: not voting yet")
#: Messages per batch sent to one peer: far below what a peer accepts (MAX_BATCH), and
#: small enough that a batch of the largest values stays well under MAX_PEER_PAYLOAD.
SEND_BATCH = 1000


class Transport(Protocol):
    async def call(self, peer: int, batch: list[Message]) -> list[WireReply]:
        """Deliver a batch to ``peer``; its replies, in order.

        Raises:
            VStackError: the batch or its answer was lost (TransportError) or
                the answer was not one reply per message (RemoteProtocolError).
        """
        ...

    async def changes(self, peer: int, since: int, limit: int) -> tuple[str, list[Change]]:
        """What ``peer`` learned after its change number ``since``: its epoch and
        up to ``limit`` ``(seq, commit)`` pairs, oldest first.

        Raises:
            VStackError: as :meth:`call`.
        """
        ...




@dataclass(eq=False)
class _Pending:
    msg: Message
    done: trio.Event = field(default_factory=trio.Event)
    reply: WireReply | None = None
    on_reply: Callable[[WireReply], None] | None = None  # called as the reply arrives

    def deliver(self, reply: WireReply) -> None:
        self.reply = reply
        self.done.set()
        if self.on_reply is not None:
            self.on_reply(reply)


async def _run_in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


class PaxosReplica(LearnerMixin):
    """Proposer, acceptor and learner for every register key, on one replica."""

    def __init__(
        self,
        replica_id: int,
        replicas: int,
        db: MetadataDB,
        transport: Transport,
        *,
        run_blocking: RunBlocking[Any] | None = None,
        rng: random.Random | None = None,
        phase_timeout: float = 1.0,
        deadline: float = 8.0,
        commit_wait: float = 0.1,
        on_learn: Callable[[str, Value], None] | None = None,
        bootstrap: bool = False,
    ) -> None:
        if not 0 <= replica_id < replicas:
            raise ValueError("replica_id must index the peer list")
        self.id = replica_id
        self.n = replicas
        self.db = db
        self.transport = transport
        self.run_blocking: RunBlocking[Any] = run_blocking or _run_in_thread
        self.rng = rng or random.Random()
        self.phase_timeout = phase_timeout
        self.deadline = deadline
        self.commit_wait = commit_wait
        self.on_learn = on_learn
        self.acceptor = self.make_acceptor(db.load_slots())
        # The learner, apart from the acceptor: the ballot each key's newest
        # known chosen value was chosen at. Learning never asks the acceptor.
        self.learned: dict[str, int] = db.load_learned()
        self._cursors: dict[int, tuple[str, int]] = {}  # peer -> (its epoch, last change seen)
        self._accepted_at: dict[str, float] = {}  # key -> when this acceptor last accepted
        # Keys whose slot holds a value newer than anything learned: what settling
        # and read barriers look at, kept as slots change (never a scan of all).
        self.unlearned = {k for k, s in self.acceptor.slots.items() if self._unlearned(k, s)}
        self._round = int(db.get_meta("round_ceiling", "0") or 0)
        self._ceiling = self._round
        # A replica with no past in a cluster that has one (a new database: its
        # state was lost, or it is new) neither votes nor proposes until it has
        # joined (see LearnerMixin.join); `bootstrap` says the cluster is new.
        if db.created and (bootstrap or replicas == 1):
            db.set_meta("joining", "0")
        self.joining = replicas > 1 and db.get_meta("joining") == "1"
        self.joined = trio.Event()
        if not self.joining:
            self.joined.set()
        self.acceptor.floor = Ballot(int(db.get_meta("promise_floor", "0") or 0), 0)
        self._db_lock = trio.Lock()
        # group commit of acceptor state
        self._dirty: dict[str, Slot] = {}
        self._learned: list[Learned] = []
        self._gen = 0
        self._must_sync = False
        self._flushed_gen = 0
        self._flushed = trio.Event()
        self._wake_flusher = trio.Event()
        # outgoing batches
        self._outbox: dict[int, list[_Pending]] = {p: [] for p in range(replicas)}
        self._peer_ok = dict.fromkeys(range(replicas), True)  # did its last batch get answered?
        self._wake_sender = {p: trio.Event() for p in range(replicas)}
        self._ops = itertools.count()
        self.stopped = False
        self.stats = {"rounds": 0, "fast": 0, "retries": 0, "batches_sent": 0,
                      "messages_sent": 0, "flushes": 0, "slots_flushed": 0}

    def make_acceptor(self, slots: dict[str, Slot]) -> Acceptor:
        return Acceptor(slots)

    def make_proposal(self, key: str, ballot: Ballot,
                      change: Callable[[Value | None], Value | None]) -> Proposal:
        return Proposal(key=key, ballot=ballot, change=change, replicas=self.n)

    # -- background tasks ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The flusher and one sender per peer; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flusher)
            for peer in range(self.n):
                nursery.start_soon(self._sender, peer)
            task_status.started()

    async def _flusher(self) -> None:
        while True:
            await self._wake_flusher.wait()
            self._wake_flusher = trio.Event()
            if not self._dirty and not self._learned:
                continue
            dirty, learned, gen, sync = self._dirty, self._learned, self._gen, self._must_sync
            self._dirty, self._learned, self._must_sync = {}, [], False
            async with self._db_lock:
                await self.run_blocking(
                    functools.partial(self.db.persist, dirty, learned, sync=sync))
            self.stats["flushes"] += 1
            self.stats["slots_flushed"] += len(dirty)
            self._flushed_gen = gen
            self._flushed.set()
            self._flushed = trio.Event()
            for key, _, value in learned:
                if self.on_learn is not None:
                    self.on_learn(key, value)

    async def _durable(self) -> None:
        """Wait until every acceptor change made so far is on disk."""
        target = self._gen
        while self._flushed_gen < target:
            self._wake_flusher.set()
            await self._flushed.wait()

    def _changed(self, key: str, slot: Slot | None, *, promise: bool = True) -> None:
        """Record a slot change; ``promise``: a promise or acceptance (must be fsynced)."""
        if slot is not None:
            self._dirty[key] = slot
            self._gen += 1
            self._must_sync = self._must_sync or promise
            self._track_unlearned(key)

    async def _sender(self, peer: int) -> None:
        while True:
            await self._wake_sender[peer].wait()
            self._wake_sender[peer] = trio.Event()
            # A batch never exceeds what a peer accepts (MAX_BATCH messages); the rest
            # goes in the next one, at once.
            queued = self._outbox[peer]
            batch, self._outbox[peer] = queued[:SEND_BATCH], queued[SEND_BATCH:]
            if self._outbox[peer]:
                self._wake_sender[peer].set()
            if not batch:
                continue
            self.stats["batches_sent"] += 1
            self.stats["messages_sent"] += len(batch)
            replies: list[WireReply] | None = None
            try:
                with trio.move_on_after(self.phase_timeout):
                    if peer == self.id:
                        replies = await self.handle_batch([p.msg for p in batch])
                    else:
                        replies = await self.transport.call(peer, [p.msg for p in batch])
            except VStackError as exc:
                log.debug("batch to replica %d failed: %s", peer, exc)
            except Exception:  # a bug must not silence this peer for good
                log.exception("batch to replica %d failed unexpectedly", peer)
            self._peer_ok[peer] = replies is not None
            if replies is None:
                continue  # lost or late: the waiting rounds time out and retry
            for pending, reply in zip(batch, replies, strict=False):
                pending.deliver(reply)

    def _send(self, peer: int, msg: Message,
              on_reply: Callable[[WireReply], None] | None = None) -> _Pending:
        pending = _Pending(msg, on_reply=on_reply)
        self._outbox[peer].append(pending)
        self._wake_sender[peer].set()
        return pending

    # -- acceptor and learner -----------------------------------------------------------

    async def handle_batch(self, batch: Sequence[Message | Malformed]) -> list[WireReply]:
        """Answer a batch of messages; replies leave only once durable."""
        replies: list[WireReply] = []
        for msg in batch:
            if isinstance(msg, Malformed):
                replies.append(msg)
                continue
            handler: Callable[[Any], WireReply] = getattr(self, f"do_{type(msg).__name__}")
            replies.append(handler(msg))
        await self._durable()
        return replies

    def do_Prepare(self, msg: Prepare) -> WireReply:
        if self.joining:
            return NOT_VOTING
        reply, slot = self.acceptor.prepare(msg.key, Ballot.from_int(msg.ballot))
        self._changed(msg.key, slot)
        return Promise(ok=reply.ok, promised=reply.promised.to_int(),
                       accepted=reply.accepted.to_int(), value=reply.value)

    def do_Accept(self, msg: Accept) -> WireReply:
        if self.joining:
            return NOT_VOTING
        reply, slot = self.acceptor.accept(msg.key, Ballot.from_int(msg.ballot), msg.value)
        self._changed(msg.key, slot)
        return Accepted(ok=reply.ok, promised=reply.promised.to_int(),
                        accepted=reply.accepted.to_int())

    def do_Commit(self, msg: Commit) -> WireReply:
        self._learn(msg.key, Ballot.from_int(msg.ballot), msg.value)
        return Ack()

    # -- proposer ------------------------------------------------------------------------

    def stop(self) -> None:
        """Refuse new rounds (the process is going away)."""
        self.stopped = True

    async def _next_ballot(self, at_least: Ballot) -> Ballot:
        if self.stopped:
            raise ReplicaStopped
        # Round 1 is reserved for the fast path (see change(fresh=True)).
        rnd = self._round = max(self._round, at_least.round, self.acceptor.floor.round, 1) + 1
        await self._raise_ceiling(rnd)
        return Ballot(rnd, self.id)

    async def _raise_ceiling(self, at_least: int) -> None:
        """Persist a round ceiling of at least ``at_least`` before any round below it is used."""
        self._round = max(self._round, at_least)
        while at_least > self._ceiling:
            ceiling = at_least + ROUND_BLOCK
            async with self._db_lock:
                if ceiling > self._ceiling:
                    await self.run_blocking(
                        functools.partial(self.db.set_meta, "round_ceiling", str(ceiling)))
                    self._ceiling = ceiling

    async def change(self, key: str, change: Callable[[Value | None], Value | None],
                     *, op: str | None = None, fresh: bool = False,
                     leader_fast: bool = False, joining_read: bool = False) -> Value | None:
        """Apply ``change`` to register ``key`` by consensus; returns the chosen value.

        ``change`` gets the current value (``None`` if never set) without its
        bookkeeping fields and returns the new one (``None``: leave it; the
        call then acts as a linearizable read). It may raise
        :class:`~vstack.paxos.ChangeRejected`, which is passed on.

        ``fresh=True`` promises that no other proposer can know ``key`` yet (it
        was just made from a random id here): the first try then skips phase
        1 and proposes at ballot ``(1, replica)``, the lowest any proposer of
        this key can use, so there is nothing to adopt and it is safe (if it
        is refused, a full round follows and adopts what was accepted).

        ``leader_fast=True`` lets replica 0, the distinguished proposer, skip
        phase 1 for a key its own acceptor has never seen, at ballot
        ``(1, 0)``: below every ballot anyone else may use for such a key.
        Its own acceptance is made durable *before* the other acceptors are
        asked, so it can never propose two values at that ballot (after a
        crash the key is no longer unseen). If the key already has a value,
        a quorum has promised a higher ballot and refuses: a full round
        follows. Other replicas ignore the flag.

        Raises:
            NoQuorum: no quorum answered before the deadline.
            ChangeRejected: ``change`` refused.
        """
        if self.joining and not joining_read:
            raise ReplicaJoining
        op = op or f"{self.id}:{self._round}:{next(self._ops)}:{self.rng.getrandbits(32):x}"
        wrapped = apply_op(change, op)
        seen = Ballot(0, 0)
        delay = 0.005
        with trio.move_on_after(self.deadline):
            # (Not after a join: a replica that lost its state cannot know which
            # keys its old self fast-pathed at (1, 0).)
            if fresh or (leader_fast and self.id == 0 and key not in self.acceptor.slots
                         and self.acceptor.floor.round <= 1):
                if self.stopped:
                    raise ReplicaStopped
                proposal = self.make_proposal(key, Ballot(1, self.id), wrapped)
                try:
                    proposal.value = wrapped(None)
                except ChangeRejected:
                    # Refused on "nothing", which only this replica has seen:
                    # a refusal must rest on a value read from a quorum too.
                    proposal.value = None
                proposal.state = "accept"
                if proposal.value is not None:
                    local_first = not fresh
                    if local_first:
                        reply, slot = self.acceptor.accept(key, proposal.ballot, proposal.value)
                        self._changed(key, slot)
                        await self._durable()
                        proposal.on_accepted(self.id, reply)
                    if await self._accept_and_learn(proposal, skip_self=local_first) == "chosen":
                        self.stats["fast"] += 1
                        return _strip(proposal.value)
                seen = max(seen, proposal.highest_seen)
            while True:
                self.stats["rounds"] += 1
                proposal = self.make_proposal(key, await self._next_ballot(seen), wrapped)
                outcome = await self._round_trip(proposal)
                if outcome == "chosen":
                    return _strip(proposal.value)
                if proposal.error is not None:
                    raise proposal.error
                seen = max(seen, proposal.highest_seen)
                self.stats["retries"] += 1
                await trio.sleep(self.rng.uniform(0, delay))
                delay = min(delay * 2, 0.5)
        raise NoQuorum(key)

    async def _round_trip(self, proposal: Proposal) -> str:
        b = proposal.ballot.to_int()
        outcome = await self._phase(
            proposal, Prepare(key=proposal.key, ballot=b), proposal.on_promise)
        if outcome == "chosen":  # nothing was ever written and nothing to write
            return outcome
        if outcome != "accept":
            return "failed"
        return await self._accept_and_learn(proposal)

    async def _accept_and_learn(self, proposal: Proposal, *, skip_self: bool = False) -> str:
        b = proposal.ballot.to_int()
        assert proposal.value is not None
        outcome = await self._phase(
            proposal, Accept(key=proposal.key, ballot=b, value=proposal.value),
            proposal.on_accepted, skip_self=skip_self)
        if outcome != "chosen":
            return "failed"
        assert proposal.value is not None
        # Learn locally first (in the tables before we acknowledge), then tell the others.
        self._learn(proposal.key, proposal.ballot, proposal.value)
        commit = Commit(key=proposal.key, ballot=b, value=proposal.value)
        sent = {peer: self._send(peer, commit) for peer in range(self.n) if peer != self.id}
        await self._durable()
        # Give the other learners a moment, so a read at any live replica right
        # after our answer sees the change; one that is down (its last batch
        # went unanswered) is not waited for, and catches up later.
        with trio.move_on_after(self.commit_wait):
            for peer, pending in sent.items():
                if self._peer_ok[peer]:
                    await pending.done.wait()
        return "chosen"

    async def _phase(self, proposal: Proposal, msg: Message,
                     feed: Callable[[int, Reply], str | None], *,
                     skip_self: bool = False) -> str | None:
        result: str | None = None
        done = trio.Event()

        def on_reply(peer: int, reply: WireReply) -> None:
            nonlocal result
            if done.is_set() or not isinstance(reply, Promise | Accepted):
                return
            try:
                outcome = feed(peer, _domain_reply(reply))
            except Exception as exc:  # a peer's value our change cannot read
                log.warning("replica %d answered %s with a value that breaks it: %r", peer,
                            proposal.key, exc)
                proposal.error = ChangeRejected(f"a replica holds an unreadable value for "
                                                f"{proposal.key}: {exc!r}", 502)
                outcome = "failed"
            if outcome is not None:
                result = outcome
                done.set()

        if proposal.state == "chosen":  # a quorum of one: ourselves
            return "chosen"
        for peer in range(self.n):
            if not (skip_self and peer == self.id):
                self._send(peer, msg, functools.partial(on_reply, peer))
        with trio.move_on_after(self.phase_timeout):
            await done.wait()
        return result

def _domain_reply(reply: Promise | Accepted) -> Reply:
    value = reply.value if isinstance(reply, Promise) else None
    return Reply(ok=reply.ok, promised=Ballot.from_int(reply.promised),
                 accepted=Ballot.from_int(reply.accepted), value=value)


def _strip(value: Value | None) -> Value | None:
    if value is None:
        return None
    return {k: v for k, v in value.items() if k not in ("v", "op")}

