"""The metadata service: one replica of the cluster's source of truth.

A :class:`MetadataService` owns the replica's database, its consensus engine
(:class:`~nodes.metadata.paxos_replica.PaxosReplica`) and its view of storage-node
liveness, and runs the background jobs in one nursery:

* the consensus engine's flusher and per-peer senders;
* the liveness monitor: a registered node silent (no heartbeat, no successful
  probe) for ``node_timeout`` seconds is declared ``down`` by a Paxos
  decision, and ``healthy`` again by another when it is heard from; so every
  replica agrees on the verdict, and a node that keeps heartbeating is never
  dropped (``/nodes/healthy`` does not flap);
* the prober: ``GET /health`` on every node in ``STORAGE_NODES``, which
  counts as a heartbeat (and registers a node that never registered);
* catch-up: committed registers this replica missed while down, pulled from
  its peers at start and every 30 s;
* view counters: each replica counts the views it received; replicas merge
  each other's counters (each replica's maximum), so popularity needs no
  consensus round and no view is lost or counted twice.

The HTTP endpoints are in :mod:`nodes.metadata.api`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from nodes.net.http_client import HttpClient, request
from nodes.net.storage_client import StoragePool
from protocol.errors import ProtocolError, RemoteProtocolError, VStackError
from vstack.metadata_db import MetadataDB, utc_now
from vstack.node_urls import AliasTable, normalize_url
from vstack.paxos import ChangeRejected, Value
from vstack.settings import MetadataSettings

from .paxos_replica import Msg, PaxosReplica

__all__ = ["HttpTransport", "MetadataService"]

log = logging.getLogger("vstack.metadata")

T = TypeVar("T")
VERSION = "1.0.0"
CATCH_UP_INTERVAL = 30.0


class HttpTransport:
    """Paxos batches over HTTP (``POST /paxos``), one keep-alive connection per peer."""

    def __init__(self, peers: tuple[str, ...], self_id: int) -> None:
        self.self_id = self_id
        self.http = HttpClient()
        self.peers = {i: url.rstrip("/") for i, url in enumerate(peers) if i != self_id}

    async def call(self, peer: int, batch: list[Msg]) -> list[Msg]:
        res = await self.http.request(
            "POST", self.peers[peer] + "/paxos", json_body={"from": self.self_id, "msgs": batch},
            retry=True)
        if res.status != 200:
            raise RemoteProtocolError(f"peer {peer} answered {res.status}", 502)
        replies: list[Msg] = res.json()["replies"]
        return replies

    async def aclose(self) -> None:
        await self.http.aclose()


class MetadataService:
    def __init__(self, settings: MetadataSettings, db: MetadataDB, reader: MetadataDB) -> None:
        self.settings = settings
        self.db = db
        self.reader = reader  # a second connection: reads on the event loop, beside WAL writes
        self.aliases = AliasTable(settings.aliases)
        self.peers = settings.peers or ("",)
        self.transport = HttpTransport(settings.peers, settings.replica_id)
        self.replica = PaxosReplica(settings.replica_id, settings.replicas, db, self.transport)
        self.started = trio.current_time()
        self.last_seen: dict[str, float] = {}  # node_id -> trio time of last heartbeat
        self.port = 0
        self._db_limiter = trio.CapacityLimiter(1)
        self.storage: StoragePool  # binary-protocol connections for checks on storage nodes

    # -- helpers ---------------------------------------------------------------------

    async def run_db(self, fn: Callable[[], T]) -> T:
        """Run a blocking call on the write connection, one at a time."""
        return await trio.to_thread.run_sync(fn, limiter=self._db_limiter)

    async def decide(self, key: str, change: Callable[[Value | None], Value | None], *,
                     fresh: bool = False) -> Value | None:
        """A Paxos round; ChangeRejected becomes the HTTP error it names."""
        try:
            return await self.replica.change(key, change, fresh=fresh, leader_fast=True)
        except ChangeRejected as exc:
            raise ProtocolError(exc.reason, exc.status) from None

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return self.reader.query(sql, args)

    def now(self) -> float:
        return trio.current_time()

    # -- videos ---------------------------------------------------------------------------

    async def create_video(self, title: str, duration_sec: int) -> str:
        video_id = str(uuid.uuid4())
        created_ns = time.time_ns()

        def create(cur: Value | None) -> Value:
            if cur is not None:
                raise ChangeRejected("video id already in use", 409)
            return {"video_id": video_id, "title": title, "duration_sec": duration_sec,
                    "status": "uploading", "created_at": utc_now(created_ns / 1e9),
                    "created_ns": created_ns, "chunk_size_bytes": 2097152}

        await self.decide(f"video/{video_id}", create, fresh=True)
        log.info("video %s created (%r)", video_id, title)
        return video_id

    # -- storage nodes -----------------------------------------------------------------------

    def node_rows(self) -> list[dict[str, Any]]:
        return self.query("SELECT node_url, node_id, last_heartbeat, disk_usage_percent,"
                          " chunk_count, free_bytes, status, version FROM storage_nodes")

    def is_live(self, node_id: str) -> bool:
        last = self.last_seen.get(node_id, self.started)
        return self.now() - last <= self.settings.node_timeout

    def effective_status(self, row: dict[str, Any]) -> str:
        if row["status"] == "healthy" and not self.is_live(row["node_id"]):
            return "down"
        return str(row["status"])

    async def register_node(self, node_url: str, node_id: str, version: str) -> None:
        url = normalize_url(node_url)

        def register(cur: Value | None) -> Value:
            return {"node_url": url, "node_id": node_id, "status": "healthy", "version": version,
                    "since": utc_now()}

        await self.decide(f"node/{node_id}", register)
        self.last_seen[node_id] = self.now()
        when = utc_now()
        await self.run_db(lambda: self.db.record_heartbeat(
            url, when=when, disk_usage_percent=0.0, chunk_count=0, version=version))
        log.info("storage node %s registered at %s", node_id, url)

    async def heartbeat(self, node_id: str, *, disk_usage_percent: float, chunk_count: int,
                        free_bytes: int | None, version: str | None) -> None:
        rows = self.query("SELECT node_url, status FROM storage_nodes WHERE node_id = ?", (node_id,))
        if not rows:
            raise ProtocolError(f"Node {node_id} is not registered", 404)
        self.last_seen[node_id] = self.now()
        when = utc_now()
        url = rows[0]["node_url"]
        await self.run_db(lambda: self.db.record_heartbeat(
            url, when=when, disk_usage_percent=disk_usage_percent, chunk_count=chunk_count,
            free_bytes=free_bytes, version=version))
        if rows[0]["status"] != "healthy":
            await self._set_liveness(node_id, "healthy")

    async def _set_liveness(self, node_id: str, status: str) -> None:
        def verdict(cur: Value | None) -> Value | None:
            if cur is None or cur.get("status") == status:
                return None
            return {**cur, "status": status, "since": utc_now()}

        try:
            await self.decide(f"node/{node_id}", verdict)
        except ProtocolError as exc:
            log.warning("could not record node %s as %s: %s", node_id, status, exc.msg)
            return
        if status == "down":
            log.warning("storage node %s is down (silent for over %.0f s)", node_id,
                        self.settings.node_timeout)
        else:
            log.info("storage node %s is back", node_id)

    async def run_liveness_monitor(self) -> None:
        period = min(self.settings.heartbeat_interval, self.settings.node_timeout / 3)
        while True:
            await trio.sleep(period)
            for row in self.node_rows():
                if row["status"] == "healthy" and not self.is_live(row["node_id"]):
                    await self._set_liveness(row["node_id"], "down")

    async def run_prober(self) -> None:
        """Probe ``STORAGE_NODES``: a node that answers /health has heartbeated."""
        while True:
            for url in self.settings.storage_nodes:
                try:
                    with trio.fail_after(self.settings.probe_timeout):
                        res = await request("GET", self.aliases.resolve(url) + "/health")
                    info = res.json()
                except (VStackError, trio.TooSlowError, ValueError, KeyError, TypeError):
                    continue
                if res.status != 200 or not isinstance(info, dict) or "node_id" not in info:
                    continue
                node_id = str(info["node_id"])
                known = self.query("SELECT 1 FROM storage_nodes WHERE node_id = ?", (node_id,))
                try:
                    if not known:
                        await self.register_node(url, node_id, str(info.get("version", VERSION)))
                    await self.heartbeat(
                        node_id, disk_usage_percent=float(info.get("disk_usage", 0.0)),
                        chunk_count=int(info.get("chunk_count", 0)),
                        free_bytes=info.get("free_bytes"), version=info.get("version"))
                except ProtocolError as exc:
                    log.debug("probe of %s not recorded: %s", url, exc.msg)
            await trio.sleep(self.settings.heartbeat_interval)

    # -- replication housekeeping ------------------------------------------------------------

    async def catch_up(self) -> int:
        """Learn committed registers from every reachable peer; returns how many were new."""
        learned = 0
        for i, base in self.transport.peers.items():
            after = ""
            while True:
                try:
                    with trio.fail_after(10):
                        res = await self.transport.http.request(
                            "GET", f"{base}/paxos/committed?after={after}&limit=500")
                    entries = res.json()["entries"] if res.status == 200 else []
                except (VStackError, trio.TooSlowError, ValueError, KeyError, TypeError):
                    log.debug("catch-up from replica %d failed", i)
                    break
                if not entries:
                    break
                learned += await self.replica.absorb(entries)
                after = entries[-1]["k"]
        if learned:
            log.info("caught up %d committed decisions from peers", learned)
        return learned

    async def run_catch_up(self) -> None:
        while True:
            await self.catch_up()
            await trio.sleep(CATCH_UP_INTERVAL)

    async def merge_views(self) -> None:
        for i, base in self.transport.peers.items():
            try:
                with trio.fail_after(5):
                    res = await self.transport.http.request("GET", f"{base}/paxos/views?replica={i}")
                counts = [(str(v), int(r), int(c)) for v, r, c in res.json()["counts"]]
            except (VStackError, trio.TooSlowError, ValueError, KeyError, TypeError):
                continue
            await self.run_db(lambda counts=counts: self.db.merge_views(counts))  # type: ignore[misc]

    async def run_views_merger(self) -> None:
        while True:
            await trio.sleep(self.settings.views_merge_interval)
            await self.merge_views()
