"""Popularity and redundancy: view counts, the recommended mode, overrides, the trade-off."""

from __future__ import annotations

from nodes.net.http_server import Body
from protocol.api import REDUNDANCY_MODES
from protocol.errors import ProtocolError
from protocol.http import Request, Response
from protocol.validate import ValidationError
from vstack.redundancy import mode_config
from vstack.registers import override_key, set_override

from .api_common import ok
from .state import MetadataService

__all__ = ["add_view", "clear_override", "config", "efficiency", "override", "popularity",
           "recommend"]


async def popularity(svc: MetadataService, req: Request, body: Body) -> Response:
    video_id = req.params["video_id"]
    return ok({"video_id": video_id, "view_count": svc.reader.view_count(video_id)})


async def add_view(svc: MetadataService, req: Request, body: Body) -> Response:
    video_id = req.params["video_id"]
    video = svc.reader.video(video_id)
    if video is None or video.get("status") == "deleted":
        # Counted only for videos that exist: made-up ids would grow the counter
        # table (and the counters replicas exchange) without bound.
        raise ProtocolError(f"Video {video_id[:80]} not found", 404)
    replica = svc.settings.replica_id
    await svc.run_db(lambda: svc.db.add_view(video_id, replica))
    return ok({"status": "ok", "message": f"View count incremented for {video_id}"})


async def recommend(svc: MetadataService, req: Request, body: Body) -> Response:
    video_id = req.params["video_id"]
    views = svc.reader.view_count(video_id)
    forced = svc.reader.override_of(video_id)
    mode = svc.policy.recommend(views, forced)
    return ok({"video_id": video_id, "view_count": views, "recommended_mode": mode,
               "override": forced, "config": mode_config(mode)})


async def _existing_video(svc: MetadataService, video_id: str) -> None:
    """404 unless ``video_id`` names a video that is not deleted: an override is a Paxos
    register kept for good, so made-up ids must cost nothing (as for :func:`add_view`).
    A video this replica does not know yet is looked for again after a read barrier."""
    video = svc.reader.video(video_id)
    if video is None and svc.settings.replicas > 1:
        await svc.replica.barrier(video_id)
        video = svc.reader.video(video_id)
    if video is None or video.get("status") == "deleted":
        raise ProtocolError(f"Video {video_id[:80]} not found", 404)


async def override(svc: MetadataService, req: Request, body: Body) -> Response:
    video_id = req.params["video_id"]
    await _existing_video(svc, video_id)
    mode = req.query.get("mode")
    if mode is None:
        raise ValidationError([{"type": "missing", "loc": ["query", "mode"],
                                "msg": "Field required", "input": None}])
    if mode not in REDUNDANCY_MODES:
        raise ProtocolError(f"Invalid mode: {mode}. Use 'replication' or 'erasure_coding'", 400)
    await svc.decide(override_key(video_id), set_override(mode))
    return ok({"status": "ok", "video_id": video_id, "override_mode": mode,
               "message": f"Manual override set to {mode}"})


async def clear_override(svc: MetadataService, req: Request, body: Body) -> Response:
    """Clear the override; with none set (read after a barrier) it is a no-op: no round."""
    video_id = req.params["video_id"]
    await _existing_video(svc, video_id)
    if svc.settings.replicas > 1:
        await svc.replica.barrier(video_id)
    if svc.reader.override_of(video_id) is not None:
        await svc.decide(override_key(video_id), set_override(None))
    return ok({"status": "ok", "video_id": video_id, "message": "Manual override cleared"})


async def efficiency(svc: MetadataService, req: Request, body: Body) -> Response:
    return ok(svc.policy.efficiency())


async def config(svc: MetadataService, req: Request, body: Body) -> Response:
    return ok(svc.policy.config())
