"""Upload sessions: what a person polling ``/upload/status/{id}`` sees.

A session moves through named stages with a 0-100 progress figure, and ends
``completed`` (with ``total_chunks`` and ``manifest_url``) or ``failed``
(with a human-readable ``error``)::

    queued -> processing -> chunking -> uploading_chunks -> finalizing -> completed
       \\___________\\____________\\______________\\______________\\-> failed

Sessions are JSON files, written atomically and durably (temp file, fsync,
rename, fsync of the directory: :func:`vstack.fsio.write_atomic`), so status
survives a restart of the uploader and a power loss: once :meth:`SessionStore.save`
has returned, the session reads back as saved. Without the directory fsync
a rename may be lost: a session reported ``completed`` could come back
``finalizing`` and be cleaned up as interrupted, and a new session could
vanish. The sessions directory itself is synced into its parent when it is
created.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from . import fsio

__all__ = ["STAGES", "TERMINAL", "Session", "SessionStore"]

STAGES: Final = ("queued", "processing", "chunking", "uploading_chunks", "finalizing",
                 "completed", "failed")
TERMINAL: Final = frozenset({"completed", "failed"})
#: Where each stage starts on the progress scale.
STAGE_PROGRESS: Final = {"queued": 0, "processing": 10, "chunking": 20, "uploading_chunks": 50,
                         "finalizing": 90, "completed": 100}


def _iso(now: float | None = None) -> str:
    t = time.time() if now is None else now
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}+00:00"


@dataclass
class Session:
    session_id: str
    video_id: str
    title: str
    filename: str
    size_bytes: int
    status: str = "queued"
    progress: int = 0
    started_at: str = field(default_factory=_iso)
    updated_at: str = field(default_factory=_iso)
    completed_at: str | None = None
    error: str | None = None
    total_chunks: int | None = None
    chunks_done: int = 0
    manifest_url: str | None = None
    queue_position: int | None = None
    duration_sec: float | None = None
    format: str | None = None
    transcoded: bool | None = None
    redundancy_mode: str | None = None  # how its chunks are stored: replication | erasure_coding
    streamed: bool | None = None  # cut while the upload was still arriving
    ready_chunks: int = 0  # chunks from the first on, every one committed (playable)
    ready_sec: float = 0.0  # the seconds of video those chunks hold
    first_chunk_after_sec: float | None = None  # from the upload's start to chunk 0 committed

    def advance(self, status: str, progress: int | None = None) -> None:
        if status not in STAGES:
            raise ValueError(f"unknown stage {status}")
        if self.status in TERMINAL:
            return
        self.status = status
        base = STAGE_PROGRESS.get(status, self.progress)
        self.progress = max(self.progress, base if progress is None else progress)
        self.updated_at = _iso()
        if status != "queued":
            self.queue_position = None
        if status == "completed":
            self.completed_at = self.updated_at

    def fail(self, error: str) -> None:
        if self.status in TERMINAL:
            return
        self.status = "failed"
        self.error = error
        self.queue_position = None
        self.updated_at = self.completed_at = _iso()

    def public(self) -> dict[str, Any]:
        """The status object: the guide's fields first, details after."""
        out = asdict(self)
        out["upload_session_id"] = out.pop("session_id")
        return {k: v for k, v in out.items() if v is not None or k in ("error",)}


_FIELDS: Final = frozenset(f.name for f in fields(Session))


class SessionStore:
    """Sessions as one JSON file each under ``root``."""

    def __init__(self, root: Path) -> None:
        """Blocking: creates ``root`` (durably) if it does not exist."""
        self.root = root
        fsio.makedirs(root)

    def path(self, session_id: str) -> Path:
        return self.root / f"{session_id}.json"

    def save(self, session: Session) -> None:
        """Blocking: write atomically and durably."""
        fsio.write_atomic(self.path(session.session_id), json.dumps(asdict(session)).encode())

    def load(self, session_id: str) -> Session | None:
        """Blocking: the saved session, or ``None`` if it is missing or unreadable.

        Fields this version does not know are ignored; a file that lacks a
        required one (or is not a session at all) counts as unreadable, so
        one bad file cannot stop the uploader from starting.
        """
        try:
            data = json.loads(self.path(session_id).read_text())
            if not isinstance(data, dict):
                return None
            return Session(**{k: v for k, v in data.items() if k in _FIELDS})
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[Session]:
        out = []
        for p in sorted(self.root.glob("*.json")):
            s = self.load(p.stem)
            if s is not None:
                out.append(s)
        return out
