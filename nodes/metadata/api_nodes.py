"""Storage nodes and cluster statistics: registration, heartbeats, listings, overhead."""

from __future__ import annotations

from nodes.net.http_server import Body
from protocol.http import Request, Response
from protocol.node_api import Heartbeat, NodeRegistration
from vstack.redundancy import REPLICAS

from . import liveness
from .api_common import ok, read_json
from .state import MetadataService
from .storage_checks import known_nodes

__all__ = ["heartbeat", "nodes_all", "nodes_healthy", "nodes_summary", "overhead", "register",
           "stats"]


async def nodes_healthy(svc: MetadataService, req: Request, body: Body) -> Response:
    healthy = [r for r in svc.node_records() if r.status == "healthy"]
    healthy.sort(key=lambda r: (r.disk_usage_percent, r.node_id))
    return ok([r.to_json() for r in healthy])


async def nodes_all(svc: MetadataService, req: Request, body: Body) -> Response:
    records = sorted(svc.node_records(), key=lambda r: (r.status, r.last_heartbeat or ""))
    return ok({"nodes": [r.to_json() for r in records]})


async def nodes_summary(svc: MetadataService, req: Request, body: Body) -> Response:
    summary = {"healthy": 0, "degraded": 0, "down": 0}
    for r in svc.node_records():
        summary[r.status] = summary.get(r.status, 0) + 1
    return ok(summary)


async def register(svc: MetadataService, req: Request, body: Body) -> Response:
    reg = NodeRegistration.from_json(await read_json(body), default_version=svc.version)
    await liveness.register(svc, reg)
    return ok({"status": "registered", "node_id": reg.node_id, "node_url": reg.node_url})


async def heartbeat(svc: MetadataService, req: Request, body: Body) -> Response:
    node_id = req.params["node_id"]
    await liveness.heartbeat(svc, node_id, Heartbeat.from_json(await read_json(body)))
    return ok({"status": "ok", "message": f"Heartbeat updated for node {node_id}"})


async def stats(svc: MetadataService, req: Request, body: Body) -> Response:
    return ok({**svc.reader.totals(), "healthy_nodes": svc.healthy_count(),
               "service_version": svc.version})


async def overhead(svc: MetadataService, req: Request, body: Body) -> Response:
    """Copies are counted by node, whatever name their writer gave the node (its URL,
    an alias such as the contract's ``http://storage-node-N:8081``, its id)."""
    known = known_nodes(svc)
    up = {r.node_id for r in svc.node_records() if r.status == "healthy"}
    healthy = {name: node for name in svc.reader.placement_node_names()
               if (node := known.identity(name)) in up}
    return ok(svc.reader.storage_overhead(replication_factor=REPLICAS, healthy=healthy))
