"""The metadata service's registers: their keys and the pure changes applied to them.

Every decision of the metadata service is the value of a *register* named by
a key (see :mod:`vstack.paxos`). This module is the one place that spells
the keys and says how each request changes a register's value:

=============================  ==========================================
key                            value
=============================  ==========================================
``video/<video_id>``           title, duration, status, creation time;
                               ``removed`` once deleted
``chunk/<chunk_id>``           video, sequence, size, SHA-256, mode,
                               timing, replica URLs or fragments
``override/<video_id>``        ``{"mode": mode | None}``
``node/<node_id>``             URL, liveness verdict, version, since
=============================  ==========================================

A *change* is a function ``current value (or None) -> new value`` (``None``
for "leave it"), run by the proposer on the value a quorum holds. It may
raise :class:`~vstack.paxos.ChangeRejected`, which the caller answers with
its status. Changes are pure: time and ids come in as arguments.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from protocol.api import ChunkCommit, Fragment

from .paxos import ChangeRejected, Value

__all__ = [
    "KINDS",
    "Change",
    "RegisterKey",
    "chunk_key",
    "commit_chunk",
    "idempotent_video_id",
    "new_video",
    "node_key",
    "override_key",
    "parse_key",
    "register_node",
    "remove_video",
    "request_fingerprint",
    "set_liveness",
    "set_override",
    "set_video_status",
    "video_key",
]

Change = Callable[[Value | None], Value | None]
KINDS: Final = ("video", "chunk", "override", "node")
DEFAULT_CHUNK_SIZE: Final = 2 * 1024 * 1024
_IDEMPOTENT_NAMESPACE: Final = uuid.UUID("6f1c2a1e-9f3b-4d51-a7f0-5b2f0c7d4e11")


def video_key(video_id: str) -> str:
    return f"video/{video_id}"


def chunk_key(chunk_id: str) -> str:
    return f"chunk/{chunk_id}"


def override_key(video_id: str) -> str:
    return f"override/{video_id}"


def node_key(node_id: str) -> str:
    return f"node/{node_id}"


@dataclass(frozen=True, slots=True)
class RegisterKey:
    kind: str
    ident: str


def parse_key(key: str) -> RegisterKey:
    """Split ``kind/ident``.

    Raises:
        ValueError: an unknown kind or an empty ident.
    """
    kind, sep, ident = key.partition("/")
    if not sep or kind not in KINDS or not ident:
        raise ValueError(f"not a register key: {key!r}")
    return RegisterKey(kind, ident)


# -- videos ------------------------------------------------------------------------------


def idempotent_video_id(idempotency_key: str) -> str:
    """The video id a keyed create uses: the same for every retry, on every replica."""
    return str(uuid.uuid5(_IDEMPOTENT_NAMESPACE, idempotency_key))


def request_fingerprint(*fields: object) -> str:
    """What a retry must repeat to count as the same request."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def new_video(video_id: str, title: str, duration_sec: int, *, created_at: str,
              created_ns: int, fingerprint: str | None = None) -> Change:
    """Create a video record; refused (409) if the id is taken.

    A keyed create (``fingerprint`` set: the id came from an Idempotency-Key)
    that finds its own earlier attempt leaves it as it is: the retry gets the
    first decision. The same key with another request is refused (422).
    """

    def create(cur: Value | None) -> Value | None:
        if cur is not None:
            if fingerprint is None or cur.get("request") is None:
                raise ChangeRejected("video id already in use", 409)
            if cur["request"] != fingerprint:
                raise ChangeRejected("Idempotency-Key reused with a different request", 422)
            if cur.get("removed"):
                raise ChangeRejected("this video was created, then deleted", 409)
            return None  # the first attempt took effect: keep it
        value: Value = {"video_id": video_id, "title": title, "duration_sec": duration_sec,
                        "status": "uploading", "created_at": created_at,
                        "created_ns": created_ns, "chunk_size_bytes": DEFAULT_CHUNK_SIZE}
        if fingerprint is not None:
            value["request"] = fingerprint
        return value

    return create


def _existing_video(cur: Value | None) -> Value:
    if cur is None or cur.get("removed"):
        raise ChangeRejected("Video not found", 404)
    return cur


def set_video_status(status: str) -> Change:
    """Move a video to ``status``; 404 if it does not exist (or was deleted)."""

    def change(cur: Value | None) -> Value:
        return {**_existing_video(cur), "status": status}

    return change


def remove_video(cur: Value | None) -> Value:
    """Mark a video removed (its tables rows and chunks go); 404 if there is none."""
    return {**_existing_video(cur), "removed": True, "status": "deleted"}


# -- chunks ------------------------------------------------------------------------------


def commit_chunk(chunk_id: str, commit: ChunkCommit, *, nodes: list[str],
                 fragments: list[Fragment], created_at: str, committed_ns: int) -> Change:
    """Record where a chunk lives: the verified ``nodes`` (or ``fragments``).

    ``committed_ns`` orders commits of different chunk ids at the same
    (video, sequence): the newest is the one manifests list.
    """
    value: Value = {
        "chunk_id": chunk_id, "video_id": commit.video_id, "sequence_num": commit.sequence_num,
        "size_bytes": commit.size_bytes, "checksum": commit.checksum,
        "redundancy_mode": commit.redundancy_mode, "duration_sec": commit.duration_sec,
        "start_sec": commit.start_sec, "replicas": [] if fragments else nodes,
        "fragments": [dict(f.to_json(), status="active") for f in fragments] or None,
        "created_at": created_at, "committed_ns": committed_ns,
    }
    if not commit.replacement:
        return lambda cur: value

    def replace(cur: Value | None) -> Value:
        if cur is None or cur.get("checksum") != commit.checksum \
                or cur.get("size_bytes") != commit.size_bytes \
                or cur.get("video_id") != commit.video_id \
                or cur.get("sequence_num") != commit.sequence_num:
            raise ChangeRejected(f"chunk {chunk_id} is not committed with these bytes: "
                                 "nothing to re-place", 409)
        return {**value, "created_at": cur.get("created_at", created_at),
                "committed_ns": cur.get("committed_ns", committed_ns)}

    return replace


# -- redundancy overrides ------------------------------------------------------------------


def set_override(mode: str | None) -> Change:
    """Force a redundancy mode for a video (``None`` clears the override)."""
    return lambda cur: {"mode": mode}


# -- storage nodes ---------------------------------------------------------------------------


def register_node(node_url: str, node_id: str, version: str, *, since: str,
                  key_sha256: str | None = None) -> Change:
    """A node (re)registers at ``node_url``: healthy from now on.

    A node id is bound to the key (its digest) of the first registration that
    named one: a registration without that key is refused (409), so no one
    can re-point a node's id at another server.
    """

    def claim(cur: Value | None) -> Value:
        bound = cur.get("key_sha256") if cur is not None else None
        if bound is not None and bound != key_sha256:
            raise ChangeRejected(f"node id {node_id} is registered by another node "
                                 "(its node key differs)", 409)
        return {"node_url": node_url, "node_id": node_id, "status": "healthy",
                "version": version, "since": since, "key_sha256": key_sha256 or bound}

    return claim


def set_liveness(status: str, *, since: str) -> Change:
    """Record a liveness verdict; no change if the node is unknown or already so."""

    def verdict(cur: Value | None) -> Value | None:
        if cur is None or cur.get("status") == status:
            return None
        return {**cur, "status": status, "since": since}

    return verdict
