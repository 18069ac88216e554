"""Replica housekeeping: catching up on missed decisions, merging view counters.

* **catch-up**: chosen values this replica missed (it was down, cut off, or
  a commit message was lost), pulled from each reachable peer by change
  cursor (``GET /paxos/committed?since=N``: what the peer learned after its
  change N), at start and every :data:`CATCH_UP_INTERVAL` second, so a
  replica that was behind converges within about a second of reaching a
  peer, and a pass costs what changed;
* **view counters**: each replica counts the views it received; replicas
  merge each other's counters (each replica's maximum), so popularity needs
  no consensus round and no view is lost or counted twice;
* the consensus view of one key across replicas, for ``/consensus/{id}``.
"""

from __future__ import annotations

import logging
from typing import Any

from nodes.net.errors import deadline
from protocol.errors import VStackError
from vstack.paxos import ZERO

from .state import MetadataService

__all__ = ["CATCH_UP_INTERVAL", "SETTLE_AFTER", "catch_up", "merge_views", "peer_slot_states",
           "settle", "slot_state"]

log = logging.getLogger("vstack.metadata.replication")

CATCH_UP_INTERVAL = 1.0  # cheap: a peer answers with what changed since the last pass
#: An accepted value nobody committed for this long is settled by a read round.
SETTLE_AFTER = 5.0


def _counts(data: Any) -> list[tuple[str, int, int]]:
    return [(str(v), int(r), int(c)) for v, r, c in data["counts"]]


async def catch_up(svc: MetadataService) -> int:
    """Learn what the peers learned since we last asked (their change cursors)."""
    return await svc.replica.catch_up()


async def settle(svc: MetadataService) -> int:
    """Settle registers whose proposer accepted a value here but never committed it."""
    return await svc.replica.settle(older_than=SETTLE_AFTER)


async def merge_views(svc: MetadataService) -> None:
    for peer in svc.transport.peers:
        try:
            with deadline(5, f"view counters of replica {peer}"):
                counts = await svc.transport.views(peer)
        except VStackError as exc:
            log.debug("view counters of replica %d: %s", peer, exc)
            continue
        await svc.run_db(lambda counts=counts: svc.db.merge_views(counts))  # type: ignore[misc]


def slot_state(svc: MetadataService, key: str) -> dict[str, Any]:
    """This replica's acceptor state for ``key`` (``/paxos/state``)."""
    replica_id = svc.settings.replica_id
    slot = svc.replica.acceptor.slots.get(key)
    if slot is None:
        return {"replica": replica_id, "promised_ballot": 0, "accepted_ballot": 0,
                "phase": "none", "version": None}
    return {"replica": replica_id, "promised_ballot": slot.promised.to_int(),
            "accepted_ballot": slot.accepted.to_int(), "phase": slot.phase.value,
            "version": (slot.value or {}).get("v"),
            "ballot": str(slot.accepted) if slot.accepted != ZERO else None}


async def peer_slot_states(svc: MetadataService, key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for peer in svc.transport.peers:
        try:
            with deadline(1, f"state of replica {peer}"):
                out.append(await svc.transport.slot(peer, key))
        except VStackError:
            out.append({"replica": peer, "reachable": False})
    return out
