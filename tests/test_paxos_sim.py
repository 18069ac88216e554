"""Deterministic simulation of the metadata replicas' consensus.

Three replicas run the real :class:`~nodes.metadata.paxos_replica.PaxosReplica` code
with their real SQLite files, on trio's MockClock, connected by an in-memory
network that drops, duplicates, delays and reorders messages, partitions
replicas, and crash-restarts them (losing everything not yet on disk).
Clients append operations to a few contended registers. Checked:

* safety: at most one value is chosen per key and version, and each chosen
  value extends the previous one (nothing lost, nothing applied twice);
* durability: every acknowledged operation is in the final value of its key;
* liveness: once the faults stop, every client's operation goes through.

Two planted bugs (no phase-1 adoption; ballots compared by round only) must
make the simulation fail.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from nodes.metadata.paxos_replica import Change, NoQuorum, PaxosReplica, ReplicaStopped
from protocol.consensus import (
    Accept,
    Accepted,
    Batch,
    Message,
    decode_batch,
    decode_replies,
    encode_batch,
    encode_replies,
)
from protocol.consensus import Reply as WireReply
from protocol.errors import ConnectionLost
from vstack.metadata_db import Learned, MetadataDB
from vstack.paxos import Acceptor, Ballot, ChangeRejected, Phase, Proposal, Reply, Slot, Value

N = 3
KEYS = ["k0", "k1", "k2"]


class SimReplica(PaxosReplica):
    """Records every value it saw chosen, for the safety check."""

    chosen_log: list[tuple[str, int, tuple[str, ...]]]

    async def _accept_and_learn(self, proposal: Proposal, *, skip_self: bool = False) -> str:
        outcome = await super()._accept_and_learn(proposal, skip_self=skip_self)
        v = proposal.value
        if outcome == "chosen" and v is not None and isinstance(v.get("log"), list):
            self.chosen_log.append((proposal.key, int(v["v"]), tuple(v["log"])))
        return outcome


@dataclass
class Net:
    rng: random.Random
    drop: float = 0.1
    dup: float = 0.05
    max_delay: float = 0.03
    faulty: bool = True
    replicas: dict[int, PaxosReplica | None] = field(default_factory=dict)
    cut: set[frozenset[int]] = field(default_factory=set)
    trace: list[tuple[float, str]] = field(default_factory=list)
    t0: float = field(default_factory=trio.current_time)

    def now(self) -> float:
        return round(trio.current_time() - self.t0, 9)

    def connected(self, a: int, b: int) -> bool:
        return frozenset((a, b)) not in self.cut

    def transport(self, src: int) -> SimTransport:
        return SimTransport(self, src)


@dataclass
class SimTransport:
    net: Net
    src: int

    async def _reach(self, peer: int) -> PaxosReplica:
        """The peer, after the network's delay and loss (raises as a lost message)."""
        net = self.net
        if net.faulty:
            await trio.sleep(net.rng.uniform(0, net.max_delay))
            if net.rng.random() < net.drop:
                raise ConnectionLost("dropped")
        target = net.replicas.get(peer)
        if target is None or not net.connected(self.src, peer):
            raise ConnectionLost("unreachable")
        return target

    async def call(self, peer: int, batch: list[Message]) -> list[WireReply]:
        net = self.net
        target = await self._reach(peer)
        net.trace.append((net.now(), f"{self.src}->{peer} {len(batch)}"))
        # Through the peer port's codec: what the acceptor gets is what the wire carries.
        wire = encode_batch(Batch(sender=self.src, messages=tuple(batch)))
        received = decode_batch(wire).messages
        replies = await target.handle_batch(received)
        if net.faulty and net.rng.random() < net.dup:
            await target.handle_batch(received)  # delivered twice
        if net.faulty:
            await trio.sleep(net.rng.uniform(0, net.max_delay))
            if net.rng.random() < net.drop:
                raise ConnectionLost("reply dropped")
        if net.replicas.get(peer) is not target:
            raise ConnectionLost("crashed before answering")
        return decode_replies(encode_replies(replies), batch)

    async def changes(self, peer: int, since: int, limit: int) -> tuple[str, list[Change]]:
        return await (await self._reach(peer)).changes_since(since, limit)

    async def pending(self, peer: int, video_id: str, known: list[str], *,
                      every: bool = False) -> list[str]:
        return (await self._reach(peer)).pending_of_video(video_id, set(known), every=every)

    async def floor(self, peer: int) -> tuple[int, int]:
        return (await self._reach(peer)).highest_round()


