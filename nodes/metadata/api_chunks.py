"""Chunks: commit a placement once the nodes hold it, list fragments, show consensus state;
the garbage collector's marks before it deletes a copy (see :mod:`vstack.registers`)."""

from __future__ import annotations

import json
import time

from nodes.net.http_server import Body
from protocol.api import CHUNK_ID_RE, MAX_COPIES, ChunkCommit, CommitResult
from protocol.errors import ProtocolError
from protocol.http import Request, Response
from vstack.registers import (
    MarksSeen,
    chunk_key,
    commit_chunk,
    finish_collecting,
    mark_collecting,
    marks_seen,
)

from .api_common import ok, read_json
from .replication import peer_slot_states, slot_state
from .state import MetadataService
from .storage_checks import check_shards, known_nodes, verify_placement

__all__ = ["chunk_fragments", "collect", "commit", "consensus", "placement"]


async def commit(svc: MetadataService, req: Request, body: Body) -> Response:
    """``POST /chunk/{id}/commit``: check the nodes hold it, then decide (Paxos)."""
    chunk_id = req.params["chunk_id"]
    raw = await read_json(body)
    for field in ("node_urls", "fragments_metadata"):
        if isinstance(raw.get(field), list) and len(raw[field]) > MAX_COPIES:
            raise ProtocolError(f"{field} lists more than {MAX_COPIES} entries", 400)
    request = ChunkCommit.from_json(raw)
    known = known_nodes(svc)
    check_shards(request, known)
    seen = await _marks_seen(svc, chunk_id)  # before the check: see vstack.registers
    verified = await verify_placement(svc, chunk_id, request)
    if verified is None:
        unknown = sorted({name for name in (*request.node_urls,
                                            *(f.node_url for f in request.fragments or ()))
                          if known.address(name) is None})
        why = (f"; not registered storage nodes (never contacted): {', '.join(unknown[:4])}"
               if unknown else "")
        return ok(CommitResult(success=False, committed_nodes=(),
                               message=f"Failed to reach consensus for chunk {chunk_id}{why}"
                               ).to_json())
    nodes, fragments = verified
    now_ns = time.time_ns()
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now_ns / 1e9))
    await svc.decide(chunk_key(chunk_id), commit_chunk(
        chunk_id, request, nodes=nodes, fragments=fragments, created_at=created,
        committed_ns=now_ns, seen=seen, identity=known.identity))
    return ok(CommitResult(success=True, committed_nodes=tuple(nodes),
                           message=f"Chunk {chunk_id} committed to {len(nodes)} nodes").to_json())


async def _marks_seen(svc: MetadataService, chunk_id: str) -> MarksSeen:
    """The collector's marks on the chunk as this replica learned them (never ahead of
    what was decided; behind only makes the commit more careful)."""
    learned = await svc.run_db(lambda: svc.db.learned_value(chunk_key(chunk_id)))
    return marks_seen(learned[1] if learned else None, time.time_ns())


async def collect(svc: MetadataService, req: Request, body: Body) -> Response:
    """``POST /chunk/{id}/collect``: the garbage collector marks ``stored_id`` on
    ``node`` before deleting it (409 if the placement names that copy there, its
    video not deleted): ``{"mark": n}``; with ``"finish": n``, it is done with mark n."""
    chunk_id = req.params["chunk_id"]
    raw = await read_json(body)
    stored_id, node, finish = raw.get("stored_id"), raw.get("node"), raw.get("finish")
    if not isinstance(stored_id, str) or not CHUNK_ID_RE.match(stored_id) \
            or not isinstance(node, str) or not 0 < len(node) <= 2048 \
            or not (finish is None or (isinstance(finish, int) and not isinstance(finish, bool))):
        raise ProtocolError("collect needs stored_id (a chunk id), node, and finish "
                            "(a mark number) or null", 422)
    identity = known_nodes(svc).identity
    if finish is not None:
        await svc.decide(chunk_key(chunk_id), finish_collecting(stored_id, identity(node),
                                                                finish))
        return ok({"chunk_id": chunk_id, "finished": finish})
    found = svc.reader.stored_ids_of_chunk(chunk_id)
    removed = None
    if found is not None:
        if svc.settings.replicas > 1:
            await svc.replica.barrier(found[0])
        video = svc.reader.video(found[0])
        removed = found[0] if video is None or video["status"] == "deleted" else None
    value = await svc.decide(chunk_key(chunk_id), mark_collecting(
        stored_id, identity(node), identity=identity, removed_video=removed,
        now_ns=time.time_ns()))
    return ok({"chunk_id": chunk_id, "mark": int((value or {})["collect"]["n"])})


async def placement(svc: MetadataService, req: Request, body: Body) -> Response:
    """``GET /chunk/{id}/placement``: the chunk's video and the ids it is stored under
    (for the garbage collector's last check before it deletes a copy);
    ``?consistency=linearizable`` reads through a quorum first, as manifests do."""
    chunk_id = req.params["chunk_id"]
    found = svc.reader.stored_ids_of_chunk(chunk_id)
    if found is not None and req.query.get("consistency") == "linearizable" \
            and svc.settings.replicas > 1:
        await svc.replica.barrier(found[0])
        found = svc.reader.stored_ids_of_chunk(chunk_id)
    if found is None:
        raise ProtocolError("Chunk not found", 404)
    video = svc.reader.video(found[0])
    return ok({"chunk_id": chunk_id, "video_id": found[0],
               "video_status": video["status"] if video else "deleted", "stored_ids": found[1]})


async def chunk_fragments(svc: MetadataService, req: Request, body: Body) -> Response:
    chunk_id = req.params["chunk_id"]
    rows = [{**row, "node_url": svc.aliases.public(row["node_url"])}
            for row in svc.reader.fragments_of_chunk(chunk_id)]
    return ok({"chunk_id": chunk_id, "fragments": rows})


async def consensus(svc: MetadataService, req: Request, body: Body) -> Response:
    """``GET /consensus/{id}``: this replica's Paxos state of the chunk, and each peer's."""
    chunk_id = req.params["chunk_id"]
    key = chunk_key(chunk_id)
    slot = svc.replica.acceptor.slots.get(key)
    if slot is None:
        raise ProtocolError("Consensus state not found", 404)
    value = slot.value or {}
    accepted = (json.dumps(value.get("replicas") or [f["node_url"] for f in
                                                      value.get("fragments") or []])
                if slot.value is not None else None)
    acceptors = [slot_state(svc, key), *await peer_slot_states(svc, key)]
    return ok({"chunk_id": chunk_id, "promised_ballot": slot.promised.to_int(),
               "accepted_ballot": slot.accepted.to_int(), "accepted_value": accepted,
               "phase": slot.phase.value, "version": value.get("v"), "acceptors": acceptors})
