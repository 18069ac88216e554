"""The redundancy manager's state: its clients, what it tracks between passes, its counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from nodes.net.metadata_client import MetadataClient
from nodes.net.storage_client import StoragePool
from protocol.api import Manifest
from protocol.node_api import NodeRecord
from vstack.node_urls import normalize_url
from vstack.placement import NodeInfo
from vstack.reconcile import GraceTracker, Liveness, ViewWindow
from vstack.settings import RedundancySettings

__all__ = ["Manager", "RateLimiter", "Snapshot", "Stats"]


class RateLimiter:
    """A token bucket over bytes: moving ``n`` bytes waits until the rate allows it.

    Holds at most one second's worth, so a burst after a quiet spell is short
    and playback is never starved for long.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at = trio.current_time()
        self._lock = trio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:
            now = trio.current_time()
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= n
            if self._tokens < 0:
                await trio.sleep(-self._tokens / self.rate)


@dataclass
class Stats:
    """What the manager did since it started (reported by ``/health`` and logs)."""

    passes: int = 0
    repairs: int = 0
    repair_failures: int = 0
    migrations: int = 0
    orphans_deleted: int = 0
    uploads_expired: int = 0
    bytes_moved: int = 0
    under_replicated: int = 0  # chunks short of copies at the last pass
    unrecoverable: int = 0  # chunks with too few copies left to rebuild, at the last pass
    last_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Snapshot:
    """The cluster as one pass saw it.

    A node has several names: the URL it registered, the URL manifests show
    for it (an alias), its id. Every comparison of nodes goes through
    :meth:`identity`, which maps each of them to the node's id (a name no
    registered node answers to is its own identity, normalized).
    """

    nodes: list[NodeRecord]
    lost: set[str]  # ids of the nodes down past the repair grace
    manifests: list[Manifest]  # every video that is not deleted
    _ids: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids: dict[str, str] = {}
        for n in self.nodes:
            for name in (n.node_url, n.public_url):
                if name:
                    ids[normalize_url(name)] = n.node_id
        ids |= {n.node_id: n.node_id for n in self.nodes}
        object.__setattr__(self, "_ids", ids)

    def identity(self, name: str) -> str:
        """The id of the node ``name`` names (its URL, public URL or id)."""
        return self._ids.get(name) or self._ids.get(normalize_url(name)) or normalize_url(name)

    def known(self, name: str) -> bool:
        """Whether ``name`` names a registered node."""
        return name in self._ids or normalize_url(name) in self._ids

    @property
    def writable(self) -> list[NodeInfo]:
        """Healthy nodes new copies may go to."""
        return [NodeInfo(url=n.node_url, node_id=n.node_id,
                         disk_usage_percent=n.disk_usage_percent)
                for n in self.nodes if n.status == "healthy" and n.node_id not in self.lost]

    def writable_url(self, name: str) -> str:
        """The URL :attr:`writable` lists for the node ``name`` names (``name`` itself if
        it lists none): new copies are kept off the nodes holding some already."""
        ident = self.identity(name)
        return next((n.url for n in self.writable if n.node_id == ident), name)


@dataclass(eq=False)
class Manager:
    settings: RedundancySettings
    metadata: MetadataClient
    pool: StoragePool
    limiter: RateLimiter
    liveness: Liveness = field(init=False)
    views: ViewWindow = field(init=False)
    orphans: GraceTracker[tuple[str, str]] = field(init=False)
    stalled: GraceTracker[tuple[str, int]] = field(init=False)
    stats: Stats = field(default_factory=Stats)
    port: int = 0  # the /health and /metrics port, once listening (0: none)
    #: Referenced copies their (healthy) node did not list, at the last two listings:
    #: missing in both counts as lost (a listing that paged past a moving row does not).
    missing: set[tuple[str, str]] = field(default_factory=set)
    missing_before: set[tuple[str, str]] = field(default_factory=set)

    #: Work that failed, and until when it waits: a chunk or video that keeps failing
    #: (unreadable, nowhere to place) must not take the place of the rest every pass.
    _deferred: dict[str, tuple[float, float]] = field(default_factory=dict)

    def deferred(self, key: str) -> bool:
        until = self._deferred.get(key)
        return until is not None and trio.current_time() < until[0]

    def failed(self, key: str) -> None:
        """Back ``key`` off: one pass's interval at first, doubling up to an hour."""
        _, delay = self._deferred.get(key, (0.0, self.settings.interval / 2))
        delay = min(delay * 2, 3600.0)
        self._deferred[key] = (trio.current_time() + delay, delay)

    def succeeded(self, key: str) -> None:
        self._deferred.pop(key, None)

    def __post_init__(self) -> None:
        s = self.settings
        self.liveness = Liveness(s.repair_grace)
        self.views = ViewWindow(s.popularity_window)
        self.orphans = GraceTracker(s.orphan_grace)
        self.stalled = GraceTracker(s.upload_expiry)