def append_to_log(op: str) -> Callable[[Value | None], Value | None]:
    """A change appending ``op`` to the register's log.

    Idempotent, as CASPaxos changes must be: a retried operation may find
    itself applied already.
    """

    def append(cur: Value | None) -> Value | None:
        log = (cur or {}).get("log", [])
        return None if op in log else {"log": [*log, op]}

    return append


async def housekeeping(rep: PaxosReplica) -> None:
    """Catch-up every second, settling every five, as the service's jobs do."""
    tick = 0
    while True:
        await trio.sleep(1.0)
        tick += 1
        await rep.catch_up()
        if tick % 5 == 0:
            with contextlib.suppress(NoQuorum, ReplicaStopped):
                await rep.settle(older_than=5.0)


def refuse(op: str) -> Callable[[Value | None], Value | None]:
    """A change that is refused after phase 1 (a DELETE of something absent, say):
    it leaves a higher promise on a quorum and commits nothing."""

    def refused(cur: Value | None) -> Value | None:
        raise ChangeRejected(f"{op} refused", 404)

    return refused


class CrashableDB(MetadataDB):
    """A database whose writes not yet fsynced die with a crash.

    The engine writes learned values without an fsync of their own
    (``sync=False``: they are durable on a quorum of acceptors already); on
    a machine that loses power those writes are gone, although the replica
    served them until then. Here every write since the last synced one stays
    in an open transaction (readable, as in WAL), a synced write commits it,
    and a crash rolls it back: the simulation sees what a power cut leaves.
    """

    def __init__(self, path: Path, *, synchronous: str) -> None:
        self._open = False
        super().__init__(path, synchronous=synchronous)
        self.conn.cursor().execute("BEGIN")
        self._open = True

    def _synced(self) -> None:
        if not self._open:
            return  # still opening: the base class commits as it goes
        cur = self.conn.cursor()
        cur.execute("COMMIT")
        cur.execute("BEGIN")

    def persist(self, slots: dict[str, Slot], learned: Iterable[Learned] = (), *,
                sync: bool = True) -> None:
        super().persist(slots, learned, sync=sync)
        if sync:
            self._synced()

    def set_meta(self, name: str, value: str) -> None:
        super().set_meta(name, value)
        self._synced()

    def crash(self) -> None:
        self.conn.cursor().execute("ROLLBACK")
        self.close()


async def start_cluster(tmp: Path, net: Net, nursery: trio.Nursery,
                        replica_cls: type[PaxosReplica] = SimReplica,
                        ) -> tuple[Cluster, tuple[PaxosReplica, PaxosReplica, PaxosReplica]]:
    """All N replicas started; the cluster and replicas 0, 1 and 2."""
    cluster = Cluster(tmp, net, nursery, replica_cls)
    for i in range(N):
        await cluster.start(i)
    reps = [net.replicas[i] for i in range(N)]
    assert all(r is not None for r in reps)
    return cluster, (reps[0], reps[1], reps[2])  # type: ignore[return-value]


class Cluster:
    def __init__(self, tmp: Path, net: Net, nursery: trio.Nursery,
                 replica_cls: type[PaxosReplica], *, bootstrap: bool = True) -> None:
        self.tmp, self.net, self.nursery, self.cls = tmp, net, nursery, replica_cls
        self.bootstrap = bootstrap  # False: new replicas join first, as in production
        self.scopes: dict[int, trio.CancelScope] = {}
        self.dbs: dict[int, CrashableDB] = {}
        self.chosen: list[tuple[str, int, tuple[str, ...]]] = []
        self.instances: list[PaxosReplica] = []

    async def start(self, i: int, *, bootstrap: bool | None = None) -> None:
        async def blocking(fn: Callable[[], Any]) -> Any:
            return fn()  # synchronous: time stands still while SQLite works

        db = self.dbs[i] = CrashableDB(self.tmp / f"replica-{i}.db", synchronous="OFF")
        rep = self.cls(i, N, db, self.net.transport(i), run_blocking=blocking,
                       rng=random.Random(self.net.rng.random()), phase_timeout=0.3, deadline=5.0,
                       bootstrap=self.bootstrap if bootstrap is None else bootstrap)
        if isinstance(rep, SimReplica):
            rep.chosen_log = self.chosen
        self.instances.append(rep)
        scope = self.scopes[i] = trio.CancelScope()

        async def run() -> None:
            with scope:
                async with trio.open_nursery() as jobs:  # as the service runs them
                    await jobs.start(rep.run)
                    jobs.start_soon(rep.join)
                    jobs.start_soon(rep.recover)
                    jobs.start_soon(housekeeping, rep)

        self.nursery.start_soon(run)
        self.net.replicas[i] = rep

    def crash(self, i: int) -> None:
        rep = self.net.replicas[i]
        assert rep is not None
        rep.stop()
        self.net.replicas[i] = None
        self.scopes[i].cancel()
        self.dbs[i].crash()

    def alive(self) -> list[int]:
        return [i for i, r in self.net.replicas.items() if r is not None]


