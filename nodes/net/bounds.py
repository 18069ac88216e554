"""Resource bounds every server shares: connections, descriptors and buffered bytes.

Theory of operation
-------------------
A peer that can reach a port must not be able to make a server hold more than
a configured amount of anything. Three mechanisms, used by
:mod:`nodes.net.http_server` and :mod:`nodes.net.frame_server`:

* :class:`ConnectionGate` runs the accept loop of a listening service. At
  most ``max_connections`` connections are served at once; one more is
  answered at once with a short refusal (an HTTP 503, a 503 error frame) and
  closed, without reading it, and without a log line per refusal (one
  warning per episode). When ``accept`` fails for want of descriptors or
  memory (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``), the loop backs
  off (doubling up to a second) instead of spinning, and says so once per
  episode, without a traceback: trio's ``serve_listeners`` logs a traceback
  for every failed accept.
* :class:`ByteBudget` is a weighted, first-come-first-served semaphore over
  bytes (a reservation of zero bytes never waits: a PING or a GET is not
  queued behind a large PUT). A server reserves what a request will hold *before* it reads it; a
  reservation that does not fit waits, and while it waits nothing more is
  read from that connection: the peer's bytes stay in the kernel's socket
  buffers (TCP flow control), not in ours. Budgets nest (a connection's
  inside its server's), so one connection cannot take a whole node and all
  of them together cannot take more than the node's budget.
* :func:`default_max_connections` derives a per-service cap from the
  process's descriptor limit, so that two listeners at their caps still
  leave descriptors for files and outgoing connections.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

__all__ = [
    "ACCEPT_CAPACITY_ERRNOS",
    "BudgetStatistics",
    "ByteBudget",
    "ConnectionGate",
    "GateStatistics",
    "default_max_connections",
]

log = logging.getLogger("vstack.net")

#: ``accept`` errors that mean "out of resources for now", not "listener broken".
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Back-off after such an error: doubles from the first to the last value.
ACCEPT_BACKOFF: Final = (0.05, 1.0)
#: The default cap never exceeds this, whatever the descriptor limit.
MAX_DEFAULT_CONNECTIONS: Final = 1024
#: Reads (64 KiB each) of what a refused connection sent before it is closed.
_REFUSAL_READS: Final = 4


def default_max_connections() -> int:
    """A quarter of the soft descriptor limit (at least 16, at most 1024).

    A storage node has two listeners, each up to its cap, plus superblock
    files, its outgoing HTTP pool and its index; a quarter each leaves half
    the descriptors for those.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT_CONNECTIONS
    return max(16, min(MAX_DEFAULT_CONNECTIONS, soft // 4))


# -- bytes ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetStatistics:
    capacity: int
    in_use: int
    peak: int  # the most ever in use at once
    waiting: int  # reservations queued


class _Waiter:
    __slots__ = ("event", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = trio.Event()


class ByteBudget:
    """At most ``capacity`` bytes reserved at once, granted in arrival order.

    Args:
        capacity: the bytes that may be reserved at once.
        parent: a budget every reservation must also fit in (a node's, for a
            connection's budget); reserved after this one, released with it.
    """

    def __init__(self, capacity: int, *, parent: ByteBudget | None = None) -> None:
        if capacity <= 0:
            raise ValueError("a budget needs a positive capacity")
        if parent is not None and capacity > parent.capacity:
            raise ValueError("a budget cannot be larger than its parent")
        self.capacity: int = capacity
        self.parent: ByteBudget | None = parent
        self._in_use = 0
        self._peak = 0
        self._waiters: deque[_Waiter] = deque()

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(capacity=self.capacity, in_use=self._in_use, peak=self._peak,
                                waiting=len(self._waiters))

    async def acquire(self, n: int) -> None:
        """Reserve ``n`` bytes here (and in the parent), waiting behind earlier
        reservations until they fit. Cancellation leaves nothing reserved.

        Raises:
            ValueError: ``n`` can never fit.
        """
        if n > self.capacity:
            raise ValueError(f"{n} bytes can never fit in a budget of {self.capacity}")
        if n <= 0:  # nothing to wait for: never queued behind a large reservation
            await trio.lowlevel.checkpoint()
            return
        await self._acquire_here(n)
        if self.parent is not None:
            try:
                await self.parent.acquire(n)
            except BaseException:
                self._release_here(n)
                raise

    def release(self, n: int) -> None:
        """Give back ``n`` bytes reserved with :meth:`acquire`."""
        self._release_here(n)
        if self.parent is not None:
            self.parent.release(n)

    async def _acquire_here(self, n: int) -> None:
        if not self._waiters and self._in_use + n <= self.capacity:
            self._take(n)
            try:
                await trio.lowlevel.checkpoint()
            except BaseException:
                self._release_here(n)
                raise
            return
        waiter = _Waiter(n)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.event.is_set():  # granted just as we were cancelled
                self._release_here(n)
            else:
                self._waiters.remove(waiter)
                self._wake()
            raise

    def _take(self, n: int) -> None:
        self._in_use += n
        self._peak = max(self._peak, self._in_use)

    def _release_here(self, n: int) -> None:
        if not 0 <= n <= self._in_use:
            raise ValueError("released more than was reserved")
        self._in_use -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use + self._waiters[0].n <= self.capacity:
            waiter = self._waiters.popleft()
            self._take(waiter.n)
            waiter.event.set()


# -- connections ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class GateStatistics:
    open: int  # connections being served
    refused: int  # answered with the refusal because the cap was reached
    accept_failures: int  # accepts that failed for want of descriptors or memory


class ConnectionGate:
    """The accept loop of one service: a connection cap and quiet back-off.

    Args:
        name: names the service in the (rare) log lines.
        max_connections: connections served at once (``None``:
            :func:`default_max_connections`).
        refusal: bytes sent to a connection over the cap before it is closed.
    """

    def __init__(self, name: str, *, max_connections: int | None, refusal: bytes) -> None:
        self.name = name
        self.max_connections = max_connections or default_max_connections()
        self.refusal = refusal
        self._open = 0
        self._refused = 0
        self._failures = 0
        self._at_cap = False
        self._exhausted = False

    def statistics(self) -> GateStatistics:
        return GateStatistics(open=self._open, refused=self._refused,
                              accept_failures=self._failures)

    async def serve(self, handler: Callable[[trio.SocketStream], Awaitable[None]],
                    listeners: Sequence[trio.abc.Listener[trio.SocketStream]]) -> None:
        """Accept on every listener until cancelled; ``handler`` owns (and closes)
        each stream it is given."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, handler, nursery)

    async def _accept_loop(self, listener: trio.abc.Listener[trio.SocketStream],
                           handler: Callable[[trio.SocketStream], Awaitable[None]],
                           nursery: trio.Nursery) -> None:
        backoff = ACCEPT_BACKOFF[0]
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    self._failures += 1
                    if not self._exhausted:
                        self._exhausted = True
                        log.warning("%s: cannot accept connections (%s); backing off",
                                    self.name, exc.strerror or exc)
                    await trio.sleep(backoff)
                    backoff = min(2 * backoff, ACCEPT_BACKOFF[1])
                    continue
                if self._exhausted:
                    self._exhausted = False
                    log.warning("%s: accepting connections again", self.name)
                backoff = ACCEPT_BACKOFF[0]
                if self._open >= self.max_connections:
                    self._refuse(stream)
                    continue
                self._open += 1
                nursery.start_soon(self._run, handler, stream)

    async def _run(self, handler: Callable[[trio.SocketStream], Awaitable[None]],
                   stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        finally:
            self._open -= 1
            if self._at_cap and self._open < self.max_connections:
                self._at_cap = False
                log.info("%s: below %d connections again", self.name, self.max_connections)

    def _refuse(self, stream: trio.SocketStream) -> None:
        """Answer with the refusal and close, synchronously: no task, no wait."""
        self._refused += 1
        if not self._at_cap:
            self._at_cap = True
            log.warning("%s: %d connections open; refusing more until one closes",
                        self.name, self.max_connections)
        sock = stream.socket
        fd = sock.fileno()
        try:
            os.write(fd, self.refusal)  # a fresh socket's buffer takes a few hundred bytes
            sock.shutdown(socket.SHUT_WR)  # FIN right after the refusal
            for _ in range(_REFUSAL_READS):  # what the peer sent already: no RST on close
                if not os.read(fd, 65536):
                    break
        except OSError:  # BlockingIOError once nothing more is there, or the peer is gone
            pass
        finally:
            sock.close()
