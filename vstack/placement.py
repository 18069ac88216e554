"""Where chunks go: the one place that chooses storage nodes.

Every writer (the uploader today; repair and erasure coding next) asks
:func:`choose_nodes` for distinct healthy nodes, ranked by how full their
disk is and by how much this writer already has in flight to each, so load
spreads evenly and a filling node is used less. Ties rotate with the chunk's
sequence number, so equal nodes take turns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["NodeInfo", "choose_nodes", "required_copies"]

#: One in-flight write weighs as much as this many percent of disk usage.
LOAD_WEIGHT = 5.0


@dataclass(frozen=True, kw_only=True)
class NodeInfo:
    url: str
    node_id: str
    disk_usage_percent: float = 0.0


def choose_nodes(
    nodes: Iterable[NodeInfo],
    count: int,
    *,
    load: Mapping[str, int] | None = None,
    exclude: Iterable[str] = (),
    turn: int = 0,
) -> list[NodeInfo]:
    """Up to ``count`` distinct nodes, best first, none of ``exclude`` (URLs)."""
    banned = set(exclude)
    pool = [n for n in nodes if n.url not in banned]
    if not pool:
        return []
    pool.sort(key=lambda n: n.url)
    k = turn % len(pool)
    pool = pool[k:] + pool[:k]  # the rotation breaks ties between equal nodes
    load = load or {}
    ranked = sorted(
        enumerate(pool),
        key=lambda item: (item[1].disk_usage_percent + LOAD_WEIGHT * load.get(item[1].url, 0),
                          item[0]),
    )
    return [n for _, n in ranked[:count]]


def required_copies(replicas: int, available: int) -> int:
    """How many acknowledged copies a chunk needs before it is committed.

    All ``replicas`` when that many nodes are up; otherwise as many as there
    are (so with ``replicas >= 2`` and two nodes up, both: one lost node must
    not lose the chunk), and never more than ``replicas``.
    """
    return max(1, min(replicas, available))