async def simulate(tmp: Path, seed: int, *, ops: int, replica_cls: type[PaxosReplica] = SimReplica,
                   clients: int = 6, bootstrap: bool = False) -> dict[str, Any]:
    """``bootstrap=False``: the replicas start as a new cluster does in production,
    each joining before it votes."""
    rng = random.Random(seed)
    net = Net(rng)
    acked: list[tuple[str, str]] = []
    failed = 0
    async with trio.open_nursery() as nursery:
        cluster = Cluster(tmp, net, nursery, replica_cls, bootstrap=bootstrap)
        for i in range(N):
            await cluster.start(i)

        async def client(c: int) -> None:
            nonlocal failed
            while any(r is not None and r.joining for r in net.replicas.values()):
                await trio.sleep(0.05)  # a new cluster: every replica joins first
            for j in range(ops // clients):
                key, op = KEYS[rng.randrange(len(KEYS))], f"c{c}-{j}"
                if rng.random() < 0.3:  # a key few have used (a new chunk, say), used again later
                    key = f"u{c}-{rng.randrange(ops // clients // 3 + 1)}"
                refused = rng.random() < 0.15
                fast = rng.random() < 0.7  # replica 0 may skip phase 1 for unseen keys
                alive = cluster.alive()
                if not alive:
                    await trio.sleep(0.05)
                    continue
                rep = net.replicas[alive[rng.randrange(len(alive))]]
                assert rep is not None

                try:
                    await rep.change(key, refuse(op) if refused else append_to_log(op), op=op,
                                     leader_fast=fast)
                except (NoQuorum, ReplicaStopped):
                    failed += 1
                except ChangeRejected:
                    assert refused, f"{op} refused without being a refusal"
                else:
                    assert not refused, f"{op} was applied although its change refuses"
                    acked.append((key, op))

        async def chaos() -> None:
            for _ in range(25):
                await trio.sleep(rng.uniform(0.1, 0.6))
                roll = rng.random()
                alive = cluster.alive()
                if roll < 0.35 and len(alive) == N:
                    victim = alive[rng.randrange(N)]
                    net.trace.append((net.now(), f"crash {victim}"))
                    cluster.crash(victim)
                elif roll < 0.7 and len(alive) < N:
                    dead = next(i for i in range(N) if i not in alive)
                    net.trace.append((net.now(), f"restart {dead}"))
                    await cluster.start(dead)
                elif roll < 0.85:
                    a, b = rng.sample(range(N), 2)
                    net.cut = {frozenset((a, b))}
                else:
                    net.cut = set()
            # Faults stop: everyone up, fully connected, a reliable network.
            for i in range(N):
                if net.replicas.get(i) is None:
                    await cluster.start(i)
            net.cut = set()
            net.faulty = False

        async with trio.open_nursery() as work:
            work.start_soon(chaos)
            for c in range(clients):
                work.start_soon(client, c)
        # Convergence: within a few seconds of the faults stopping, every
        # replica has learned the newest chosen value of every key (catch-up
        # and settling, no new writes), and its tables hold it.
        # Replica 2 is cut off while every key is written once more, then a
        # refused change on every key (a retried DELETE that answers 404)
        # leaves a higher promise everywhere, replica 2 included: that must
        # not stop it from learning what was chosen while it was away.
        with trio.fail_after(30):  # a replica that restarted mid-join finishes joining
            while any(r is not None and r.joining for r in net.replicas.values()):
                await trio.sleep(0.1)
        keys = sorted({k for k, _, _ in cluster.chosen})
        net.cut = {frozenset((2, 0)), frozenset((2, 1))}
        with trio.fail_after(60):
            for n, key in enumerate(keys):
                rep = net.replicas[n % 2]
                assert rep is not None
                await rep.change(key, append_to_log(f"last-{n}"), op=f"last-{n}")
                acked.append((key, f"last-{n}"))
        net.cut = set()
        with trio.fail_after(60):
            for n, key in enumerate(keys):
                rep = net.replicas[n % N]
                assert rep is not None
                with contextlib.suppress(ChangeRejected):
                    await rep.change(key, refuse(f"late-{n}"), op=f"late-{n}")
        await trio.sleep(12)
        chosen_by_then = list(cluster.chosen)
        index_right = {i: r.unlearned == {k for k, slot in r.acceptor.slots.items()
                                          if r._unlearned(k, slot)}
                       for i, r in net.replicas.items() if r is not None}
        learned = {i: {key: (r.db.learned_value(key) or (0, {}))[1]
                       for key in {k for k, _, _ in chosen_by_then}}
                   for i, r in net.replicas.items() if r is not None}
        # Liveness after the faults: one more operation per client succeeds.
        final: dict[str, tuple[str, ...]] = {}
        with trio.fail_after(30):
            for c in range(clients):
                rep = net.replicas[c % N]
                assert rep is not None
                key = KEYS[c % len(KEYS)]
                await rep.change(key, append_to_log(f"final-{c}"), op=f"final-c{c}")
                acked.append((key, f"final-{c}"))
            for key in sorted({k for k, _ in acked} | set(KEYS)):
                rep = net.replicas[rng.randrange(N)]
                assert rep is not None
                value = await rep.change(key, lambda cur: None)  # linearizable read
                final[key] = tuple((value or {}).get("log", []))
        nursery.cancel_scope.cancel()
    return {"acked": acked, "failed": failed, "final": final, "chosen": cluster.chosen,
            "learned": learned, "chosen_by_then": chosen_by_then, "index_right": index_right,
            "trace": net.trace, "fast": sum(r.stats["fast"] for r in cluster.instances)}


def check(result: dict[str, Any]) -> None:
    by_version: dict[tuple[str, int], tuple[str, ...]] = {}
    for key, version, log in result["chosen"]:
        seen = by_version.setdefault((key, version), log)
        assert seen == log, f"two values chosen for {key} v{version}: {seen} vs {log}"
    for (key, version), log in by_version.items():
        prev = by_version.get((key, version - 1))
        if prev is not None:
            assert log[: len(prev)] == prev, f"{key} v{version} does not extend v{version - 1}"
        assert len(set(log)) == len(log), f"{key} v{version} applied an operation twice"
    for key, op in result["acked"]:
        assert op in result["final"][key], f"acknowledged {op} lost from {key}"
    assert all(result["index_right"].values()), "the index of unlearned keys went wrong"
    newest: dict[str, tuple[int, tuple[str, ...]]] = {}
    for key, version, log in result["chosen_by_then"]:
        newest[key] = max(newest.get(key, (0, ())), (version, log))
    for replica, values in result["learned"].items():
        for key, (version, log) in newest.items():
            got = values[key]
            assert (got.get("v"), tuple(got.get("log", ()))) == (version, log), (
                f"replica {replica} stays stale on {key}: has v{got.get('v')}, chosen v{version}")


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_safety_durability_and_liveness_under_faults(
    tmp_path: Path, seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    trio._core._run._r.seed(seed)  # trio's own scheduling choices, for determinism
    result = await simulate(tmp_path, seed, ops=1200)
    check(result)
    assert len(result["acked"]) > 600
    assert any("crash" in e for _, e in result["trace"])
    assert result["fast"] > 30, "replica 0 took the fast path for unseen keys"


async def test_same_seed_same_trace(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    traces = []
    for run in range(2):
        trio._core._run._r.seed(7)
        result = await simulate(tmp_path / f"run{run}", 7, ops=120)
        traces.append((result["trace"], result["chosen"]))
    assert traces[0] == traces[1]


class NoAdoption(SimReplica):
    """Planted bug: phase 1's accepted values are ignored."""

    def make_proposal(self, key: str, ballot: Ballot, change: Any) -> Proposal:
        class Forgetful(Proposal):
            def adopt(self, promises: list[Reply]) -> Value | None:
                return None

        return Forgetful(key=key, ballot=ballot, change=change, replicas=self.n)


class RoundOnly(SimReplica):
    """Planted bug: acceptors compare ballots by round only."""

    def make_acceptor(self, slots: dict[str, Slot]) -> Acceptor:
        class Sloppy(Acceptor):
            def outranks(self, new: Ballot, old: Ballot) -> bool:
                return new.round >= old.round

        return Sloppy(slots)


class LearnRefusedAfterPromise(SimReplica):
    """Planted bug: a chosen value is not learned once a higher ballot was promised."""

    def _learn(self, key: str, ballot: Ballot, value: Value) -> bool:
        slot = self.acceptor.slots.get(key)
        if slot is not None and slot.promised > ballot:
            return False
        return super()._learn(key, ballot, value)


class UnguardedFastPath(SimReplica):
    """Planted bug: every replica skips phase 1 whenever the fast path is asked for."""

    async def change(self, key: str, change: Callable[[Value | None], Value | None], *,
                     op: str | None = None, fresh: bool = False,
                     leader_fast: bool = False, joining_read: bool = False) -> Value | None:
        return await super().change(key, change, op=op, fresh=fresh or leader_fast,
                                    joining_read=joining_read)


class ReplyBeforePersist(SimReplica):
    """Planted bug: an acceptor answers before its promise or acceptance is on disk."""

    async def _durable(self) -> None:
        return


class CeilingNotPersisted(SimReplica):
    """Planted bug: the round ceiling is kept in memory only (a restart reuses rounds)."""

    async def _next_ballot(self, at_least: Ballot) -> Ballot:
        self._ceiling = 1 << 40
        return await super()._next_ballot(at_least)


@pytest.mark.parametrize("bug", [NoAdoption, RoundOnly, LearnRefusedAfterPromise,
                                 UnguardedFastPath, ReplyBeforePersist])
async def test_planted_bugs_are_caught(
    tmp_path: Path, bug: type[PaxosReplica], autojump_clock: trio.testing.MockClock
) -> None:
    caught = 0
    for seed in (1, 2, 3):
        trio._core._run._r.seed(seed)
        result = await simulate(tmp_path / f"s{seed}", seed, ops=600, replica_cls=bug,
                                bootstrap=True)
        try:
            check(result)
        except AssertionError:
            caught += 1
    assert caught == 3, f"the simulation did not always notice {bug.__doc__}"


def must_exist(op: str) -> Callable[[Value | None], Value | None]:
    """Append ``op`` to an existing register; refused (404) if there is none."""

    def change(cur: Value | None) -> Value | None:
        if cur is None:
            raise ChangeRejected("not found", 404)
        return append_to_log(op)(cur)

    return change


async def test_the_fast_path_never_refuses_on_what_only_it_has_seen(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Replica 0 was cut off while replica 1 created a register: replica 0 has
    never seen the key, but a change that needs the register must find it."""
    net = Net(random.Random(5), faulty=False)
    async with trio.open_nursery() as nursery:
        _, (_, one, _) = await start_cluster(tmp_path, net, nursery)
        net.cut = {frozenset((0, 1)), frozenset((0, 2))}
        await one.change("video/x", append_to_log("created"), op="create")
        net.cut = set()
        zero = net.replicas[0]
        assert zero is not None
        assert "video/x" not in zero.acceptor.slots
        value = await zero.change("video/x", must_exist("edited"), op="edit", leader_fast=True)
        assert value is not None
        assert value["log"] == ["created", "edited"]
        nursery.cancel_scope.cancel()


async def test_a_value_that_breaks_the_change_fails_the_round_not_the_replica(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Replicas hold an accepted value the change cannot read (a bug, or a peer that
    went wrong): the request fails with a 502; the proposer lives on."""
    net = Net(random.Random(6), faulty=False)
    async with trio.open_nursery() as nursery:
        await start_cluster(tmp_path, net, nursery)
        weird = {"v": 3, "op": "z", "log": 7}  # log should be a list
        for i in (1, 2):
            rep = net.replicas[i]
            assert rep is not None
            rep.acceptor.slots["k-weird"] = Slot(promised=Ballot(5, 1), accepted=Ballot(5, 1),
                                                 value=weird, phase=Phase.ACCEPT)
            rep._track_unlearned("k-weird")
        zero = net.replicas[0]
        assert zero is not None
        with pytest.raises(ChangeRejected) as refused:
            await zero.change("k-weird", append_to_log("a"), op="a")
        assert refused.value.status == 502
        value = await zero.change("k-fine", append_to_log("b"), op="b")
        assert value is not None
        assert value["log"] == ["b"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("replica_cls", "safe"), [(SimReplica, True), (CeilingNotPersisted, False)])
async def test_a_restarted_proposer_never_reuses_a_ballot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, replica_cls: type[PaxosReplica],
    safe: bool,
) -> None:
    """Ballots a replica used before a crash (durable promises at the acceptors may
    hold them) are never used again after it restarts: the round ceiling is on disk
    first. The planted bug keeps it in memory only, and this notices."""
    net = Net(random.Random(8), faulty=False)
    async with trio.open_nursery() as nursery:
        cluster, (_, one, _) = await start_cluster(tmp_path, net, nursery, replica_cls)
        for n in range(5):
            await one.change(f"k{n}", append_to_log(f"a{n}"), op=f"a{n}")
        used = Ballot(one._round, 1)
        cluster.crash(1)
        await cluster.start(1)
        again = net.replicas[1]
        assert again is not None
        fresh = await again._next_ballot(Ballot(0, 0))
        assert (fresh > used) is safe
        nursery.cancel_scope.cancel()


async def test_a_read_barrier_shows_what_was_chosen_before_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Replica 0 was cut off while one chunk of video V was committed and another
    was accepted by replicas 1 and 2 whose proposer then died (chosen, never
    committed). After a barrier, replica 0's tables hold both, with no wait."""
    net = Net(random.Random(9), faulty=False)
    async with trio.open_nursery() as nursery:
        _, (zero, one, two) = await start_cluster(tmp_path, net, nursery)
        net.cut = {frozenset((0, 1)), frozenset((0, 2))}
        await one.change("chunk/c0", lambda cur: {"video_id": "V", "log": ["c0"]}, op="c0")
        orphan = {"video_id": "V", "log": ["c1"], "v": 1, "op": "c1"}
        for rep in (one, two):  # a proposer's accepts arrive; its commit never does
            [reply] = await rep.handle_batch(
                [Accept(key="chunk/c1", ballot=Ballot(9, 1).to_int(), value=orphan)])
            assert isinstance(reply, Accepted)
            assert reply.ok
        net.cut = set()
        assert "chunk/c0" not in zero.learned
        await zero.barrier("V")
        for key, log in (("chunk/c0", ["c0"]), ("chunk/c1", ["c1"])):
            learned = zero.db.learned_value(key)
            assert learned is not None, key
            assert learned[1]["log"] == log
        net.cut = {frozenset((0, 1)), frozenset((0, 2))}
        with pytest.raises(NoQuorum):
            await zero.barrier("V")
        nursery.cancel_scope.cancel()


async def test_a_chosen_value_is_settled_after_a_read_round_that_failed_half_way(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Replica 0 got a value accepted by itself and replica 1 (chosen), answered,
    and died before committing it. Replica 1's first settling round fails (cut
    off from replica 2): its own promise now covers the accepted value. Once
    the network heals, settling must still find that value, and a read barrier
    at replica 2 must show it (it was acknowledged)."""
    net = Net(random.Random(11), faulty=False)
    async with trio.open_nursery() as nursery:
        cluster, (zero, one, two) = await start_cluster(tmp_path, net, nursery)
        await trio.sleep(0.5)  # recover() has run: only settling can find it
        chosen = {"video_id": "V", "log": ["c1"], "v": 1, "op": "c1"}
        for rep in (zero, one):
            rep.acceptor.slots["chunk/c1"] = Slot(promised=Ballot(9, 0), accepted=Ballot(9, 0),
                                                  value=chosen, phase=Phase.ACCEPT)
            rep._track_unlearned("chunk/c1")
        cluster.crash(0)
        net.cut = {frozenset((1, 2))}
        await trio.sleep(12)  # a settling pass ran and found no quorum
        assert one.acceptor.slots["chunk/c1"].phase is Phase.PREPARE
        assert one.db.learned_value("chunk/c1") is None
        net.cut = set()
        await two.barrier("V")
        for rep in (one, two):
            learned = rep.db.learned_value("chunk/c1")
            assert learned is not None
            assert learned[1]["log"] == ["c1"]
        nursery.cancel_scope.cancel()


async def test_a_burst_larger_than_a_peer_accepts_goes_in_several_batches(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More rounds queue for a peer while a batch is in flight than one batch may
    carry (MAX_BATCH, scaled down here): they go in several batches, not one
    that every peer refuses (a burst ten times larger fails every round)."""
    import nodes.metadata.paxos_replica as engine
    import protocol.consensus

    assert engine.SEND_BATCH <= protocol.consensus.MAX_BATCH
    monkeypatch.setattr(protocol.consensus, "MAX_BATCH", 300)
    monkeypatch.setattr(engine, "SEND_BATCH", 100)
    net = Net(random.Random(12), drop=0.0, dup=0.0, max_delay=0.02)
    async with trio.open_nursery() as nursery:
        _, (_, one, _) = await start_cluster(tmp_path, net, nursery)
        done: list[int] = []

        async def write(i: int) -> None:
            await one.change(f"burst/{i}", append_to_log("a"), op=f"a{i}")
            done.append(i)

        with trio.fail_after(30):
            async with trio.open_nursery() as work:
                work.start_soon(write, -1)
                await trio.sleep(0.0001)  # a batch is in flight to each peer
                for i in range(350):
                    work.start_soon(write, i)
        assert len(done) == 351
        assert one.stats["retries"] == 0, "a batch was refused: its rounds had to retry"
        nursery.cancel_scope.cancel()


async def test_a_read_barrier_sees_a_chunk_moved_to_another_video(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """chunk/c0 was learned everywhere under video V; then replicas 1 and 2 accepted
    a newer value naming video W, and its proposer died. A barrier for V must find
    it (the asker names the keys its tables hold for V) and settle it."""
    net = Net(random.Random(10), faulty=False)
    async with trio.open_nursery() as nursery:
        _, (zero, one, two) = await start_cluster(tmp_path, net, nursery)
        chunk = {"video_id": "V", "log": ["c0"], "sequence_num": 0, "size_bytes": 10,
                 "checksum": "ab" * 32, "created_at": "2026-11-26 12:00:00", "replicas": []}
        await one.change("chunk/c0", lambda cur: chunk, op="c0")
        with trio.fail_after(5):
            while not zero.db.chunk_ids_of_video("V"):  # in zero's tables, under V
                await trio.sleep(0.01)
        moved = {**chunk, "video_id": "W", "log": ["c0", "moved"], "v": 2, "op": "m"}
        for rep in (one, two):
            [reply] = await rep.handle_batch(
                [Accept(key="chunk/c0", ballot=Ballot(50, 1).to_int(), value=moved)])
            assert isinstance(reply, Accepted)
            assert reply.ok
        await zero.barrier("V")
        learned = zero.db.learned_value("chunk/c0")
        assert learned is not None
        assert learned[1]["video_id"] == "W"
        nursery.cancel_scope.cancel()


async def choose_on_1_and_2_then_wipe_2(cluster: Cluster, tmp: Path) -> None:
    """Key ``k`` chosen by replicas 1 and 2 (accepted by both; its proposer died
    before committing), then replica 2 crashes and its database is deleted."""
    value = {"log": ["chosen"], "v": 1, "op": "chosen"}
    for i in (1, 2):
        rep = cluster.net.replicas[i]
        assert rep is not None
        [reply] = await rep.handle_batch(
            [Accept(key="k", ballot=Ballot(9, 1).to_int(), value=value)])
        assert isinstance(reply, Accepted)
        assert reply.ok
    cluster.crash(2)
    for suffix in ("", "-wal", "-shm"):
        (tmp / f"replica-2.db{suffix}").unlink(missing_ok=True)


async def read_or_no_quorum(rep: PaxosReplica, key: str) -> Any:
    """A linearizable read's value, or ``"no quorum"``."""
    try:
        return await rep.change(key, lambda cur: None)
    except NoQuorum:
        return "no quorum"


@pytest.mark.parametrize("votes_at_once", [False, True])
async def test_a_replica_that_lost_its_database_joins_before_it_votes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, votes_at_once: bool
) -> None:
    """A value is chosen by replicas 1 and 2 (its proposer died before committing).
    Replica 2 loses its database and restarts while replica 1 is cut off. If it
    voted at once, replicas 0 and 2 would form a quorum that has never heard of
    the value and overwrite it (the planted bug, ``votes_at_once``). Joining, it
    votes only after settling what replica 1 holds: the value survives."""
    net = Net(random.Random(11), faulty=False)
    async with trio.open_nursery() as nursery:
        cluster, (zero, _, _) = await start_cluster(tmp_path, net, nursery)
        await choose_on_1_and_2_then_wipe_2(cluster, tmp_path)
        net.cut = {frozenset((1, 0)), frozenset((1, 2))}
        await cluster.start(2, bootstrap=votes_at_once)
        restarted = net.replicas[2]
        assert restarted is not None
        assert restarted.joining is not votes_at_once
        outcome = [await read_or_no_quorum(zero, "k")]
        if votes_at_once:
            assert outcome == [None]  # the chosen value is gone: the bug, shown
            nursery.cancel_scope.cancel()
            return
        assert outcome == ["no quorum"]  # replica 2 does not vote yet: nothing decided
        net.cut = set()
        with trio.fail_after(30):
            while restarted.joining:
                await trio.sleep(0.1)
        read = await zero.change("k", lambda cur: None)
        assert read is not None
        assert read["log"] == ["chosen"]
        nursery.cancel_scope.cancel()


async def test_a_crash_between_creating_the_database_and_the_replica_still_joins(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The service opens the database (which writes its epoch: ``created``) before
    the replica is built (which writes ``joining``). A crash, or a constructor that
    raises (a bad peer address, say), in between leaves a database with an epoch
    and no ``joining`` (as it was first written): at the next start the replica
    must still join, not vote at once with no past. Replicas 1 and 2 chose a value;
    replica 2 loses its database, dies right after opening the new one, and
    restarts while replica 1 is cut off."""
    net = Net(random.Random(11), faulty=False)
    async with trio.open_nursery() as nursery:
        cluster, (zero, _, _) = await start_cluster(tmp_path, net, nursery)
        await choose_on_1_and_2_then_wipe_2(cluster, tmp_path)
        MetadataDB(tmp_path / "replica-2.db", synchronous="OFF").close()  # then: killed
        net.cut = {frozenset((1, 0)), frozenset((1, 2))}
        await cluster.start(2, bootstrap=False)
        restarted = net.replicas[2]
        assert restarted is not None
        outcome = [await read_or_no_quorum(zero, "k")]
        assert outcome == ["no quorum"], f"the chosen value was overwritten: {outcome}"
        assert restarted.joining
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("reader", [2, 0])
async def test_a_replica_that_is_joining_is_no_quorum_member_of_a_read_barrier(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, reader: int
) -> None:
    """chunk/c1 of video V is chosen by replicas 1 and 2 (and learned by them);
    replica 0 missed it. Replica 2 loses its database and is joining; replica 1 is
    cut off from the others. A read barrier for V at replica 2 (itself joining)
    or at replica 0 (whose only answering peer is joining) reaches no quorum of
    replicas that remember anything: it must fail (NoQuorum / 503 joining), not
    return tables without the chosen chunk."""
    from nodes.metadata.paxos_replica import ReplicaJoining

    net = Net(random.Random(13), faulty=False)
    async with trio.open_nursery() as nursery:
        cluster, (zero, one, two) = await start_cluster(tmp_path, net, nursery)
        net.cut = {frozenset((0, 1)), frozenset((0, 2))}
        await one.change("chunk/c1", lambda cur: {"video_id": "V", "log": ["c1"]}, op="c1")
        with trio.fail_after(5):
            while two.db.learned_value("chunk/c1") is None:
                await trio.sleep(0.01)
        cluster.crash(2)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"replica-2.db{suffix}").unlink(missing_ok=True)
        net.cut = {frozenset((0, 1)), frozenset((1, 2))}
        await cluster.start(2, bootstrap=False)
        restarted = net.replicas[2]
        assert restarted is not None
        assert restarted.joining
        await trio.sleep(2)  # catch-up from replica 0 ran; replica 1 is out of reach
        asker = restarted if reader == 2 else zero
        try:
            await asker.barrier("V")
        except (NoQuorum, ReplicaJoining):
            pass  # right: no quorum of replicas with a memory answered
        else:
            assert asker.db.learned_value("chunk/c1") is not None, (
                f"replica {reader}'s read barrier passed without the chosen chunk/c1")
        nursery.cancel_scope.cancel()
