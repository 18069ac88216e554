"""The learner side of a metadata replica: what was chosen, and catching up on it.

Kept apart from the acceptor on purpose: a replica learns a chosen value
whatever its acceptor promised since (a later prepare that never completed
must not hide a chosen value), and keeps, per key, the ballot of the newest
chosen value it knows (:attr:`LearnerMixin.learned`; the values themselves
are in the database's ``learned`` table, with the tables written from them).

A replica can miss a commit message (it was down or cut off, or the message
was lost). Three mechanisms make sure it never stays stale:

* **catch-up** asks each peer what it learned since the last pass, by the
  peer's change cursor (``changes_since``): a pass costs what changed;
* **settling** runs a read round on every key whose acceptor slot holds an
  accepted value newer than anything learned and older than a few seconds
  (its proposer died before committing): the round finds what was chosen and
  commits it everywhere;
* **recovery** at start settles every such key, retrying until a quorum
  answers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

import trio

from nodes.net.errors import deadline
from protocol.consensus import Commit
from protocol.errors import ProtocolError, RemoteProtocolError, VStackError
from vstack.metadata_db import Learned, MetadataDB
from vstack.paxos import Acceptor, Ballot, ChangeRejected, Slot, Value

__all__ = ["CATCH_UP_PAGE", "Change", "LearnerMixin", "NoQuorum", "ReplicaJoining",
           "ReplicaStopped"]

log = logging.getLogger("vstack.paxos")

CATCH_UP_PAGE = 500

#: One learned value as a peer serves it for catch-up: its change number and the commit.
Change = tuple[int, Commit]


class NoQuorum(ProtocolError):
    """No quorum of replicas answered in time: the outcome is unknown.

    The change may have been chosen anyway (accepted by a quorum whose
    answers were lost) or be chosen later (a read round adopts it). Callers
    retry a create with the same ``Idempotency-Key`` to learn which.
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"no quorum of metadata replicas answered in time for {key}: the "
                         "outcome is unknown (it may still take effect); retry with the same "
                         "Idempotency-Key to find out", 503)


class ReplicaStopped(ProtocolError):
    """This replica is shutting down."""

    def __init__(self) -> None:
        super().__init__("metadata replica is stopping", 503)


class ReplicaJoining(ReplicaStopped):
    """This replica is joining the cluster: it neither votes nor proposes yet."""

    def __init__(self) -> None:
        ProtocolError.__init__(self, "metadata replica is joining the cluster (catching up "
                                     "before it votes); retry on another replica", 503)


