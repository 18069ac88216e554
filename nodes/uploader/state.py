"""What the uploader's handlers and uploads share: one :class:`Uploader` per service.

It holds the settings and the clients (metadata service, storage pool), the
sessions (one per upload, on disk so status survives a restart), the queue
of uploads waiting for a processing slot, and what every upload knows about
the storage nodes (:class:`~nodes.uploader.placer.NodeTracker`). It does no
work of its own: uploads are :class:`~nodes.uploader.job.UploadJob`\\ s,
started in :attr:`Uploader.nursery`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from nodes.net.metadata_client import MetadataClient
from nodes.net.storage_client import StoragePool
from vstack import fsio
from vstack.settings import UploaderSettings
from vstack.upload_session import Session, SessionStore

from .placer import NodeTracker

__all__ = ["UploadQueue", "Uploader"]


class UploadQueue:
    """Uploads wait here, in arrival order, for one of ``slots`` processing slots.

    Each waiting session's ``queue_position`` (1 = next) is kept up to date.
    """

    def __init__(self, slots: int) -> None:
        self._slots = trio.Semaphore(slots)  # trio's semaphore wakes waiters first-in first-out
        self._waiting: list[Session] = []
        self.active = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def free(self) -> bool:
        """A slot is free now, and nobody waits for one."""
        return self._slots.value > 0 and not self._waiting

    def enter(self, session: Session) -> None:
        self._waiting.append(session)
        self._renumber()

    @asynccontextmanager
    async def slot(self, session: Session) -> AsyncIterator[None]:
        """Wait for a slot (the session leaves the queue) and hold it for the block."""
        try:
            async with self._slots:
                self.leave(session)
                self.active += 1
                try:
                    yield
                finally:
                    self.active -= 1
        finally:
            self.leave(session)  # also when cancelled while waiting

    def leave(self, session: Session) -> None:
        """Take ``session`` out of the queue (if it is still waiting)."""
        rest = [s for s in self._waiting if s is not session]
        if len(rest) != len(self._waiting):
            self._waiting = rest
            self._renumber()

    def _renumber(self) -> None:
        for i, s in enumerate(self._waiting):
            s.queue_position = i + 1


class Uploader:
    """The uploader's shared state; build it with :meth:`open`."""

    def __init__(self, settings: UploaderSettings, metadata: MetadataClient, pool: StoragePool,
                 nursery: trio.Nursery, *, ffmpeg: str, store: SessionStore,
                 sessions: list[Session]) -> None:
        self.settings = settings
        self.metadata = metadata
        self.pool = pool
        self.nursery = nursery
        self.ffmpeg = ffmpeg
        self.incoming: Path = settings.temp_dir / "incoming"
        self.work: Path = settings.temp_dir / "work"
        self.store = store
        self.sessions: dict[str, Session] = {s.session_id: s for s in sessions}
        self.queue = UploadQueue(settings.max_concurrent_uploads)
        # Uploads cut while they arrive hold slots of their own, for as long as
        # the upload takes: a slow client can never hold one that a received
        # upload waits for (one that finds none free is received whole first).
        self.live = UploadQueue(settings.max_concurrent_uploads)
        self.nodes = NodeTracker()
        self.port = 0

    @classmethod
    async def open(cls, settings: UploaderSettings, metadata: MetadataClient, pool: StoragePool,
                   nursery: trio.Nursery, *, ffmpeg: str) -> Uploader:
        """Create the temporary directories and load the saved sessions (in a thread)."""

        def prepare() -> tuple[SessionStore, list[Session]]:
            for d in ("incoming", "work"):
                fsio.makedirs(settings.temp_dir / d)
            store = SessionStore(settings.temp_dir / "sessions")  # synced into TEMP_DIR if new
            return store, store.all()

        store, sessions = await trio.to_thread.run_sync(prepare)
        return cls(settings, metadata, pool, nursery, ffmpeg=ffmpeg, store=store,
                   sessions=sessions)

    def upload_path(self, session_id: str) -> Path:
        """Where the session's file is received."""
        return self.incoming / f"{session_id}.upload"

    def work_dir(self, session_id: str) -> Path:
        """Where FFmpeg writes the session's segments."""
        return self.work / session_id

    async def save(self, session: Session) -> None:
        """Save ``session`` durably (file and directory entry fsynced)."""
        await trio.to_thread.run_sync(self.store.save, session)

    async def save_then_show(self, session: Session, change: Callable[[Session], None]) -> None:
        """Apply ``change`` to a copy of ``session``, save that, and only then to ``session``.

        What ``/upload/status`` shows never runs ahead of the disk: a stage a
        poller has seen (``completed`` above all) is the one a restart finds.
        If the save fails, ``session`` is left as it was and the error raised.
        """
        ahead = dataclasses.replace(session)
        change(ahead)
        await self.save(ahead)
        vars(session).update(vars(ahead))

    @property
    def failed_nodes(self) -> set[str]:
        """Nodes that failed a write recently (shown in /health)."""
        return self.nodes.banned()

    def health(self) -> dict[str, Any]:
        return {"status": "healthy", "service": "uploader-service",
                "active_uploads": self.queue.active, "queued_uploads": self.queue.waiting,
                "max_concurrent_uploads": self.settings.max_concurrent_uploads,
                "failed_nodes": sorted(self.failed_nodes), "ffmpeg": self.ffmpeg}
