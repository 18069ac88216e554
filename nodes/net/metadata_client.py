"""Talking to the metadata service, whichever replica answers.

``METADATA_SERVICE_URL`` may list several replicas; :class:`MetadataClient`
sends each call to the replica that answered last and moves on to the next
when one is unreachable, times out or answers 503 (no quorum from its
side). Calls that change something are repeated on another replica only
where that is safe: every decision of the metadata service is idempotent
for the same request (a video is created once per call; see the uploader).

The typed methods (:meth:`create_video`, :meth:`commit_chunk`, ...) take and
return the messages of :mod:`protocol.api`; :meth:`call` is the raw form.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from protocol.api import (
    ChunkCommit,
    CommitResult,
    Manifest,
    Recommendation,
    StatusChange,
    VideoCreate,
    VideoCreated,
    decode_answer,
)
from protocol.errors import PeerUnreachable, ProtocolError, TransportError
from protocol.node_api import NodeRecord

from .errors import deadline
from .http_client import IDEMPOTENT, HttpClient, HttpResult

__all__ = ["MetadataClient", "MetadataUnavailable"]

log = logging.getLogger("vstack.metadata.client")


class MetadataUnavailable(TransportError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"metadata service unavailable: {detail}", 503)


class MetadataClient:
    def __init__(self, urls: tuple[str, ...], *, timeout: float = 15.0,
                 http: HttpClient | None = None,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        """``http``: a shared pool (else one of its own, sending ``headers``)."""
        if not urls:
            raise ValueError("no metadata service URL")
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.timeout = timeout
        self._own_http = http is None
        self.http = http or HttpClient(headers=headers)
        self._best = 0

    async def call(self, method: str, path: str, json_body: Any = None, *,
                   retry: bool | None = None,
                   headers: list[tuple[str, str]] | None = None) -> HttpResult:
        """The first answer that is not a transport failure or a 503.

        Raises:
            MetadataUnavailable: no replica gave one.
        """
        last = "no replica tried"
        for k in range(len(self.urls)):
            i = (self._best + k) % len(self.urls)
            try:
                with deadline(self.timeout, f"metadata {method} {path}"):
                    res = await self.http.request(method, self.urls[i] + path, json_body=json_body,
                                                  retry=retry, headers=headers)
            except TransportError as exc:
                last = f"{self.urls[i]}: {exc.msg}"
                if not (isinstance(exc, PeerUnreachable) or retry or method in IDEMPOTENT):
                    # It may have taken effect there: another replica must not do it again.
                    raise MetadataUnavailable(f"{last} (the outcome is unknown)") from exc
                continue
            if res.status == 503:
                last = f"{self.urls[i]} answered 503: {res.error_detail()}"
                continue
            self._best = i
            return res
        raise MetadataUnavailable(last)

    async def json(self, method: str, path: str, json_body: Any = None, *,
                   ok: tuple[int, ...] = (200,),
                   headers: list[tuple[str, str]] | None = None, retry: bool | None = None) -> Any:
        """The JSON answer of a call that must succeed.

        Raises:
            ProtocolError: the answer's status (e.g. 404), with its reason.
            MetadataUnavailable: no replica answered.
        """
        res = await self.call(method, path, json_body, headers=headers, retry=retry)
        if res.status not in ok:
            raise ProtocolError(f"metadata {method} {path}: {res.status} {res.error_detail()}",
                                res.status)
        return res.json()

    # -- typed calls -------------------------------------------------------------------

    async def create_video(self, video: VideoCreate, *,
                           idempotency_key: str | None = None) -> VideoCreated:
        """Create a video; with ``idempotency_key``, safe to retry on any replica
        (a 503 "outcome unknown" on one is retried on the next)."""
        headers = [("Idempotency-Key", idempotency_key)] if idempotency_key else None
        data = await self.json("POST", "/video", video.to_json(), headers=headers,
                               retry=idempotency_key is not None)
        return decode_answer(VideoCreated.from_json, data, "POST /video")

    async def set_status(self, video_id: str, status: str, *,
                         duration_sec: int | None = None) -> None:
        await self.json("PATCH", f"/video/{video_id}/status",
                        StatusChange(status=status, duration_sec=duration_sec).to_json())

    async def delete_video(self, video_id: str) -> bool:
        """``True`` if it was deleted, ``False`` if there was no such video."""
        res = await self.call("DELETE", f"/video/{video_id}")
        if res.status not in (200, 404):
            raise ProtocolError(f"metadata DELETE /video: {res.status} {res.error_detail()}",
                                res.status)
        return res.status == 200

    async def manifest(self, video_id: str, *, linearizable: bool = False) -> Manifest | None:
        """The manifest, or ``None`` if there is no such video.

        ``linearizable``: it shows every change chosen before the call, from
        whichever replica answers (a read barrier through a quorum).
        """
        path = f"/manifest/{video_id}" + ("?consistency=linearizable" if linearizable else "")
        res = await self.call("GET", path)
        if res.status == 404:
            return None
        if res.status != 200:
            raise ProtocolError(f"metadata GET /manifest: {res.status} {res.error_detail()}",
                                res.status)
        return decode_answer(Manifest.from_json, res.json(), "GET /manifest")

    async def commit_chunk(self, chunk_id: str, commit: ChunkCommit) -> CommitResult:
        data = await self.json("POST", f"/chunk/{chunk_id}/commit", commit.to_json())
        return decode_answer(CommitResult.from_json, data, "POST /chunk/commit")

    async def healthy_nodes(self) -> list[NodeRecord]:
        data = await self.json("GET", "/nodes/healthy")
        return decode_answer(lambda d: [NodeRecord.from_json(r) for r in d], data,
                             "GET /nodes/healthy")

    async def all_nodes(self) -> list[NodeRecord]:
        """Every registered node, whatever its status."""
        data = await self.json("GET", "/nodes/all")
        return decode_answer(lambda d: [NodeRecord.from_json(r) for r in d["nodes"]], data,
                             "GET /nodes/all")

    async def video_ids(self, *, page: int = 1000) -> list[str]:
        """Every video's id (paged through ``GET /videos``)."""
        ids: list[str] = []
        while True:
            data = await self.json("GET", f"/videos?limit={page}&offset={len(ids)}")
            batch = decode_answer(lambda d: [str(v["video_id"]) for v in d], data, "GET /videos")
            ids += batch
            if len(batch) < page:
                return ids

    async def recommend(self, video_id: str) -> Recommendation:
        """The redundancy mode the metadata service recommends for ``video_id``."""
        data = await self.json("GET", f"/redundancy/recommend/{video_id}")
        return decode_answer(Recommendation.from_json, data, "GET /redundancy/recommend")

    async def stored_ids(self, chunk_id: str) -> tuple[str, str, list[str]] | None:
        """A committed chunk's video, that video's status, and every id the chunk is
        stored under, read through a quorum; ``None`` if no such chunk."""
        res = await self.call("GET", f"/chunk/{chunk_id}/placement?consistency=linearizable")
        if res.status == 404:
            return None
        if res.status != 200:
            raise ProtocolError(f"metadata GET /chunk/placement: {res.status} "
                                f"{res.error_detail()}", res.status)
        return decode_answer(lambda d: (str(d["video_id"]), str(d["video_status"]),
                                        [str(i) for i in d["stored_ids"]]),
                             res.json(), "GET /chunk/placement")

    async def mark_collecting(self, chunk_id: str, stored_id: str, node: str) -> int | None:
        """Mark ``stored_id`` on ``node`` (its id or URL) as about to be deleted, in
        chunk ``chunk_id``'s register; the mark's number, or ``None`` if refused
        (the placement names that copy there)."""
        res = await self.call("POST", f"/chunk/{chunk_id}/collect",
                              {"stored_id": stored_id, "node": node}, retry=True)
        if res.status == 409:
            return None
        if res.status != 200:
            raise ProtocolError(f"metadata POST /chunk/collect: {res.status} "
                                f"{res.error_detail()}", res.status)
        return decode_answer(lambda d: int(d["mark"]), res.json(), "POST /chunk/collect")

    async def finish_collecting(self, chunk_id: str, stored_id: str, node: str,
                                mark: int) -> None:
        """The collector is done with mark ``mark`` (see :meth:`mark_collecting`)."""
        await self.json("POST", f"/chunk/{chunk_id}/collect",
                        {"stored_id": stored_id, "node": node, "finish": mark}, retry=True)

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()
