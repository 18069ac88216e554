"""Messages between V-Stack services: frozen dataclasses with one parser each.

Every JSON body that crosses a service boundary (uploader -> metadata,
storage node -> metadata, metadata -> storage node, client -> metadata) is
one of the classes below. ``from_json`` is the only place its fields are
checked; ``to_json`` the only place it is spelled out. A receiver never
handles a ``dict[str, Any]``.

Two directions, two kinds of failure:

* a *request* a server receives (:meth:`VideoCreate.from_json`, ...) that
  breaks the rules raises :class:`~protocol.validate.ValidationError` (422,
  the problem list FastAPI clients parse) or a 400 where the contract says so;
* an *answer* a client receives that breaks them (:func:`decode_answer`)
  raises :class:`~protocol.errors.RemoteProtocolError` (502): the peer is
  broken, not the caller.

The identifiers every service shares live here too, beside the rules they
follow: :data:`CHUNK_ID_RE` and :func:`chunk_id`, :func:`parse_sha256`.
Messages about storage nodes (registration, heartbeats, health) are in
:mod:`protocol.node_api`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from .errors import ProtocolError, RemoteProtocolError
from .validate import ValidationError, Validator

__all__ = [
    "CHUNK_ID_RE",
    "REDUNDANCY_MODES",
    "VIDEO_STATUSES",
    "ChunkCommit",
    "CommitResult",
    "Fragment",
    "Manifest",
    "ManifestChunk",
    "Recommendation",
    "StatusChange",
    "VideoCreate",
    "VideoCreated",
    "chunk_id",
    "decode_answer",
    "format_sha256",
    "json_object",
    "parse_sha256",
    "shard_id",
]

#: The chunk-id rule of the contract; nothing outside it ever reaches a store.
CHUNK_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
VIDEO_STATUSES: Final = ("uploading", "active", "deleted")
REDUNDANCY_MODES: Final = ("replication", "erasure_coding")
MAX_TITLE: Final = 255
MAX_NODE_ID: Final = 128
MAX_URL: Final = 2048
MAX_VIDEO_ID: Final = 128
#: Bounds of what one chunk commit may record (far above any real chunk; they keep
#: every value a column and a consensus message can hold).
MAX_CHUNK_BYTES: Final = 1 << 31
MAX_SEQUENCE: Final = 1_000_000
MAX_SECONDS: Final = 30 * 24 * 3600.0
MAX_COPIES: Final = 32

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}\Z")
_SHA256_RULE = "a SHA-256: 64 hex digits, optionally prefixed 'sha256:'"


def chunk_id(video_id: str, sequence_num: int) -> str:
    """The id of chunk ``sequence_num`` of ``video_id``: ``<video_id>-chunk-NNN``.

    Raises:
        ValueError: the result would break :data:`CHUNK_ID_RE`.
    """
    cid = f"{video_id}-chunk-{sequence_num:03d}"
    if sequence_num < 0 or not CHUNK_ID_RE.match(cid):
        raise ValueError(f"no valid chunk id for video {video_id!r}, chunk {sequence_num}")
    return cid


def shard_id(chunk_id: str, index: int) -> str:
    """The id erasure-coded shard ``index`` of ``chunk_id`` is stored under: ``<chunk_id>-sN``.

    Raises:
        ValueError: the result would break :data:`CHUNK_ID_RE`.
    """
    sid = f"{chunk_id}-s{index}"
    if index < 0 or not CHUNK_ID_RE.match(sid):
        raise ValueError(f"no valid shard id for chunk {chunk_id!r}, shard {index}")
    return sid


def parse_sha256(value: object) -> str:
    """A SHA-256 written as bare hex or ``sha256:<hex>`` (any case, quotes
    allowed as in an ETag), as 64 lowercase hex digits.

    Raises:
        ProtocolError: 400, not a SHA-256.
    """
    if isinstance(value, str):
        v = value.strip().strip('"')
        if v[:7].lower() == "sha256:":
            v = v[7:]
        if _HEX64.match(v):
            return v.lower()
    raise ProtocolError(f"Checksum must be {_SHA256_RULE}", 400)


def format_sha256(hex_digest: str) -> str:
    """How manifests write a checksum: ``sha256:<hex>``."""
    return f"sha256:{hex_digest}"


def _checksum(v: Validator, name: str, raw: Any, where: list[Any] | None = None) -> str | None:
    """Read a SHA-256 field into ``v``'s problems (422) rather than a 400."""
    if raw is None:
        v.problems.append({"type": "missing", "loc": where or [v.where, name],
                           "msg": "Field required", "input": None})
        return None
    try:
        return parse_sha256(raw)
    except ProtocolError:
        v.problems.append({"type": "string_pattern_mismatch", "loc": where or [v.where, name],
                           "msg": f"checksum must be {_SHA256_RULE}", "input": raw})
        return None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