class LearnerMixin:
    """Learning, catch-up and settling; mixed into :class:`~.paxos_replica.PaxosReplica`."""

    id: int
    n: int
    db: MetadataDB
    acceptor: Acceptor
    learned: dict[str, int]
    transport: Any
    rng: random.Random
    run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]]
    _learned: list[Learned]
    _gen: int
    _cursors: dict[int, tuple[str, int]]
    _accepted_at: dict[str, float]
    _ceiling: int
    joining: bool
    joined: trio.Event
    unlearned: set[str]

    def _changed(self, key: str, slot: Slot | None, *, promise: bool = True) -> None:
        raise NotImplementedError

    async def _durable(self) -> None:
        raise NotImplementedError

    async def change(self, key: str, change: Callable[[Value | None], Value | None],
                     *, op: str | None = None, fresh: bool = False,
                     leader_fast: bool = False, joining_read: bool = False) -> Value | None:
        raise NotImplementedError

    def _learn(self, key: str, ballot: Ballot, value: Value) -> bool:
        """Learn that ``value`` was chosen for ``key`` at ``ballot``; ``False`` if a
        value chosen at that ballot or a later one is known already.

        The learner keeps the newest chosen value whatever the acceptor has
        promised since (a later prepare that never completed must not hide a
        chosen value). The acceptor's slot is marked committed only where that
        is its own accepted value.
        """
        b = ballot.to_int()
        if self.learned.get(key, -1) >= b:
            return False
        self.learned[key] = b
        # What is learned is already durable on a quorum of acceptors: it goes
        # to the tables but need not wait for an fsync of its own. (If it is
        # lost with the machine, recover() or catch-up learns it again.)
        self._learned.append((key, b, value))
        self._gen += 1
        slot = self.acceptor.learn(key, ballot, value)
        self._changed(key, slot, promise=False)  # tracks the key when the slot changed
        if slot is None:
            self._track_unlearned(key)  # the slot did not, but the learned ballot did
        return True

    def _track_unlearned(self, key: str) -> None:
        """Keep :attr:`unlearned` right for ``key`` after its slot or learned ballot changed."""
        slot = self.acceptor.slots.get(key)
        if slot is not None and self._unlearned(key, slot):
            self.unlearned.add(key)
        else:
            self.unlearned.discard(key)

    def _unlearned(self, key: str, slot: Slot) -> bool:
        """Whether this acceptor holds an accepted value newer than anything learned
        for ``key``: whatever it promised since (a read round that failed half-way
        leaves the slot promised, not accepted, but the value may still be chosen)."""
        return slot.value is not None and slot.accepted.to_int() > self.learned.get(key, -1)

    # -- catch-up --------------------------------------------------------------------------

    async def changes_since(self, since: int, limit: int) -> tuple[str, list[Change]]:
        """What this replica learned after change ``since`` (for a peer catching up).
        Everything learned before the call is on disk first, so it is listed."""
        await self._durable()
        rows = await self.run_blocking(functools.partial(self.db.learned_since, since, limit))
        return self.db.epoch, [(seq, Commit(key=k, ballot=b, value=v)) for seq, k, b, v in rows]

    async def absorb(self, entries: Sequence[Commit]) -> int:
        """Learn committed registers fetched from a peer; returns how many were new."""
        new = sum(self._learn(e.key, Ballot.from_int(e.ballot), e.value) for e in entries)
        await self._durable()
        return new

    async def catch_up(self) -> int:
        """Learn what each reachable peer learned since we last asked it; returns how
        many values were new. A peer that cannot be reached is skipped."""
        learned = 0
        for peer in range(self.n):
            if peer != self.id:
                try:
                    learned += await self._catch_up_from(peer)
                except VStackError as exc:
                    log.debug("catch-up from replica %d stopped: %s", peer, exc)
        if learned:
            log.info("caught up %d chosen values from peers", learned)
        return learned

    async def _catch_up_from(self, peer: int) -> int:
        learned = 0
        epoch, seen = self._cursors.get(peer, ("", 0))
        while True:
            with deadline(10, f"catch-up from replica {peer}"):
                their_epoch, changes = await self.transport.changes(peer, seen, CATCH_UP_PAGE)
            if their_epoch != epoch:  # a new database there: its numbers start over
                if epoch:
                    log.info("replica %d has a new database; catching up from its start", peer)
                epoch, seen = their_epoch, 0
                self._cursors[peer] = (epoch, 0)
                continue
            if not changes:
                return learned
            if changes[-1][0] <= seen:  # a cursor that does not move: a broken peer
                raise RemoteProtocolError(f"replica {peer} repeats changes already seen", 502)
            learned += await self.absorb([c for _, c in changes])
            seen = changes[-1][0]
            self._cursors[peer] = (epoch, seen)

    # -- linearizable reads -------------------------------------------------------------------

    def pending_of_video(self, video_id: str, known: Collection[str] = (), *,
                         every: bool = False) -> list[str]:
        """Keys of ``video_id``'s registers this acceptor accepted a value for that is
        newer than anything learned (its proposer may not have committed it yet):
        the video's own key, any key in ``known`` (the asker's registers of the
        video: a newer value may have moved one elsewhere), and any key whose
        accepted value names the video."""
        if every:  # all of them (for a replica that joins)
            return sorted(self.unlearned)
        if self.joining:  # it remembers nothing: it must not count in a read barrier
            raise ReplicaJoining
        out = []
        for key in self.unlearned:
            slot = self.acceptor.slots[key]
            if (key == f"video/{video_id}" or key in known
                    or (slot.value or {}).get("video_id") == video_id):
                out.append(key)
        return sorted(out)

    async def barrier(self, video_id: str) -> None:
        """Bring this replica's tables up to date for ``video_id``: afterwards they
        hold every change of its registers chosen before the call.

        A quorum (this replica included) is asked what it learned since the
        last pass, then which of the video's registers it accepted without
        learning (those named by our tables, and those whose accepted value
        names the video); each gets a read round, which finds what was chosen
        and commits it. Any chosen value was accepted by a quorum, so some
        member of ours either learned it or still holds it accepted.

        Raises:
            NoQuorum: fewer than a quorum of replicas answered.
        """
        if self.joining:
            raise ReplicaJoining
        quorum = self.n // 2 + 1
        answered = [peer for peer in range(self.n) if peer != self.id]
        for peer in list(answered):
            try:
                with deadline(2, f"read barrier at replica {peer}"):
                    await self._catch_up_from(peer)
            except VStackError as exc:
                log.debug("read barrier: replica %d did not answer: %s", peer, exc)
                answered.remove(peer)
        if 1 + len(answered) < quorum:
            raise NoQuorum(f"video/{video_id}")
        chunks = await self.run_blocking(functools.partial(self.db.chunk_ids_of_video, video_id))
        known = sorted({f"video/{video_id}", f"override/{video_id}",
                        *(f"chunk/{c}" for c in chunks)})
        pending = set(self.pending_of_video(video_id, set(known)))
        for peer in list(answered):
            try:
                with deadline(2, f"read barrier at replica {peer}"):
                    pending.update(await self.transport.pending(peer, video_id, known))
            except VStackError as exc:
                log.debug("read barrier: replica %d did not answer: %s", peer, exc)
                answered.remove(peer)
        if 1 + len(answered) < quorum:
            raise NoQuorum(f"video/{video_id}")
        for key in sorted(pending):
            with contextlib.suppress(ChangeRejected):
                await self.change(key, lambda cur: None)

    # -- settling --------------------------------------------------------------------------

    # -- joining ---------------------------------------------------------------------------

    async def join(self) -> None:
        """Join the cluster with no past (a new database): retry until done.

        A replica that lost its state forgot what it promised and accepted;
        voting at once could let a chosen value be overwritten. So, with
        every other replica (all of them: a chosen value may live on one):
        learn everything they learned, settle everything they accepted but
        did not learn (read rounds, through their votes), and promise, to
        every key, nothing below the highest round any of them has seen or
        may use. Only then vote and propose.
        """
        while self.joining:
            try:
                await self._join_once()
            except VStackError as exc:
                log.info("joining the cluster: %s; trying again", exc)
                await trio.sleep(1 + self.rng.random())

    async def _join_once(self) -> None:
        top, history = 0, 0
        pending: set[str] = set()
        peers = [p for p in range(self.n) if p != self.id]
        for peer in peers:
            with deadline(30, f"joining: replica {peer}"):
                # What it holds accepted first, then what it learned (made durable
                # before it answers): a value moving from one to the other between
                # the two questions is seen by the second.
                pending.update(await self.transport.pending(peer, "", [], every=True))
                await self._catch_up_from(peer)
                round_, slots = await self.transport.floor(peer)
                top, history = max(top, round_), history + slots
        await self._raise_ceiling(top + 1)  # our old self's ballots are never reused
        for key in sorted(pending):
            with contextlib.suppress(ChangeRejected):
                await self.change(key, lambda cur: None, joining_read=True)
        # No replica has a past (a new cluster): nothing can have been promised or
        # chosen, and no floor is needed (it would only slow the fast paths).
        floor = top + 1 if history else 0
        await self.run_blocking(functools.partial(self.db.set_meta, "promise_floor", str(floor)))
        self.acceptor.floor = Ballot(floor, 0)
        await self._raise_ceiling(floor)
        await self.run_blocking(functools.partial(self.db.set_meta, "joining", "0"))
        self.joining = False
        self.joined.set()
        log.info("joined the cluster: caught up, every value accepted elsewhere settled, "
                 "nothing below round %d accepted from now on", floor)

    def highest_round(self) -> tuple[int, int]:
        """For a peer that joins: the highest round this replica has seen or may use,
        and how many registers its acceptor holds (0: it has no past either)."""
        seen = max((max(s.promised.round, s.accepted.round) for s in self.acceptor.slots.values()),
                   default=0)
        return max(self._ceiling, seen, self.acceptor.floor.round), len(self.acceptor.slots)

    async def _raise_ceiling(self, at_least: int) -> None:
        raise NotImplementedError

    async def settle(self, *, older_than: float) -> int:
        """One pass: a read round on every key this acceptor accepted a value for
        more than ``older_than`` seconds ago that is newer than anything learned
        (its proposer died before committing it). Stops at the first key no
        quorum answers for; returns how many were settled."""
        if self.joining:
            return 0
        now = trio.current_time()
        pending = sorted(k for k in self.unlearned
                         if now - self._accepted_at.get(k, -math.inf) >= older_than)
        settled = 0
        for key in pending:
            try:
                await self.change(key, lambda cur: None)
            except ChangeRejected:
                continue
            except NoQuorum:
                break  # the next pass tries again
            settled += 1
        if settled:
            log.info("settled %d registers whose proposer never committed them", settled)
        return settled

    async def recover(self) -> int:
        """Settle registers left accepted-but-not-known-committed (e.g. by a crash).

        A read round on each finds the chosen value (or chooses the accepted
        one) and commits it to the tables. Retries until a quorum answers.
        """
        await self.joined.wait()  # joining settles what the others hold; then we vote
        pending = sorted(self.unlearned)
        settled = 0
        for key in pending:
            while True:
                try:
                    await self.change(key, lambda cur: None)
                    settled += 1
                    break
                except NoQuorum:
                    await trio.sleep(1 + self.rng.random())
                except ChangeRejected:
                    break
        if settled:
            log.info("settled %d registers left undecided by a restart", settled)
        return settled
