"""Storage nodes as the metadata service knows them: registration, heartbeats, verdicts.

* a node registers (``POST /nodes/register``): a Paxos decision makes it
  ``healthy`` at its URL on every replica;
* heartbeats (``POST /nodes/{id}/heartbeat``) are local to each replica
  (every node heartbeats every replica) and refresh its vital signs;
* the **monitor** declares a node ``down`` by a Paxos decision once a
  majority of replicas agree that none of them heard from it for
  ``node_timeout`` seconds, and ``healthy`` again by another when it is
  heard from, so every replica agrees on the verdict and a node that keeps
  heartbeating any replica is never dropped (``/nodes/healthy`` does not flap);
* the **prober** reads ``/health`` of every node in ``STORAGE_NODES``, which
  counts as a heartbeat (and registers a node that never registered).

Both jobs run under :func:`nodes.net.jobs.run_forever`.
"""

from __future__ import annotations

import logging

import trio

from nodes.net.errors import deadline
from protocol.errors import ProtocolError, VStackError
from protocol.node_api import Heartbeat, NodeRegistration, node_key_digest
from vstack.metadata_db import utc_now
from vstack.node_urls import normalize_url
from vstack.registers import node_key, register_node, set_liveness

from .state import MetadataService

__all__ = ["ask_peers", "heartbeat", "monitor_step", "probe_step", "register"]

log = logging.getLogger("vstack.metadata.liveness")


async def register(svc: MetadataService, reg: NodeRegistration) -> None:
    url = normalize_url(reg.node_url)
    await svc.decide(node_key(reg.node_id),
                     register_node(url, reg.node_id, reg.version, since=utc_now(),
                                   key_sha256=node_key_digest(reg.node_key)))
    svc.last_seen[reg.node_id] = svc.now()
    when = utc_now()
    await svc.run_db(lambda: svc.db.record_heartbeat(
        url, when=when, disk_usage_percent=0.0, chunk_count=0, version=reg.version))
    log.info("storage node %s registered at %s", reg.node_id, url)


async def heartbeat(svc: MetadataService, node_id: str, beat: Heartbeat) -> None:
    """Record a heartbeat; 404 if the node never registered here."""
    row = svc.reader.node(node_id)
    if row is None:
        raise ProtocolError(f"Node {node_id} is not registered", 404)
    bound = svc.reader.node_key_sha256(node_id)
    if bound is not None and bound != node_key_digest(beat.node_key):
        raise ProtocolError(f"node id {node_id} is registered by another node "
                            "(its node key differs)", 409)
    svc.last_seen[node_id] = svc.now()
    when, url = utc_now(), row["node_url"]
    await svc.run_db(lambda: svc.db.record_heartbeat(
        url, when=when, disk_usage_percent=beat.disk_usage_percent, chunk_count=beat.chunk_count,
        free_bytes=beat.free_bytes, version=beat.version))
    if row["status"] != "healthy":
        await _set_verdict(svc, node_id, "healthy")


async def _set_verdict(svc: MetadataService, node_id: str, status: str) -> None:
    try:
        await svc.decide(node_key(node_id), set_liveness(status, since=utc_now()))
    except ProtocolError as exc:
        log.warning("could not record node %s as %s: %s", node_id, status, exc.msg)
        return
    if status == "down":
        log.warning("storage node %s is down (silent for over %.0f s)", node_id,
                    svc.settings.node_timeout)
    else:
        log.info("storage node %s is back", node_id)


async def monitor_step(svc: MetadataService) -> None:
    """Declare down every healthy node that no replica has heard from in time.

    Before it proposes a verdict the replica asks its peers what they heard
    (``HEARD``): a node is down only when a majority of replicas answered and
    none of them heard it within ``node_timeout``. A replica cut off from its
    peers proposes nothing (it could not decide anyway), and one that comes
    back before the nodes resume heartbeating it does not vote them down.
    """
    answered = 1
    if svc.settings.replicas > 1:
        # Every step, not only when a node looks silent: /nodes/healthy shows what
        # peers heard too, and must not drop a node between two asks.
        answered = await ask_peers(svc)
    suspects = [row["node_id"] for row in svc.reader.node_rows()
                if row["status"] == "healthy" and not svc.is_live(row["node_id"])]
    if not suspects:
        return
    if answered < svc.settings.replicas // 2 + 1:
        log.debug("no verdict on %s: only %d replicas answered what they heard",
                  ", ".join(suspects), answered)
        return
    for node_id in suspects:
        if not svc.is_live(node_id):
            await _set_verdict(svc, node_id, "down")


#: Seconds a peer replica has to say what it heard.
HEARD_SECONDS = 2.0


async def ask_peers(svc: MetadataService) -> int:
    """Learn what every peer heard lately; the number of replicas (this one too) that said."""
    answered = 1

    async def ask(peer: int) -> None:
        nonlocal answered
        try:
            with deadline(min(HEARD_SECONDS, svc.settings.node_timeout / 2),
                          f"HEARD of replica {peer}"):
                ages = await svc.transport.heard(peer)
        except VStackError as exc:
            log.debug("replica %d did not say what it heard: %s", peer, exc)
            return
        svc.note_heard(ages)
        answered += 1

    async with trio.open_nursery() as nursery:
        for peer in svc.transport.peers:
            nursery.start_soon(ask, peer)
    return answered


async def probe_step(svc: MetadataService) -> None:
    """Probe each ``STORAGE_NODES`` URL: a node that answers ``/health`` has heartbeated."""
    for url in svc.settings.storage_nodes:
        try:
            with deadline(svc.settings.probe_timeout, f"probe of {url}"):
                info = await svc.storage.health(svc.aliases.resolve(url))
            if svc.reader.node(info.node_id) is None:
                reg = NodeRegistration(node_url=url, node_id=info.node_id,
                                       version=info.version or svc.version)
                await register(svc, reg)
            await heartbeat(svc, info.node_id, info.heartbeat())
        except VStackError as exc:
            log.debug("probe of %s: %s", url, exc)
