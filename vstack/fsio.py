"""The file-system calls that decide what survives a crash, behind one seam.

Theory of operation
-------------------
What a power loss leaves depends on the exact sequence of creates, writes,
syncs, renames and unlinks a program makes, and on which of them were made
durable: a write by ``fsync``/``fdatasync`` of its file, a new, renamed or
removed *name* only by an ``fsync`` of its directory. The storage engine
(:mod:`vstack.superblock`, :mod:`vstack.group_commit`, :mod:`vstack.recovery`)
and the upload session store (:mod:`vstack.upload_session`) make every such
call through :data:`fs`, so a test can put a recording implementation in its
place and rebuild, after any operation, each state a crash could leave
(``tests/test_crash_states.py``, after ALICE, OSDI'14, and CrashMonkey).

The production :class:`OsFileSystem` *is* the ``os`` module's functions (its
attributes are the builtins themselves, bound as static methods): a call
costs one more attribute lookup and no Python frame. Reads (``pread``,
``fstat``, ``sendfile``) change nothing on disk and stay plain ``os`` calls.

Callers write ``fsio.fs.fsync(fd)``, never ``from vstack.fsio import fs``,
so that replacing :data:`fs` reaches them. The helpers below
(:func:`fsync_dir`, :func:`makedirs`, :func:`atomic_writer`,
:func:`write_atomic`) are built on :data:`fs` and are the durable idioms the
engine needs: a directory's names synced, new directories synced into their
parent, and a file replaced atomically (temporary file, fsync, rename, fsync
of the directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer as Buffer

__all__ = [
    "FileSystem",
    "OsFileSystem",
    "atomic_writer",
    "fs",
    "fsync_dir",
    "makedirs",
    "write_atomic",
]


class FileSystem(Protocol):
    """The calls that change what is on disk (the ``os`` functions of the same names)."""

    def open(self, path: str | Path, flags: int, mode: int = 0o777) -> int: ...
    def close(self, fd: int) -> None: ...
    def pwrite(self, fd: int, data: Buffer, offset: int) -> int: ...
    def pwritev(self, fd: int, buffers: Sequence[Buffer], offset: int) -> int: ...
    def fsync(self, fd: int) -> None: ...
    def fdatasync(self, fd: int) -> None: ...
    def ftruncate(self, fd: int, length: int) -> None: ...
    def replace(self, src: str | Path, dst: str | Path) -> None: ...
    def unlink(self, path: str | Path) -> None: ...
    def mkdir(self, path: str | Path, mode: int = 0o777) -> None: ...


class OsFileSystem:
    """The real file system: every method is the ``os`` builtin itself."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    pwrite = staticmethod(os.pwrite)
    pwritev = staticmethod(os.pwritev)
    fsync = staticmethod(os.fsync)
    fdatasync = staticmethod(os.fdatasync)
    ftruncate = staticmethod(os.ftruncate)
    replace = staticmethod(os.replace)
    unlink = staticmethod(os.unlink)
    mkdir = staticmethod(os.mkdir)


#: The file system every durable change goes through; tests may replace it.
fs: FileSystem = OsFileSystem()


def fsync_dir(path: Path) -> None:
    """Blocking: make the names in directory ``path`` (creations, renames, removals) durable."""
    fd = fs.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fs.fsync(fd)
    finally:
        fs.close(fd)


def makedirs(path: Path) -> bool:
    """Blocking: create ``path`` and any missing parents, each synced into its parent.

    ``Path.mkdir(parents=True)`` leaves a new directory's name in its
    parent's page cache: after a power loss the directory, and every file
    later created and synced in it, may be gone. Returns whether anything
    was created.
    """
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            fs.mkdir(d, 0o755)
        except FileExistsError:
            if not d.is_dir():
                raise
    for d in reversed(missing):  # top down: a parent's entry is durable before its child's
        fsync_dir(d.parent)
    return bool(missing)


class _FdWriter(io.RawIOBase):
    """A seekable raw stream over a descriptor, writing through :data:`fs` with ``pwrite``."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        if whence == os.SEEK_SET:
            self.pos = offset
        elif whence == os.SEEK_CUR:
            self.pos += offset
        else:
            self.pos = os.fstat(self.fd).st_size + offset
        return self.pos

    def write(self, b: Buffer, /) -> int:
        n = fs.pwrite(self.fd, b, self.pos)
        self.pos += n
        return n


@contextlib.contextmanager
def atomic_writer(path: Path, *, buffer_size: int = 1 << 20,
                  mode: int = 0o644) -> Iterator[BinaryIO]:
    """Blocking: a file that replaces ``path`` atomically and durably when the block ends.

    The bytes go to ``.<name>.tmp`` beside it, which is fsynced, renamed
    over ``path``, and the directory fsynced: after a crash ``path`` holds
    either its old contents or all of the new ones, and once the block has
    ended, the new ones. If the block raises, ``path`` is untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with io.BufferedWriter(_FdWriter(fd), buffer_size=buffer_size) as f:
            yield f
        fs.fsync(fd)
    finally:
        fs.close(fd)
    fs.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: Buffer, *, mode: int = 0o644) -> None:
    """Blocking: replace ``path`` with ``data``, atomically and durably (see :func:`atomic_writer`);
    a new file gets permissions ``mode`` (0o600 for a secret)."""
    with atomic_writer(path, buffer_size=max(1, min(memoryview(data).nbytes, 1 << 20)),
                       mode=mode) as f:
        f.write(data)


def _libc_sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of ``fd`` to disk, without waiting (Linux's
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``): the fsync that follows finds
    less to do. A hint, never a durability guarantee: does nothing where the
    call is missing or fails."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
