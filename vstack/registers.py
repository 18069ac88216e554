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
                               timing, replica URLs or fragments; the
                               garbage collector's marks (``collect``)
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from protocol.api import ChunkCommit, Fragment

from .paxos import ChangeRejected, Value

__all__ = [
    "KINDS",
    "Change",
    "MarksSeen",
    "RegisterKey",
    "chunk_key",
    "commit_chunk",
    "finish_collecting",
    "idempotent_video_id",
    "mark_collecting",
    "marks_seen",
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


def set_video_status(status: str, duration_sec: int | None = None) -> Change:
    """Move a video to ``status`` (and set its length, if given); 404 if it does not
    exist (or was deleted)."""

    def change(cur: Value | None) -> Value:
        video = {**_existing_video(cur), "status": status}
        if duration_sec is not None:
            video["duration_sec"] = duration_sec
        return video

    return change


def remove_video(cur: Value | None) -> Value:
    """Mark a video removed (its tables rows and chunks go); 404 if there is none."""
    return {**_existing_video(cur), "removed": True, "status": "deleted"}


# -- chunks ------------------------------------------------------------------------------


def commit_chunk(chunk_id: str, commit: ChunkCommit, *, nodes: list[str],
                 fragments: list[Fragment], created_at: str, committed_ns: int,
                 seen: MarksSeen | None = None,
                 identity: Callable[[str], str] = lambda name: name) -> Change:
    """Record where a chunk lives: the verified ``nodes`` (or ``fragments``).

    ``committed_ns`` orders commits of different chunk ids at the same
    (video, sequence): the newest is the one manifests list. Refused (409) if
    the garbage collector may have deleted a copy it names after the commit's
    check began (:func:`mark_collecting`; ``seen``: the marks known before the
    check, ``identity``: one name per node); the writer stores it again and
    retries. The collector's marks are kept.
    """
    value: Value = {
        "chunk_id": chunk_id, "video_id": commit.video_id, "sequence_num": commit.sequence_num,
        "size_bytes": commit.size_bytes, "checksum": commit.checksum,
        "redundancy_mode": commit.redundancy_mode, "duration_sec": commit.duration_sec,
        "start_sec": commit.start_sec, "replicas": [] if fragments else nodes,
        "fragments": [dict(f.to_json(), status="active") for f in fragments] or None,
        "created_at": created_at, "committed_ns": committed_ns,
    }
    named = ({_pair(identity(f.node_url), f.fragment_id) for f in fragments} if fragments
             else {_pair(identity(u), chunk_id) for u in nodes})

    def replace(cur: Value | None) -> Value:
        _refuse_collected(cur, named, seen or MarksSeen(0, frozenset()), committed_ns)
        kept = {"collect": cur["collect"]} if cur is not None and "collect" in cur else {}
        if not commit.replacement:
            return {**value, **kept}
        if cur is None or cur.get("checksum") != commit.checksum \
                or cur.get("size_bytes") != commit.size_bytes \
                or cur.get("video_id") != commit.video_id \
                or cur.get("sequence_num") != commit.sequence_num:
            raise ChangeRejected(f"chunk {chunk_id} is not committed with these bytes: "
                                 "nothing to re-place", 409)
        return {**value, **kept, "created_at": cur.get("created_at", created_at),
                "committed_ns": cur.get("committed_ns", committed_ns)}

    return replace


# -- the garbage collector's marks -----------------------------------------------------------
#
# The collector deletes a copy (a stored id on a node) that no placement names
# there. A commit checks the nodes *before* its round is decided, so a copy can
# be deleted between a commit's check and its decision. Both therefore go
# through the chunk's register (decisions on one register are totally ordered):
#
# * the collector first decides a *mark* on (node, stored id): refused if the
#   placement names that copy on that node (its video not deleted). Each mark
#   has a number (one counter per register), is *open* until the collector
#   decides it finished (or until ``until_ns``, MARK_TTL_NS after it was made:
#   a collector that died), and the collector deletes only while the mark is
#   open (it stops trying well before the TTL);
# * a commit reads the register's marks as this replica learned them (maybe
#   stale, never ahead) *before* it checks the nodes: the highest number and the
#   open marks (:func:`marks_seen`). Its decision is refused if a copy it names
#   has a mark that was open then, is open now, or is newer than that number.
#
# Why no committed copy is deleted: the commit names copy P, the collector deletes
# P at time d. If the commit is decided before P's mark, the mark is refused and
# there is no delete. Otherwise the mark precedes the commit's decision: if the
# mark is open at the decision, refused; if it was made after the commit's read,
# its number is newer, refused; if it was made before and open at the read,
# refused; else it was finished (or expired) before the read, so the delete d
# happened before the commit checked the nodes, and the check saw whether P
# was there (stored again after the delete) or not. A stale read only makes the
# commit refuse more. Marks are kept per (node, stored id), so a register holds
# a bounded number (a chunk's copies, times the nodes).

#: How long a mark stays open if the collector never finishes it.
MARK_TTL_NS: Final = 300 * 10**9


@dataclass(frozen=True, slots=True)
class MarksSeen:
    """The marks a commit saw before it checked the nodes."""

    number: int  # the highest mark number then
    open: frozenset[str]  # the (node, stored id) pairs marked open then


def _pair(node: str, stored_id: str) -> str:
    return f"{node} {stored_id}"


def _marks(cur: Value | None) -> tuple[int, dict[str, Value]]:
    collect = (cur or {}).get("collect") or {}
    return int(collect.get("n", 0)), dict(collect.get("marks") or {})


def _is_open(mark: Value, now_ns: int) -> bool:
    return bool(mark.get("open")) and now_ns < int(mark.get("until_ns", 0))


def marks_seen(cur: Value | None, now_ns: int) -> MarksSeen:
    """What a commit about to check the nodes must remember (``cur``: the learned value)."""
    number, marks = _marks(cur)
    return MarksSeen(number, frozenset(k for k, m in marks.items() if _is_open(m, now_ns)))


def _refuse_collected(cur: Value | None, named: Iterable[str], seen: MarksSeen,
                      now_ns: int) -> None:
    _, marks = _marks(cur)
    for key in named:
        mark = marks.get(key)
        if mark is not None and (key in seen.open or int(mark["n"]) > seen.number
                                 or _is_open(mark, now_ns)):
            raise ChangeRejected(
                f"copy {key.split(' ', 1)[1]} on {key.split(' ', 1)[0]} may have been deleted "
                "by the garbage collector while this commit checked it: store it again and "
                "retry the commit", 409)


def mark_collecting(stored_id: str, node: str, *, identity: Callable[[str], str],
                    removed_video: str | None, now_ns: int) -> Change:
    """The collector is about to delete ``stored_id`` from ``node`` (one identity):
    refused (409) if the placement names that copy there, unless its video is
    ``removed_video`` (deleted: nothing of it is kept)."""
    key = _pair(node, stored_id)

    def mark(cur: Value | None) -> Value:
        live = cur is not None and "video_id" in cur and cur["video_id"] != removed_video
        if live and cur is not None:
            named = {_pair(identity(u), str(cur["chunk_id"])) for u in cur.get("replicas") or []}
            named |= {_pair(identity(str(f["node_url"])), str(f["fragment_id"]))
                      for f in cur.get("fragments") or []}
            if key in named:
                raise ChangeRejected(f"{stored_id} on {node} is referenced", 409)
        number, marks = _marks(cur)
        marks[key] = {"n": number + 1, "open": True, "until_ns": now_ns + MARK_TTL_NS}
        return {**(cur or {}), "collect": {"n": number + 1, "marks": marks}}

    return mark


def finish_collecting(stored_id: str, node: str, number: int) -> Change:
    """The collector is done with mark ``number`` (deleted, or gave up)."""
    key = _pair(node, stored_id)

    def finish(cur: Value | None) -> Value | None:
        number_now, marks = _marks(cur)
        mark = marks.get(key)
        if cur is None or mark is None or mark["n"] != number or not mark.get("open"):
            return None
        marks[key] = {**mark, "open": False}
        return {**cur, "collect": {"n": number_now, "marks": marks}}

    return finish


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
