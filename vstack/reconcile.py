"""What the redundancy manager should do, decided from what it observed (no I/O).

The manager (:mod:`nodes.redundancy`) looks at the cluster every
``REDUNDANCY_INTERVAL_SEC``: every video's manifest, every node's liveness,
every node's inventory. From those observations, and the time they were
made (``now``, passed in), these functions and trackers decide:

* which nodes are *lost* (down longer than ``REPAIR_GRACE_SEC``, so a
  restart is not a repair storm): :class:`Liveness`;
* which chunks have fewer copies (or shards) than their mode requires on
  nodes that are not lost, riskiest first: :func:`plan_repairs`;
* which videos should change mode, with hysteresis (replicate above the
  threshold of views in the recent window, go back to erasure coding only
  below half of it): :class:`ViewWindow` and :func:`target_mode`;
* which stored copies no committed placement references, for longer than
  ``ORPHAN_GRACE_SEC``: :class:`GraceTracker`;
* which uploads made no progress for ``UPLOAD_EXPIRY_SEC``: :class:`GraceTracker`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from protocol.api import Manifest, ManifestChunk

from .redundancy import DATA_SHARDS, ERASURE_CODING, REPLICAS, REPLICATION, TOTAL_SHARDS

__all__ = ["Copy", "GraceTracker", "Liveness", "Repair", "ViewWindow", "copies_of",
           "plan_repairs", "required", "target_mode"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Copy:
    """One stored copy of a chunk: a full replica (``index`` None) or shard ``index``."""

    node_url: str
    stored_id: str
    checksum: str
    index: int | None = None


def copies_of(chunk: ManifestChunk) -> list[Copy]:
    """Where a committed chunk lives, as its manifest says."""
    if chunk.fragments:
        return [Copy(f.node_url, f.fragment_id, f.checksum, f.fragment_index)
                for f in chunk.fragments]
    return [Copy(url, chunk.chunk_id, chunk.checksum) for url in chunk.replicas]


def required(chunk: ManifestChunk) -> int:
    """How many distinct copies (or shards) the chunk's mode asks for."""
    return TOTAL_SHARDS if chunk.fragments else REPLICAS


@dataclass(frozen=True, slots=True)
class Repair:
    """A chunk to bring back to full redundancy."""

    video_id: str
    chunk: ManifestChunk
    surviving: tuple[Copy, ...]  # on nodes that are not lost
    missing: int  # copies (or shards) to make

    @property
    def margin(self) -> int:
        """Copies beyond the minimum that can rebuild it: 0 means one more loss loses data."""
        need = DATA_SHARDS if self.chunk.fragments else 1
        return len(self.surviving) - need


def plan_repairs(manifests: Iterable[Manifest], lost: set[str],
                 gone: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
                 identity: Callable[[str], str] = str) -> list[Repair]:
    """Chunks short of copies on nodes that are not ``lost``, riskiest first.

    A chunk is short when a copy sits on a lost node, or is ``gone`` (a
    ``(node, stored id)`` its node no longer lists: quarantined by the
    scrubber, or gone with a disk), or when it was committed with fewer copies
    than its mode asks for. Nodes are compared by ``identity`` (a node has
    several names: its URL, an alias, its id): ``lost`` and the nodes of
    ``gone`` are identities, and two replicas on one node count once. Only
    shard indices in ``[0, TOTAL_SHARDS)`` count (a bogus index rebuilds
    nothing). Chunks that can no longer be rebuilt (no replica, fewer than ``DATA_SHARDS`` shards) are left
    out: nothing can repair them (they are counted by the caller as lost).
    """
    plan = []
    for m in manifests:
        for chunk in m.chunks:
            copies = copies_of(chunk)
            alive = tuple(c for c in copies if identity(c.node_url) not in lost
                          and (identity(c.node_url), c.stored_id) not in gone
                          and (c.index is None or 0 <= c.index < TOTAL_SHARDS))
            distinct = ({c.index for c in alive} if chunk.fragments
                        else {identity(c.node_url) for c in alive})
            missing = required(chunk) - len(distinct)
            rebuildable = len(distinct) >= (DATA_SHARDS if chunk.fragments else 1)
            if missing > 0 and rebuildable:
                plan.append(Repair(m.video_id, chunk, alive, missing))
    plan.sort(key=lambda r: (r.margin, r.video_id, r.chunk.sequence_num))
    return plan


def target_mode(current: str, views_in_window: int | None, threshold: int,
                override: str | None) -> str:
    """The mode a video should be in, with hysteresis.

    An override wins. Otherwise a video goes to replication once its recent
    views pass ``threshold``, and back to erasure coding only once they fall
    below half of it; in between it stays as it is, so a video on the line
    does not flap between the two. Views not known yet (``None``): it stays.
    """
    if override:
        return override
    if views_in_window is None:
        return current
    if views_in_window > threshold:
        return REPLICATION
    if views_in_window < threshold / 2:
        return ERASURE_CODING
    return current


def stored_mode(m: Manifest) -> str | None:
    """The mode a video's chunks are in (``None``: mixed or no chunks, e.g. mid-migration)."""
    modes = {ERASURE_CODING if c.fragments else REPLICATION for c in m.chunks}
    return modes.pop() if len(modes) == 1 else None


__all__ += ["stored_mode"]


class ViewWindow:
    """Views of each video over the last ``window`` seconds, from samples of its total."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def observe(self, video_id: str, total: int, now: float) -> int | None:
        """Record ``total`` views at ``now``; returns the views within the window, or
        ``None`` until a whole window of history has been seen.

        Not knowing is not "popular": a manager that just started (or a second
        one) would otherwise replicate every video with many lifetime views and
        send them back an hour later.
        """
        samples = self._samples.setdefault(video_id, deque())
        samples.append((now, total))
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        first_t, first_total = samples[0]
        if first_t > now - self.window:
            return None
        return total - first_total

    def forget_except(self, video_ids: set[str]) -> None:
        for vid in set(self._samples) - video_ids:
            del self._samples[vid]


class Liveness:
    """When each node was first seen not healthy; a node down past the grace is lost."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._down_since: dict[str, float] = {}

    def observe(self, statuses: Mapping[str, str], now: float) -> set[str]:
        """Record each node's status (by its id or URL) at ``now``; returns the lost nodes."""
        for url, status in statuses.items():
            if status == "healthy":
                self._down_since.pop(url, None)
            else:
                self._down_since.setdefault(url, now)
        for url in set(self._down_since) - set(statuses):
            del self._down_since[url]
        return {u for u, t in self._down_since.items() if now - t >= self.grace}


class GraceTracker(Generic[K]):
    """Things seen in some state since a time; due once seen so for ``grace`` seconds."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._since: dict[K, float] = {}

    def observe(self, current: Iterable[K], now: float, *, scope: Iterable[K] | None = None
                ) -> list[K]:
        """``current``: the things in the state now. Things of ``scope`` (default:
        everything tracked) not in ``current`` are forgotten. Returns those due."""
        now_set = set(current)
        for key in now_set:
            self._since.setdefault(key, now)
        checked = set(self._since) if scope is None else set(scope)
        for key in checked - now_set:
            self._since.pop(key, None)
        return [k for k in now_set if now - self._since[k] >= self.grace]

    def forget(self, key: K) -> None:
        self._since.pop(key, None)

    def __len__(self) -> int:
        return len(self._since)