T = TypeVar("T")


def decode_answer(parse: Callable[[Any], T], data: Any, what: str) -> T:
    """``parse(data)`` for an answer from a peer; a malformed one is a 502.

    Args:
        parse: a ``from_json`` (or any function raising ProtocolError,
            ValueError, TypeError or KeyError on bad input).
        data: the decoded JSON.
        what: names the answer in the error, e.g. ``"GET /manifest"``.
    """
    try:
        return parse(data)
    except (ProtocolError, ValueError, TypeError, KeyError, AttributeError) as exc:
        detail = exc.msg if isinstance(exc, ProtocolError) else repr(exc)
        raise RemoteProtocolError(f"malformed answer to {what}: {detail}", 502) from None


def json_object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValidationError([{"type": "model_type", "loc": ["body"],
                                "msg": "body must be a JSON object", "input": None}])
    return data


# -- videos -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class VideoCreate:
    """``POST /video``: a new video record, before its chunks."""

    title: str
    duration_sec: int

    @classmethod
    def from_json(cls, data: Any) -> VideoCreate:
        v = Validator(dict(json_object(data)))
        title = v.string("title", min_len=1, max_len=MAX_TITLE)
        duration = v.integer("duration_sec", gt=0, le=int(MAX_SECONDS))
        v.done()
        return cls(title=title, duration_sec=duration)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "duration_sec": self.duration_sec}


@dataclass(frozen=True, kw_only=True, slots=True)
class VideoCreated:
    video_id: str
    upload_url: str

    @classmethod
    def from_json(cls, data: Any) -> VideoCreated:
        return cls(video_id=str(data["video_id"]), upload_url=str(data.get("upload_url", "")))

    def to_json(self) -> dict[str, Any]:
        return {"video_id": self.video_id, "upload_url": self.upload_url}


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusChange:
    """``PATCH /video/{id}/status``."""

    status: str
    #: The video's length, once it is known (an upload cut while it arrived was
    #: created with an estimate); optional, so existing clients send only ``status``.
    duration_sec: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> StatusChange:
        obj = json_object(data)
        status = obj.get("status")
        if status not in VIDEO_STATUSES:
            raise ProtocolError(f"Invalid status. Must be one of: {', '.join(VIDEO_STATUSES)}", 400)
        duration = None
        if obj.get("duration_sec") is not None:
            v = Validator({"duration_sec": obj["duration_sec"]})
            duration = v.integer("duration_sec", gt=0, le=int(MAX_SECONDS))
            v.done()
        return cls(status=status, duration_sec=duration)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.duration_sec is not None:
            out["duration_sec"] = self.duration_sec
        return out


# -- chunks -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Fragment:
    """One erasure-coded shard of a chunk, as committed and as manifests list it."""

    fragment_id: str
    fragment_index: int
    node_url: str
    size_bytes: int
    checksum: str  # lowercase hex

    @classmethod
    def from_json(cls, data: Any) -> Fragment:
        if not isinstance(data, Mapping):
            raise ProtocolError("a fragment must be an object", 400)
        fid, index, url, size = (data["fragment_id"], data["fragment_index"], data["node_url"],
                                 data["size_bytes"])
        if not isinstance(fid, str) or not CHUNK_ID_RE.match(fid):
            raise ValueError("fragment_id must follow the chunk-id rule")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_COPIES:
            raise ValueError(f"fragment_index must be an integer in [0, {MAX_COPIES})")
        if not isinstance(url, str) or not 0 < len(url) <= MAX_URL:
            raise ValueError("node_url must be a non-empty string")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_CHUNK_BYTES:
            raise ValueError("size_bytes out of range")
        return cls(fragment_id=fid, fragment_index=index, node_url=url, size_bytes=size,
                   checksum=parse_sha256(data["checksum"]))

    def to_json(self) -> dict[str, Any]:
        return {"fragment_id": self.fragment_id, "fragment_index": self.fragment_index,
                "node_url": self.node_url, "size_bytes": self.size_bytes,
                "checksum": self.checksum}


