"""Zero-copy sends: bytes from a file to a socket without passing through Python.

``os.sendfile`` on a non-blocking socket sends what fits in the socket buffer
and raises ``BlockingIOError`` when nothing fits; we then wait until the
socket is writable. Offsets are explicit, so the file position is never
touched and many sends can share one descriptor. A return of 0 before
``count`` bytes means the file is shorter than its index said: that is an
error, never a silently short body.
"""

from __future__ import annotations

import errno
import os
from typing import Final

import trio

from protocol.errors import VStackError
from protocol.frames import FrameConnection

__all__ = ["PEER_GONE", "TruncatedFile", "receive_frame_bytes", "send_file_range", "sendfile"]

#: The errors of a send whose receiver has gone (any other is the file's, or ours).
PEER_GONE: Final = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN,
                              errno.ESHUTDOWN, errno.ETIMEDOUT})

#: The most one receive takes before it lets the other tasks run (about 0.2 ms of copying).
_MAX_RECEIVE_PER_ROUND: Final = 1 << 20

# Loopback moves a 2 MiB chunk in one or two calls; cap a call so one big send
# cannot starve the other tasks.
_MAX_PER_CALL = 4 * 1024 * 1024


class TruncatedFile(VStackError, OSError):
    """The file ended before the requested range did."""


async def sendfile(
    stream: trio.abc.Stream, fd: int, offset: int, count: int, *, head: bytes = b""
) -> None:
    """Send ``head``, then ``count`` bytes of ``fd`` from ``offset``, on ``stream``.

    Uses ``os.sendfile`` when ``stream`` is a TCP :class:`trio.SocketStream`,
    and ``pread`` + ``send_all`` for any other stream (TLS, in-memory tests).
    ``head`` (a response header) is sent first, on the same code path.
    """
    sock = getattr(stream, "socket", None)
    if sock is None:
        if head:
            await stream.send_all(head)
        await _copy(stream, fd, offset, count)
        return
    # The head goes out on its own: coalescing it with the file bytes
    # (MSG_MORE or TCP_CORK) measured *slower* here, each response's tail
    # waiting out the kernel's 200 ms cork timer on loopback.
    view = memoryview(head)
    while view:
        try:
            sent = await sock.send(view)
        except OSError as exc:
            raise trio.BrokenResourceError(f"send failed: {exc}") from exc
        view = view[sent:]
    await send_file_range(sock, fd, offset, count)


async def send_file_range(out: trio.socket.SocketType | int, fd: int, offset: int, count: int
                          ) -> None:
    """``count`` bytes of ``fd`` from ``offset`` to ``out`` (a non-blocking socket,
    or the descriptor of a non-blocking pipe) by ``os.sendfile``: the bytes never
    enter Python. A peer (or a pipe's reader) that has gone raises
    :class:`trio.BrokenResourceError`; a file that cannot be read, its ``OSError``;
    one shorter than ``offset + count``, :class:`TruncatedFile`.
    """
    out_fd = out if isinstance(out, int) else out.fileno()
    while count:
        try:
            n = os.sendfile(out_fd, fd, offset, min(count, _MAX_PER_CALL))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(out)
            continue
        except OSError as exc:
            if exc.errno in PEER_GONE:
                raise trio.BrokenResourceError(f"sendfile failed: {exc}") from exc
            raise  # the file's side (EIO...): an error, not a peer that left
        if n == 0:
            raise TruncatedFile(f"file ended {count} bytes early")
        offset += n
        count -= n
        # No checkpoint here: the loop yields whenever the socket is full (above),
        # and the head's send was one; a round of the scheduler per call costs
        # more than the call.


async def receive_frame_bytes(stream: trio.abc.ReceiveStream, conn: FrameConnection) -> bool:
    """Receive the next bytes for ``conn``; ``False`` once the peer has closed.

    While a large payload is arriving, the bytes go straight from the kernel
    into the payload's own buffer (``recv_into``), with no copy in between.
    """
    window = conn.payload_window()
    sock = getattr(stream, "socket", None)
    if window is not None and sock is not None:
        n = await _receive_into(sock, window)
        if n:
            conn.payload_received(n)
            return True
        conn.receive_data(b"")
        return False
    data = await stream.receive_some(max(65536, min(conn.pending_payload, 1 << 20)))
    conn.receive_data(data)
    return bool(data)


async def _receive_into(sock: trio.socket.SocketType, window: memoryview) -> int:
    """Fill ``window`` with what the socket holds, waiting only while it holds
    nothing; the bytes taken (0: the peer closed).

    One call takes every byte already queued, up to
    :data:`_MAX_RECEIVE_PER_ROUND` (a few reads, no scheduler round between
    them), where ``recv_into`` takes one read per round. It checks for
    cancellation on entry and yields once on return, as trio's own calls do,
    so a peer that keeps the socket full delays the others by one cap's copy.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    fd, got, size = sock.fileno(), 0, min(len(window), _MAX_RECEIVE_PER_ROUND)
    while got < size:
        try:
            n = os.readv(fd, [window[got:]])
        except BlockingIOError:
            if got:
                break
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
        if not n:
            break  # closed: what came before counts; the next call sees the end
        got += n
    await trio.lowlevel.cancel_shielded_checkpoint()
    return got


async def _copy(stream: trio.abc.Stream, fd: int, offset: int, count: int) -> None:
    while count:
        buf = os.pread(fd, min(count, 1 << 20), offset)
        if not buf:
            raise TruncatedFile(f"file ended {count} bytes early")
        await stream.send_all(buf)
        offset += len(buf)
        count -= len(buf)
