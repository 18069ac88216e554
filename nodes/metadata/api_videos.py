"""Videos: create, re-status, delete, list, and the manifest that says where every chunk is."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from nodes.net.http_server import Body
from protocol.api import StatusChange, VideoCreate, format_sha256
from protocol.errors import ProtocolError
from protocol.http import Request, Response
from vstack.metadata_db import utc_now
from vstack.registers import (
    idempotent_video_id,
    new_video,
    remove_video,
    request_fingerprint,
    set_video_status,
    video_key,
)

from .api_common import ok, query_int, read_json
from .state import MetadataService
from .storage_checks import delete_copies

__all__ = ["create_video", "delete_video", "health", "list_videos", "manifest", "root",
           "set_status"]

log = logging.getLogger("vstack.metadata.api")

MAX_IDEMPOTENCY_KEY = 255


async def health(svc: MetadataService, req: Request, body: Body) -> Response:
    records = svc.node_records()
    return ok({"status": "healthy", "service": "metadata-service",
               "healthy_nodes": sum(1 for r in records if r.status == "healthy"),
               "total_nodes": len(records), "database_status": "healthy",
               "replica_id": svc.settings.replica_id, "replicas": svc.settings.replicas,
               "joining": svc.replica.joining,
               "version": svc.version, "consensus": dict(svc.replica.stats)})


async def root(svc: MetadataService, req: Request, body: Body) -> Response:
    return ok({"message": "V-Stack Metadata Service", "version": svc.version})


async def create_video(svc: MetadataService, req: Request, body: Body) -> Response:
    """``POST /video``. With an ``Idempotency-Key`` header, a retry (on any replica,
    after any failure, a 503 "outcome unknown" included) gets the first decision."""
    idem = _idempotency_key(req)
    video = VideoCreate.from_json(await read_json(body))
    created_ns = time.time_ns()
    if idem is None:
        video_id, fingerprint = str(uuid.uuid4()), None
    else:
        video_id = idempotent_video_id(idem)
        fingerprint = request_fingerprint(video.title, video.duration_sec)
    change = new_video(video_id, video.title, video.duration_sec,
                       created_at=utc_now(created_ns / 1e9), created_ns=created_ns,
                       fingerprint=fingerprint)
    # A random id is a key nobody else can know yet (the fresh fast path); a
    # keyed one may be retried at another replica at the same time: full rounds.
    await svc.decide(video_key(video_id), change, fresh=idem is None)
    log.info("video %s created (%r)", video_id, video.title)
    return ok({"video_id": video_id, "upload_url": f"/upload/{video_id}"})


def _idempotency_key(req: Request) -> str | None:
    key = req.header("idempotency-key")
    if key is None:
        return None
    key = key.strip().strip('"')
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise ProtocolError(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII "
                            "characters", 400)
    return key


async def set_status(svc: MetadataService, req: Request, body: Body) -> Response:
    video_id = req.params["video_id"]
    change = StatusChange.from_json(await read_json(body))
    status = change.status
    await svc.decide(video_key(video_id), set_video_status(status, change.duration_sec))
    log.info("video %s is now %s", video_id, status)
    return ok({"status": "success", "message": f"Video status updated to {status}",
               "video_id": video_id})


async def delete_video(svc: MetadataService, req: Request, body: Body) -> Response:
    video_id = req.params["video_id"]
    targets = svc.reader.stored_copies_of_video(video_id)
    await svc.decide(video_key(video_id), remove_video)
    deleted = await delete_copies(svc, targets)
    log.info("video %s deleted (%d of %d stored chunks removed from nodes)", video_id, deleted,
             len(targets))
    return ok({"status": "deleted", "video_id": video_id, "chunks_deleted": deleted,
               "chunks_listed": len(targets)})


async def list_videos(svc: MetadataService, req: Request, body: Body) -> Response:
    limit, offset = query_int(req, "limit", 100), query_int(req, "offset", 0)
    if not 1 <= limit <= 1000:
        raise ProtocolError("Limit must be between 1 and 1000", 400)
    if offset < 0:
        raise ProtocolError("Offset must be non-negative", 400)
    return ok(svc.reader.list_videos(limit, offset))


async def manifest(svc: MetadataService, req: Request, body: Body) -> Response:
    """``GET /manifest/{id}``; ``?consistency=linearizable`` first makes sure it shows
    every change chosen before the request (a read barrier through a quorum)."""
    video_id = req.params["video_id"]
    consistency = req.query.get("consistency", "local")
    if consistency not in ("local", "linearizable"):
        raise ProtocolError("consistency must be 'local' or 'linearizable'", 400)
    if consistency == "linearizable" and svc.settings.replicas > 1:
        await svc.replica.barrier(video_id)
    video = svc.reader.video(video_id)
    if video is None:
        raise ProtocolError("Video not found", 404)
    replicas = svc.reader.replicas_of_video(video_id)
    fragments = svc.reader.fragments_of_video(video_id)
    entries: list[dict[str, Any]] = []
    for c in svc.reader.chunks_of_video(video_id):
        frags = [{**f, "node_url": svc.aliases.public(f["node_url"])}
                 for f in fragments.get(c["chunk_id"], [])]
        entries.append({**c, "checksum": format_sha256(c["checksum"]),
                        "replicas": [svc.aliases.public(u) for u in replicas.get(c["chunk_id"], [])],
                        "fragments": frags or None})
    return ok({**video, "chunk_duration_sec": svc.settings.chunk_duration, "chunks": entries})
