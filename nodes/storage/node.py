"""The storage node: one trio process serving a superblock store.

:class:`StorageNode` holds the store and implements the operations both wire
protocols share (put, read, delete, stat) plus the write pipeline: every
write is ``pwritev``'d in a worker thread, then a single committer task
fsyncs whatever finished since its last round (group commit) and publishes
it to the index, waking the writers. A PUT is acknowledged only after that.

:mod:`nodes.storage.service` opens the store and runs the node; this module
imports none of its package's other modules.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from nodes.net.bounds import ByteBudget
from protocol.api import CHUNK_ID_RE, parse_sha256
from protocol.errors import ProtocolError
from protocol.frames import crc32c
from vstack import __version__
from vstack.settings import StorageSettings
from vstack.store import Busy, Location, PendingWrite, SuperblockStore

__all__ = ["ChunkRead", "NodePorts", "StorageNode", "chunk_key"]

log = logging.getLogger("vstack.storage")


@dataclass(frozen=True, kw_only=True)
class NodePorts:
    http: int
    binary: int


@dataclass(eq=False)
class ChunkRead:
    """An open read of (part of) a chunk. Call :meth:`close` when sent.

    Either ``data`` holds the bytes, or they are ``length`` bytes of ``fd``
    from ``offset`` to be sent with ``sendfile``.
    """

    loc: Location
    start: int
    length: int
    fd: int = -1
    offset: int = 0
    data: bytes | None = None
    _store: SuperblockStore | None = None

    def close(self) -> None:
        if self._store is not None:
            self._store.release(self.loc)
            self._store = None


def chunk_key(chunk_id: str, *, for_write: bool = False) -> bytes:
    """The store key of ``chunk_id``; 400 (on writes) or 404 if the id breaks the rule."""
    if not CHUNK_ID_RE.match(chunk_id):
        if for_write:
            raise ProtocolError("Invalid chunk ID format", 400)
        raise ProtocolError("Chunk not found", 404)
    return chunk_id.encode("ascii")


def _digests(data: bytes | bytearray, crc: int | None) -> tuple[bytes, int]:
    """SHA-256 and CRC32C of ``data`` (``crc`` when the caller has checked it already)."""
    return hashlib.sha256(data).digest(), crc32c(data) if crc is None else crc


class StorageNode:
    """The operations of a storage node over an open :class:`SuperblockStore`."""

    def __init__(self, settings: StorageSettings, store: SuperblockStore) -> None:
        self.settings = settings
        self.store = store
        self.node_id = settings.effective_node_id
        self.version = __version__
        self.started = time.monotonic()
        self.ports = NodePorts(http=0, binary=0)
        self._dirty = trio.Event()
        self.changes = 0  # published writes, for the checkpointer
        self.checkpoint_lock = trio.Lock()
        self.index_save_failures = 0
        self.fsync_batches = 0
        self.fsync_writes = 0
        #: Told each group commit's fsync time and size (the metrics' histograms).
        self.on_commit: Callable[[float, int], object] = lambda seconds, writes: None
        #: Bytes of chunks read into memory to answer GETs, both protocols together.
        self.reads = ByteBudget(max(settings.max_buffered_bytes,
                                    4 * (settings.max_chunk_bytes + 64)))

    # -- writes ---------------------------------------------------------------

    async def put(self, chunk_id: str, data: bytes | bytearray, *, checksum: str | None = None,
                  crc: int | None = None) -> tuple[int, Location]:
        """Store ``data`` under ``chunk_id``.

        Returns:
            ``(201, location)`` for a new chunk, ``(200, location)`` when the
            same bytes are already stored.

        Raises:
            ProtocolError: 400 bad id, empty body or checksum mismatch; 409
                other bytes under this id; 413 too large; 507 out of space.
        """
        key = chunk_key(chunk_id, for_write=True)
        if not data:
            raise ProtocolError("Empty chunk data", 400)
        if len(data) > self.settings.max_chunk_bytes:
            raise ProtocolError(f"Chunk larger than {self.settings.max_chunk_bytes} bytes", 413)
        if checksum is None and crc is not None:
            fresh = self.store.lookup(key)
            if fresh is None or fresh.quarantined:
                loc = await self._put_hashing_while_writing(key, data, crc)
                if loc is not None:
                    return 201, loc
        sha, crc = await trio.to_thread.run_sync(_digests, data, crc)
        if checksum is not None and parse_sha256(checksum) != sha.hex():
            raise ProtocolError("Checksum mismatch", 400)
        while True:
            loc = self.store.lookup(key)
            if loc is not None and not loc.quarantined:
                if loc.sha256 == sha:
                    return 200, loc
                raise ProtocolError("Chunk already exists with different content", 409)
            self._check_space(len(data))
            if not await self._write(lambda: self.store.reserve_put(key, data, sha=sha, crc=crc)):
                continue
            loc = self.store.lookup(key)
            assert loc is not None
            return 201, loc

    async def _put_hashing_while_writing(self, key: bytes, data: bytes | bytearray,
                                         crc: int) -> Location | None:
        """A new chunk whose CRC32C the transport checked: one thread writes its
        bytes (and starts their writeback) while another computes its SHA-256 and
        then writes its header, which holds the SHA-256. ``None``: another write
        of the key was in flight (it has finished: look again).

        Safe like any write: it counts as written only once data and header are
        both in place, and is acknowledged only after the group commit's fsync.
        A crash between the two leaves a record whose header or CRC32C does not
        check: recovery skips it, and it was never acknowledged.
        """
        self._check_space(len(data))

        async def write(pw: PendingWrite) -> None:
            def seal() -> None:
                self.store.write_sealed_header(pw, hashlib.sha256(data).digest())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, self.store.write_data, pw)
                nursery.start_soon(trio.to_thread.run_sync, seal)

        reserve = functools.partial(self.store.reserve_put, key, data, sha=bytes(32), crc=crc)
        if not await self._write(reserve, write):
            return None
        loc = self.store.lookup(key)
        assert loc is not None
        return loc

    async def delete(self, chunk_id: str) -> None:
        """Append a tombstone for ``chunk_id``; 404 if it is not stored."""
        key = chunk_key(chunk_id)
        while True:
            loc = self.store.lookup(key)
            if loc is None:
                raise ProtocolError("Chunk not found", 404)
            if await self._write(functools.partial(self.store.reserve_delete, loc)):
                return

    async def _write(self, reserve: Callable[[], PendingWrite],
                     write: Callable[[PendingWrite], Awaitable[None]] | None = None) -> bool:
        """Reserve and commit one record; ``False`` if another write of the
        same chunk was in flight (it has finished now: look again).

        Raises:
            ProtocolError: 507 or 500 if the write failed.
        """
        try:
            pw = reserve()
        except Busy as busy:
            await busy.pending.waiter.wait()
            return False
        await self.commit(pw, write)
        if pw.error is not None:
            raise _write_error(pw.error)
        return True

    async def commit(self, pw: PendingWrite,
                     write: Callable[[PendingWrite], Awaitable[None]] | None = None) -> None:
        """Write a reserved record and wait until it is durable and published.

        ``write`` puts the record's bytes in place (default: the whole record,
        from a worker thread). It is shielded: once reserved, a record must be
        written or marked failed, whatever the error, or every write behind it
        in its superblock would wait forever. The wait for the fsync is not: a
        cancelled PUT was never acknowledged.
        """
        pw.waiter = trio.Event()
        with trio.CancelScope(shield=True):
            try:
                if write is None:
                    await trio.to_thread.run_sync(self.store.write, pw)
                else:
                    await write(pw)
                self.store.mark_written(pw)
            except BaseException as exc:
                first = exc
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                log.error("write of %s failed: %r", pw.key.decode(errors="replace"), first)
                self.store.mark_written(pw, first if isinstance(first, OSError)
                                        else OSError(f"write failed: {first!r}"))
                self._dirty.set()
                if not isinstance(first, OSError):
                    raise
            self._dirty.set()
        await pw.waiter.wait()

    async def run_committer(self) -> None:
        """Group commit: fsync whatever finished writing, publish, wake writers."""
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            batch = self.store.sync_batch()
            if batch is None:
                continue
            error: OSError | None = None
            with trio.CancelScope(shield=True):
                started = time.perf_counter()
                try:
                    await trio.to_thread.run_sync(self.store.fsync_batch, batch)
                except OSError as exc:
                    log.error("fsync failed: %s", exc)
                    error = exc
                done = self.store.publish(batch, error)
                self.on_commit(time.perf_counter() - started, len(done))
            self.fsync_batches += 1
            self.fsync_writes += len(done)
            self.changes += len(done)
            for pw in done:
                pw.waiter.set()

    def _check_space(self, size: int) -> None:
        s = self.settings
        if s.capacity_bytes is not None and self.store.file_bytes() + size > s.capacity_bytes:
            raise ProtocolError("Insufficient storage space", 507)
        st = os.statvfs(self.store.root)
        free = st.f_bavail * st.f_frsize
        if free < size + (1 << 20) or self.fs_usage_percent(st) > s.max_disk_usage_percent:
            raise ProtocolError("Insufficient storage space", 507)

    # -- reads ----------------------------------------------------------------

    def head(self, chunk_id: str) -> Location:
        loc = self.store.lookup(chunk_key(chunk_id))
        if loc is None:
            raise ProtocolError("Chunk not found", 404)
        if loc.quarantined:
            raise ProtocolError("Chunk corruption detected", 500)
        return loc

    async def open_read(self, chunk_id: str, start: int = 0, length: int | None = None,
                        *, want_bytes: bool = False, loc: Location | None = None) -> ChunkRead:
        """Open a chunk for sending; the caller must :meth:`ChunkRead.close` it.

        A chunk not yet checked since this process started is read and checked
        against its CRC32C first (and quarantined if it fails); checked chunks
        are served zero-copy. ``want_bytes`` forces the bytes into memory.

        Raises:
            ProtocolError: 404 unknown, 416 bad range, 500 corrupt.
        """
        hint = loc  # the caller's :meth:`head`, just now: not looked up twice
        for _ in range(3):
            loc, hint = hint or self.head(chunk_id), None
            if start < 0 or start > loc.size or (start == loc.size and loc.size):
                raise ProtocolError("Requested range not satisfiable", 416)
            n = loc.size - start if length is None else min(length, loc.size - start)
            try:
                fd = self.store.acquire(loc)
            except ProtocolError as exc:
                if exc.status == 503:
                    continue  # moved by compaction between lookup and acquire
                raise
            read = ChunkRead(loc=loc, start=start, length=n, _store=self.store)
            try:
                # The row is still ``loc``'s (acquired), but its flags may have
                # changed since the lookup: a scrub may have quarantined it.
                loc = read.loc = self.store.refresh(loc)
                if loc.quarantined:
                    raise ProtocolError("Chunk corruption detected", 500)
                if loc.verified and not want_bytes:
                    read.fd, read.offset = fd, loc.data_offset + start
                    return read
                data = await trio.to_thread.run_sync(self.store.read_verified, fd, loc)
                if data is None:
                    self.store.quarantine(loc, "CRC32C mismatch on read")
                    raise ProtocolError("Chunk corruption detected", 500)
                self.store.mark_verified(loc)
                read.data = data[start : start + n] if (start or n != loc.size) else data
                return read
            except BaseException:
                read.close()
                raise
        raise ProtocolError("Chunk is being moved; retry", 503)

    # -- introspection ----------------------------------------------------------

    async def list_chunks(self, cursor: int, limit: int) -> tuple[list[Location], int | None]:
        """A page of the chunks held here: up to ``limit`` from index row ``cursor``,
        and the cursor of the next page (``None`` at the end).

        Rows move when chunks are deleted or compacted, so a walk may miss or
        repeat a chunk that changed meanwhile; the garbage collector, its
        user, walks again on its next pass.
        """
        def page() -> tuple[list[Location], int | None]:
            rows = self.store.rows()
            end = min(rows, cursor + limit)
            found = [loc for row in range(cursor, end)
                     if (loc := self.store.location_of_row(row)) is not None
                     and not loc.quarantined]
            return found, end if end < rows else None

        return await trio.to_thread.run_sync(page)

    @staticmethod
    def fs_usage_percent(st: os.statvfs_result) -> float:
        if not st.f_blocks:
            return 0.0
        return 100.0 * (st.f_blocks - st.f_bfree) / st.f_blocks

    def disk_usage_percent(self) -> float:
        cap = self.settings.capacity_bytes
        if cap:
            return min(100.0, 100.0 * self.store.file_bytes() / cap)
        return self.fs_usage_percent(os.statvfs(self.store.root))

    def free_bytes(self) -> int:
        st = os.statvfs(self.store.root)
        return st.f_bavail * st.f_frsize

    def chunk_count(self) -> int:
        return len(self.store.index) - len(self.store.quarantined)

    def health(self) -> dict[str, Any]:
        usage = self.disk_usage_percent()
        stats = self.store.statistics()
        status = "healthy"
        if usage > 85 or self.index_save_failures or stats.quarantined:
            status = "warning"
        if usage > 95 or self.index_save_failures > 5:
            status = "critical"
        st = os.statvfs(self.store.root)
        return {
            "status": status,
            "disk_usage": round(usage, 2),
            "chunk_count": stats.chunk_count,
            "uptime": int(time.monotonic() - self.started),
            "node_id": self.node_id,
            "version": self.version,
            "free_bytes": st.f_bavail * st.f_frsize,
            "stored_bytes": stats.stored_bytes,
            "superblocks": stats.superblocks,
            "superblock_bytes": stats.file_bytes,
            "garbage_bytes": stats.garbage_bytes,
            "quarantined_count": stats.quarantined,
            "quarantined": sorted(self.store.quarantined)[:100],
            "pending_writes": stats.pending_writes,
            "index_bytes": stats.index_bytes,
            "index_save_failures": self.index_save_failures,
            "binary_port": self.ports.binary,
            "auth_required": self.settings.auth.cluster_secret is not None,
            "recovery": self.store.recovery,
        }

    async def checkpoint(self) -> None:
        """Write the index checkpoint (one at a time)."""
        async with self.checkpoint_lock:
            snapshot = self.store.checkpoint_snapshot()
            changes = self.changes
            try:
                await trio.to_thread.run_sync(self.store.write_checkpoint, snapshot)
            except OSError as exc:
                self.index_save_failures += 1
                log.error("index checkpoint failed: %s", exc)
                return
            self.index_save_failures = 0
            self.changes -= changes
            log.debug("index checkpoint written (%d chunks)", len(self.store.index))


def _write_error(exc: BaseException) -> ProtocolError:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ProtocolError("Insufficient storage space", 507)
    return ProtocolError("Internal storage error", 500)
