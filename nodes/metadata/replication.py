"""Replica housekeeping: catching up on missed decisions, merging view counters.

* **catch-up**: committed registers this replica missed while it was down,
  pulled page by page (``GET /paxos/committed``) from each reachable peer,
  at start and every :data:`CATCH_UP_INTERVAL` seconds;
* **view counters**: each replica counts the views it received; replicas
  merge each other's counters (each replica's maximum), so popularity needs
  no consensus round and no view is lost or counted twice;
* the consensus view of one key across replicas, for ``/consensus/{id}``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from nodes.net.errors import deadline
from protocol.api import decode_answer
from protocol.consensus import Commit, decode_message
from protocol.errors import VStackError
from vstack.paxos import ZERO

from .state import MetadataService

__all__ = ["CATCH_UP_INTERVAL", "catch_up", "merge_views", "peer_slot_states", "slot_state"]

log = logging.getLogger("vstack.metadata.replication")

CATCH_UP_INTERVAL = 30.0
PAGE = 500


def _commits(data: Any) -> list[Commit]:
    out = []
    for e in data["entries"]:
        msg = decode_message({"t": "commit", **e})
        assert isinstance(msg, Commit)
        out.append(msg)
    return out


def _counts(data: Any) -> list[tuple[str, int, int]]:
    return [(str(v), int(r), int(c)) for v, r, c in data["counts"]]


async def catch_up(svc: MetadataService) -> int:
    """Learn committed registers from every reachable peer; returns how many were new."""
    learned = 0
    for peer in svc.transport.peers:
        after = ""
        try:
            while True:
                with deadline(10, f"catch-up from replica {peer}"):
                    data = await svc.transport.get_json(
                        peer, f"/paxos/committed?after={after}&limit={PAGE}")
                entries = decode_answer(_commits, data, "GET /paxos/committed")
                if not entries:
                    break
                learned += await svc.replica.absorb(entries)
                after = entries[-1].key
        except VStackError as exc:
            log.debug("catch-up from replica %d stopped: %s", peer, exc)
    if learned:
        log.info("caught up %d committed decisions from peers", learned)
    return learned


async def merge_views(svc: MetadataService) -> None:
    for peer in svc.transport.peers:
        try:
            with deadline(5, f"view counters of replica {peer}"):
                data = await svc.transport.get_json(peer, f"/paxos/views?replica={peer}")
            counts = decode_answer(_counts, data, "GET /paxos/views")
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
    out = []
    for peer in svc.transport.peers:
        try:
            with deadline(1, f"state of replica {peer}"):
                state = await svc.transport.get_json(peer, f"/paxos/state?key={quote(key, safe='')}")
            if not isinstance(state, dict):
                raise ValueError
            out.append(state)
        except (VStackError, ValueError):
            out.append({"replica": peer, "reachable": False})
    return out
