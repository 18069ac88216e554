"""Where chunks go: the one place that chooses storage nodes.

Every writer (the uploader today; repair and erasure coding next) asks
:func:`choose_nodes` for distinct healthy nodes, ranked by how full their
disk is and by how much this writer already has in flight to each, so load
spreads evenly and a filling node is used less. Ties rotate with the chunk's
sequence number, so equal nodes take turns.

Shards of an erasure-coded chunk (:func:`choose_shard_nodes`) go on distinct
nodes when there are 5 or more. With fewer, a node may take more than one,
but never more than ``TOTAL_SHARDS - DATA_SHARDS`` (2): then losing any one
node still leaves the 3 shards that rebuild the chunk. Shards are dealt one
at a time to the node holding fewest, best-ranked first, so the data shards
0, 1, 2 land on three distinct nodes whenever there are three (a reader that
finds them needs no decoding). With fewer than 3 nodes no layout survives
the loss of a node, and placement refuses. What a layout survives
(:func:`survives`: how many nodes may be lost, *whichever* they are)::

    nodes  shards per node  survives   (3 replicas on 3 nodes: 2)
      1      5                0        refused
      2      3, 2             0        refused
      3      2, 2, 1          1
      4      2, 1, 1, 1       1
      5+     1, 1, 1, 1, 1    2
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from protocol.errors import VStackError

from .redundancy import DATA_SHARDS, TOTAL_SHARDS

__all__ = [
    "NodeInfo",
    "PlacementError",
    "choose_nodes",
    "choose_shard_nodes",
    "required_copies",
    "survives",
]

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


class PlacementError(VStackError):
    """No layout of the shards on the nodes available survives the loss of a node."""


def choose_shard_nodes(
    nodes: Iterable[NodeInfo],
    indexes: Iterable[int] = range(TOTAL_SHARDS),
    *,
    held: Mapping[int, str] | None = None,
    load: Mapping[str, int] | None = None,
    exclude: Iterable[str] = (),
    turn: int = 0,
) -> dict[int, NodeInfo]:
    """A node for each shard in ``indexes``, so that losing any one node leaves 3 shards.

    Args:
        nodes: the healthy nodes that may take a shard.
        indexes: the shards to place (all 5 for a new chunk; the missing
            ones for a repair).
        held: shards the chunk keeps where they are (index -> node URL),
            counted so that no node ends up with more than 2; an entry for an
            index being placed is ignored (that shard is being replaced).
        load, exclude, turn: as for :func:`choose_nodes`.

    Returns:
        shard index -> node, in index order.

    Raises:
        PlacementError: the usable nodes cannot take the shards with at most
            2 of the chunk's on each (a new chunk needs 3 nodes).
    """
    wanted = sorted(set(indexes))
    if any(not 0 <= i < TOTAL_SHARDS for i in wanted):
        raise ValueError(f"shard indexes must be in [0, {TOTAL_SHARDS}): {wanted}")
    pool = list(nodes)
    ranked = choose_nodes(pool, len(pool), load=load, exclude=exclude, turn=turn)
    cap = TOTAL_SHARDS - DATA_SHARDS
    count = Counter(url for i, url in (held or {}).items() if i not in wanted)
    room = sum(max(0, cap - count[n.url]) for n in ranked)
    if room < len(wanted):
        raise PlacementError(
            f"{len(wanted)} shard(s) cannot be placed so that losing any one node leaves "
            f"{DATA_SHARDS} of {TOTAL_SHARDS}: at most {cap} may share a node, and the "
            f"{len(ranked)} usable node(s) have room for {room} (a new chunk needs 3 nodes)")
    layout: dict[int, NodeInfo] = {}
    for index in wanted:
        # Fewest shards of this chunk first; among equals, the best-ranked node.
        _, _, node = min((count[n.url], rank, n) for rank, n in enumerate(ranked)
                         if count[n.url] < cap)
        layout[index] = node
        count[node.url] += 1
    return layout


def survives(layout: Mapping[int, Hashable] | Iterable[Hashable], *,
             needed: int = DATA_SHARDS) -> int:
    """How many node losses ``layout`` survives, whichever nodes they are.

    Args:
        layout: the node of each copy or shard (shard index -> node, or a
            sequence of nodes, one entry per copy); any hashable node key.
        needed: how many copies rebuild the chunk: 3 shards, or 1 replica.

    Returns:
        The largest ``f`` such that losing any ``f`` nodes leaves ``needed``
        copies; -1 when there are fewer than ``needed`` even with all nodes up.
    """
    if needed < 1:
        raise ValueError("needed must be at least 1")
    placed = layout.values() if isinstance(layout, Mapping) else layout
    per_node = sorted(Counter(placed).values(), reverse=True)
    left = sum(per_node)
    lost = -1
    while left >= needed:  # ends: with every node lost, nothing is left
        lost += 1
        left -= per_node[lost]  # the worst next loss: the node holding most
    return lost