_FRAGMENT_FIELDS = frozenset({"fragment_id", "fragment_index", "node_url", "size_bytes", "checksum"})


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkCommit:
    """``POST /chunk/{id}/commit``: these nodes hold this chunk; record it."""

    node_urls: tuple[str, ...]
    checksum: str  # lowercase hex
    size_bytes: int
    video_id: str
    sequence_num: int
    redundancy_mode: str = "replication"
    duration_sec: float | None = None
    start_sec: float | None = None
    fragments: tuple[Fragment, ...] | None = None
    #: A new placement of a chunk already committed (repair, migration): refused
    #: (409) unless that chunk is there with these bytes, and its place among the
    #: video's chunks is kept, so a stale re-placement never brings back a chunk
    #: that a newer commit replaced.
    replacement: bool = False

    @classmethod
    def from_json(cls, data: Any) -> ChunkCommit:
        body = dict(json_object(data))
        v = Validator(body)
        replacement = body.get("replacement", False)
        if not isinstance(replacement, bool):
            v.problems.append({"type": "bool_type", "loc": ["body", "replacement"],
                               "msg": "Input should be a valid boolean", "input": replacement})
        urls = v.array("node_urls", min_len=1)
        checksum = _checksum(v, "checksum", body.get("checksum"))
        size = v.integer("size_bytes", gt=0, le=MAX_CHUNK_BYTES)
        video_id = v.string("video_id", min_len=1, max_len=MAX_VIDEO_ID)
        seq = v.integer("sequence_num", ge=0, le=MAX_SEQUENCE)
        mode = v.choice("redundancy_mode", REDUNDANCY_MODES, required=False, default="replication")
        duration = v.number("duration_sec", required=False, ge=0, le=MAX_SECONDS)
        start = v.number("start_sec", required=False, ge=0, le=MAX_SECONDS)
        if urls is not None and (len(urls) > MAX_COPIES or not all(
                isinstance(u, str) and 0 < len(u) <= MAX_URL for u in urls)):
            v.problems.append({"type": "string_type", "loc": ["body", "node_urls"],
                               "msg": f"node_urls must be 1-{MAX_COPIES} non-empty strings of "
                                      f"at most {MAX_URL} characters", "input": None})
        raw_frags = body.get("fragments_metadata")
        fragments: tuple[Fragment, ...] | None = None
        if raw_frags is not None:
            try:
                if not isinstance(raw_frags, list) or len(raw_frags) > MAX_COPIES or not all(
                        isinstance(f, Mapping) and f.keys() >= _FRAGMENT_FIELDS for f in raw_frags):
                    raise ValueError
                fragments = tuple(Fragment.from_json(f) for f in raw_frags)
            except (ProtocolError, ValueError, TypeError):
                v.problems.append({"type": "list_type", "loc": ["body", "fragments_metadata"],
                                   "msg": "fragments_metadata must be a list of fragment objects",
                                   "input": raw_frags})
        v.done()
        assert checksum is not None
        return cls(node_urls=tuple(urls), checksum=checksum, size_bytes=size, video_id=video_id,
                   sequence_num=seq, redundancy_mode=mode, duration_sec=_opt_float(duration),
                   start_sec=_opt_float(start), fragments=fragments or None,
                   replacement=replacement is True)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node_urls": list(self.node_urls), "checksum": self.checksum,
            "size_bytes": self.size_bytes, "video_id": self.video_id,
            "sequence_num": self.sequence_num, "redundancy_mode": self.redundancy_mode,
            "duration_sec": self.duration_sec, "start_sec": self.start_sec,
        }
        if self.fragments:
            out["fragments_metadata"] = [f.to_json() for f in self.fragments]
        if self.replacement:
            out["replacement"] = True
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class CommitResult:
    """The answer to a commit: ``success`` false when the nodes' copies did not check out."""

    success: bool
    committed_nodes: tuple[str, ...]
    message: str

    @classmethod
    def from_json(cls, data: Any) -> CommitResult:
        nodes = data.get("committed_nodes") or []
        if not isinstance(nodes, list):
            raise ValueError("committed_nodes must be a list")
        return cls(success=data["success"] is True, committed_nodes=tuple(map(str, nodes)),
                   message=str(data.get("message", "")))

    def to_json(self) -> dict[str, Any]:
        return {"success": self.success, "committed_nodes": list(self.committed_nodes),
                "message": self.message}


