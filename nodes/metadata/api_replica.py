"""Replica-to-replica endpoints under ``/paxos``: batches, acceptor state, catch-up, views."""

from __future__ import annotations

from nodes.net.http_server import Body
from protocol.consensus import Batch, encode_message, encode_reply
from protocol.http import Request, Response

from .api_common import ok, query_int, read_json
from .replication import slot_state
from .state import MetadataService

__all__ = ["batch", "committed", "state", "views"]


async def batch(svc: MetadataService, req: Request, body: Body) -> Response:
    """``POST /paxos``: one reply per message, sent once the acceptor state is durable."""
    messages = Batch.from_json(await read_json(body)).messages
    replies = await svc.replica.handle_batch(messages)
    return ok({"replies": [encode_reply(r) for r in replies]})


async def state(svc: MetadataService, req: Request, body: Body) -> Response:
    return ok(slot_state(svc, req.query.get("key", "")))


async def committed(svc: MetadataService, req: Request, body: Body) -> Response:
    """``GET /paxos/committed?since=N``: values learned after change N, oldest first."""
    since = max(query_int(req, "since", 0), 0)
    limit = min(max(query_int(req, "limit", 500), 1), 5000)
    epoch, changes = await svc.replica.changes_since(since, limit)
    return ok({"epoch": epoch,
               "entries": [{"s": seq, **encode_message(c)} for seq, c in changes]})


async def views(svc: MetadataService, req: Request, body: Body) -> Response:
    return ok({"counts": svc.reader.view_counts_of(svc.settings.replica_id)})
