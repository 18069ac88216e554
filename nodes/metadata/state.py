"""A metadata replica's state: database, consensus engine, node liveness view.

:class:`MetadataService` is the small typed object every handler and job of
:mod:`nodes.metadata` works on. It owns no task: :mod:`.service` starts
them. Reads come from :attr:`MetadataService.reader` (a second SQLite
connection, used on the event loop beside WAL writes); every change is a
Paxos decision through :meth:`MetadataService.decide`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from nodes.net.storage_client import StoragePool
from protocol.errors import ProtocolError
from protocol.node_api import NodeRecord
from vstack import __version__
from vstack.metadata_db import MetadataDB
from vstack.node_urls import AliasTable
from vstack.paxos import ChangeRejected, Value
from vstack.redundancy import RedundancyPolicy
from vstack.registers import Change
from vstack.settings import MetadataSettings

from .paxos_replica import PaxosReplica
from .transport import FrameTransport

__all__ = ["MetadataService"]

T = TypeVar("T")


class MetadataService:
    def __init__(self, settings: MetadataSettings, db: MetadataDB, reader: MetadataDB) -> None:
        self.settings = settings
        self.version = __version__
        self.db = db
        self.reader = reader
        self.aliases = AliasTable(settings.aliases)
        self.policy = RedundancyPolicy(popularity_threshold=settings.popularity_threshold)
        self.transport = FrameTransport(settings)
        self.replica = PaxosReplica(settings.replica_id, settings.replicas, db, self.transport,
                                    run_blocking=self.run_db, bootstrap=settings.bootstrap)
        self.started = trio.current_time()
        self.last_seen: dict[str, float] = {}  # node_id -> trio time of last heartbeat
        # node_id -> trio time a peer replica last heard from it (as it told us)
        self.heard_by_peers: dict[str, float] = {}
        self.port = 0
        self.peer_port = 0  # the replica-to-replica listener (0 with a single replica)
        self._db_limiter = trio.CapacityLimiter(1)
        self._rounds = trio.Semaphore(settings.max_rounds_in_flight)
        self.storage: StoragePool  # set by the service: connections to the storage nodes

    async def run_db(self, fn: Callable[[], T]) -> T:
        """Run a blocking call on the write connection, one at a time."""
        return await trio.to_thread.run_sync(fn, limiter=self._db_limiter)

    async def decide(self, key: str, change: Change, *, fresh: bool = False) -> Value | None:
        """A Paxos round; ChangeRejected becomes the HTTP error it names.

        At most ``max_rounds_in_flight`` (a setting) run at once; past that the answer
        is 503 at once (nothing proposed): queueing more would only make every
        round late, time out and retry, adding traffic to an overloaded cluster.
        """
        try:
            self._rounds.acquire_nowait()
        except trio.WouldBlock:
            raise ProtocolError("metadata replica busy: too many decisions in flight; "
                                "retry shortly (nothing was proposed)", 503) from None
        try:
            return await self.replica.change(key, change, fresh=fresh, leader_fast=True)
        except ChangeRejected as exc:
            raise ProtocolError(exc.reason, exc.status) from None
        finally:
            self._rounds.release()

    def now(self) -> float:
        return trio.current_time()

    # -- storage-node liveness, as this replica sees it ------------------------------------

    def is_live(self, node_id: str) -> bool:
        """Heard from within ``node_timeout``, here or (as lately told) by a peer replica.

        Every node heartbeats every replica, yet a replica may not hear a node
        that the others hear: it was cut off and the node is still backing off
        from it, or only its link to that node is broken. Its own silence alone
        must not make the node down (nor flap it down and up).
        """
        last = max(self.last_seen.get(node_id, self.started),
                   self.heard_by_peers.get(node_id, -math.inf))
        return self.now() - last <= self.settings.node_timeout

    def heard_ages(self) -> dict[str, float]:
        """Seconds since this replica itself last heard from each node (peers ask)."""
        now = self.now()
        return {node_id: round(now - t, 3) for node_id, t in self.last_seen.items()}

    def note_heard(self, ages: dict[str, float]) -> None:
        """What a peer replica said it heard (``heard_ages``), in this replica's time."""
        now = self.now()
        known = {str(r["node_id"]) for r in self.reader.node_rows()}
        for node_id, age in ages.items():
            if node_id in known:  # a peer cannot make this replica keep unknown names
                self.heard_by_peers[node_id] = max(self.heard_by_peers.get(node_id, -math.inf),
                                                   now - age)

    def effective_status(self, row: dict[str, Any]) -> str:
        """The agreed verdict, or ``down`` if this replica has not heard from it lately."""
        if row["status"] == "healthy" and not self.is_live(row["node_id"]):
            return "down"
        return str(row["status"])

    def node_records(self) -> list[NodeRecord]:
        return [NodeRecord(
            node_url=r["node_url"], node_id=r["node_id"], status=self.effective_status(r),
            disk_usage_percent=float(r["disk_usage_percent"] or 0.0),
            chunk_count=int(r["chunk_count"] or 0), free_bytes=r["free_bytes"],
            last_heartbeat=r["last_heartbeat"], version=r["version"],
            public_url=self._public_if_other(str(r["node_url"])),
        ) for r in self.reader.node_rows()]

    def _public_if_other(self, url: str) -> str | None:
        public = self.aliases.public(url)
        return public if public != url else None

    def healthy_count(self) -> int:
        return sum(1 for r in self.node_records() if r.status == "healthy")