@dataclass(frozen=True, kw_only=True, slots=True)
class ManifestChunk:
    chunk_id: str
    sequence_num: int
    size_bytes: int
    checksum: str  # lowercase hex; the wire form is ``sha256:<hex>``
    redundancy_mode: str
    duration_sec: float | None
    start_sec: float | None
    replicas: tuple[str, ...]
    fragments: tuple[Fragment, ...] | None

    @classmethod
    def from_json(cls, data: Any) -> ManifestChunk:
        frags = data.get("fragments")
        return cls(chunk_id=str(data["chunk_id"]), sequence_num=int(data["sequence_num"]),
                   size_bytes=int(data["size_bytes"]), checksum=parse_sha256(data["checksum"]),
                   redundancy_mode=str(data.get("redundancy_mode", "replication")),
                   duration_sec=_opt_float(data.get("duration_sec")),
                   start_sec=_opt_float(data.get("start_sec")),
                   replicas=tuple(str(u) for u in data.get("replicas") or []),
                   fragments=tuple(Fragment.from_json(f) for f in frags) if frags else None)

    def to_json(self) -> dict[str, Any]:
        return {"chunk_id": self.chunk_id, "sequence_num": self.sequence_num,
                "size_bytes": self.size_bytes, "checksum": format_sha256(self.checksum),
                "redundancy_mode": self.redundancy_mode, "duration_sec": self.duration_sec,
                "start_sec": self.start_sec, "replicas": list(self.replicas),
                "fragments": [f.to_json() for f in self.fragments] if self.fragments else None}


@dataclass(frozen=True, kw_only=True, slots=True)
class Manifest:
    """``GET /manifest/{id}``: a video and where each of its chunks lives."""

    video_id: str
    title: str
    duration_sec: int
    total_chunks: int
    chunk_size_bytes: int
    created_at: str
    status: str
    chunk_duration_sec: int
    chunks: tuple[ManifestChunk, ...]

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        chunks = data["chunks"]
        if not isinstance(chunks, list):
            raise ValueError("chunks must be a list")
        return cls(video_id=str(data["video_id"]), title=str(data["title"]),
                   duration_sec=int(data["duration_sec"]), total_chunks=int(data["total_chunks"]),
                   chunk_size_bytes=int(data["chunk_size_bytes"]),
                   created_at=str(data["created_at"]), status=str(data["status"]),
                   chunk_duration_sec=int(data.get("chunk_duration_sec", 10)),
                   chunks=tuple(sorted((ManifestChunk.from_json(c) for c in chunks),
                                       key=lambda c: c.sequence_num)))

    def to_json(self) -> dict[str, Any]:
        return {"video_id": self.video_id, "title": self.title, "duration_sec": self.duration_sec,
                "total_chunks": self.total_chunks, "chunk_size_bytes": self.chunk_size_bytes,
                "created_at": self.created_at, "status": self.status,
                "chunk_duration_sec": self.chunk_duration_sec,
                "chunks": [c.to_json() for c in self.chunks]}


@dataclass(frozen=True, kw_only=True, slots=True)
class Recommendation:
    """``GET /redundancy/recommend/{id}``: the mode a video should be stored in."""

    video_id: str
    view_count: int
    recommended_mode: str
    override: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Recommendation:
        mode, forced = data["recommended_mode"], data.get("override")
        if mode not in REDUNDANCY_MODES or (forced is not None and forced not in REDUNDANCY_MODES):
            raise ValueError(f"unknown redundancy mode {mode!r}")
        views = data["view_count"]
        if isinstance(views, bool) or not isinstance(views, int) or views < 0:
            raise ValueError("view_count must be a non-negative integer")
        return cls(video_id=str(data["video_id"]), view_count=views, recommended_mode=mode,
                   override=forced)
