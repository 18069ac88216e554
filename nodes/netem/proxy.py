"""One emulated link: a TCP proxy in front of one storage node port.

Theory of operation
-------------------
Each accepted connection is a :class:`_Link` with two directions (``up``:
client to node, ``down``: node to client). A direction is two tasks joined
by a bounded memory channel, a delay queue: the *reader* reads a chunk (at
most ``chunk_bytes``), stamps it with the time it may leave
(:func:`vstack.netem.due_time`: read time plus latency and jitter, never
before the chunk ahead of it) and queues it; the *writer* waits until that
time, then rolls for a stall and a reset, waits out the token bucket's cap
and sends. Both read the proxy's *current* :class:`~vstack.netem.FaultSettings`
per chunk, so a change through the control API applies to open connections
at once.

Modes: ``refuse`` closes every new connection at once (and resets the open
ones: the node went down); ``blackhole`` accepts, reads and discards, and
never answers (an open connection's bytes are dropped from then on);
``normal`` forwards. A reset is an abortive close (``SO_LINGER`` 0) of both
sockets: each peer sees ``ECONNRESET``.

Bounds: at most ``max_connections`` connections per proxy (one more is
closed at once, :class:`~nodes.net.bounds.ConnectionGate`); at most
``queue_chunks`` chunks queued per direction; every queued byte is reserved
first from one :class:`~nodes.net.bounds.ByteBudget` per proxy.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import trio

from nodes.net.bounds import ByteBudget, ConnectionGate
from vstack.netem import Dice, FaultSettings, Mode, NetemSettings, ProxySpec, TokenBucket, due_time

__all__ = ["Proxy", "ProxyCounters"]

log = logging.getLogger("vstack.netem")

_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(kw_only=True)
class ProxyCounters:
    """What one proxy has carried since it started."""

    connections: int = 0  # accepted, in every mode
    active: int = 0  # forwarding now
    refused: int = 0  # closed at once (refuse mode, or the node could not be reached)
    blackholed: int = 0  # accepted in blackhole mode
    bytes_up: int = 0  # client to node, forwarded
    bytes_down: int = 0  # node to client, forwarded
    resets: int = 0
    stalls: int = 0


class _Reset(Exception):
    """A direction rolled a reset: the whole link closes abortively."""


class Proxy:
    """Listens on ``spec.listen_port``; forwards to ``spec.host:spec.port`` with faults."""

    def __init__(self, spec: ProxySpec, settings: NetemSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.faults = FaultSettings()
        self.counters = ProxyCounters()
        self.port = spec.listen_port  # the bound port, once listening
        self.budget = ByteBudget(settings.chunk_bytes * settings.queue_chunks * 16)
        self._links: set[_Link] = set()
        self._holes: set[trio.CancelScope] = set()

    def to_json(self) -> dict[str, object]:
        return {"listen_port": self.port, "target": f"{self.spec.host}:{self.spec.port}",
                "settings": self.faults.to_json(), "counters": asdict(self.counters)}

    def set_faults(self, faults: FaultSettings) -> None:
        """Apply ``faults`` now, to new and open connections alike."""
        before, self.faults = self.faults.mode, faults
        if faults.mode is Mode.REFUSE:
            for link in list(self._links):
                link.abort()  # the node is down: its connections die with it
        if before is Mode.BLACKHOLE and faults.mode is not Mode.BLACKHOLE:
            for scope in self._holes:
                scope.cancel()  # what fell in the hole is gone: reset, the client retries
        log.info("proxy %d: %s", self.port, faults.to_json())

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept until cancelled; reports the bound port."""
        listeners = await trio.open_tcp_listeners(self.spec.listen_port, host=self.settings.host)
        self.port = listeners[0].socket.getsockname()[1]
        gate = ConnectionGate(f"netem proxy {self.port}",
                              max_connections=self.settings.max_connections, refusal=b"")
        log.info("proxy %d -> %s:%d", self.port, self.spec.host, self.spec.port)
        task_status.started(self.port)
        await gate.serve(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.counters.connections += 1
        index = self.counters.connections
        mode = self.faults.mode
        if mode is Mode.REFUSE:
            self.counters.refused += 1
            _abort(client)
            return
        if mode is Mode.BLACKHOLE:
            await self._blackhole(client)
            return
        try:
            with trio.fail_after(self.settings.connect_timeout):
                upstream = await trio.open_tcp_stream(self.spec.host, self.spec.port)
        except (OSError, trio.TooSlowError) as exc:
            log.debug("proxy %d: cannot reach the node: %s", self.port, exc)
            self.counters.refused += 1
            _abort(client)
            return
        link = _Link(self, client, upstream, index)
        self._links.add(link)
        self.counters.active += 1
        try:
            await link.run()
        finally:
            self.counters.active -= 1
            self._links.discard(link)

    async def _blackhole(self, client: trio.SocketStream) -> None:
        """Read and discard until the client gives up (or the mode changes: reset)."""
        self.counters.blackholed += 1
        scope = trio.CancelScope()
        self._holes.add(scope)
        try:
            with scope:
                while await client.receive_some(self.settings.chunk_bytes):
                    pass
        except _IO_ERRORS:
            pass
        finally:
            self._holes.discard(scope)
            _abort(client)


class _Direction:
    """One way through a link: the queue, its token bucket and dice."""

    def __init__(self, link: _Link, name: str, src: trio.SocketStream,
                 dst: trio.SocketStream) -> None:
        proxy = link.proxy
        self.link = link
        self.name = name
        self.src = src
        self.dst = dst
        self.dice = Dice(f"{proxy.settings.seed}:{proxy.port}:{link.index}:{name}")
        self.bucket = TokenBucket(proxy.faults.bandwidth_bps, trio.current_time())
        self.held = 0  # bytes reserved from the proxy's budget, not yet sent
        self.send, self.receive = trio.open_memory_channel[tuple[float, bytes]](
            proxy.settings.queue_chunks)

    async def read(self) -> None:
        """Read chunks, stamp each with its due time, queue them; EOF closes the queue."""
        proxy = self.link.proxy
        size = proxy.settings.chunk_bytes
        previous = 0.0
        async with self.send:
            while True:
                await proxy.budget.acquire(size)
                self.held += size
                data = await self.src.receive_some(size)
                self._release(size - len(data))
                if not data:
                    return
                faults = proxy.faults
                if faults.mode is not Mode.NORMAL:  # a black hole: dropped
                    self._release(len(data))
                    continue
                previous = due_time(trio.current_time(), self.dice.delay(faults), previous)
                await self.send.send((previous, data))

    async def write(self) -> None:
        """Send each queued chunk when due, after its stall and bandwidth wait; then EOF."""
        proxy = self.link.proxy
        counters = proxy.counters
        async with self.receive:
            async for due, data in self.receive:
                await trio.sleep_until(due)
                faults = proxy.faults
                if self.dice.chance(faults.stall_rate):
                    counters.stalls += 1
                    await trio.sleep(faults.stall_ms / 1000)
                if self.dice.chance(faults.reset_rate):
                    raise _Reset
                self.bucket.set_rate(faults.bandwidth_bps, trio.current_time())
                wait = self.bucket.take(len(data), trio.current_time())
                if wait > 0:
                    await trio.sleep(wait)
                await self.dst.send_all(data)
                self._release(len(data))
                if self.name == "up":
                    counters.bytes_up += len(data)
                else:
                    counters.bytes_down += len(data)
        await self.dst.send_eof()

    def _release(self, n: int) -> None:
        if n > 0:
            self.held -= n
            self.link.proxy.budget.release(n)

    def release_all(self) -> None:
        self._release(self.held)


class _Link:
    """One proxied connection: two directions; ends when both have, or on a reset."""

    def __init__(self, proxy: Proxy, client: trio.SocketStream, upstream: trio.SocketStream,
                 index: int) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.index = index
        self.scope = trio.CancelScope()
        self.aborted = False

    def abort(self) -> None:
        """Reset both ends (RST), from any task."""
        self.aborted = True
        self.scope.cancel()

    async def run(self) -> None:
        up = _Direction(self, "up", self.client, self.upstream)
        down = _Direction(self, "down", self.upstream, self.client)
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    for direction in (up, down):
                        nursery.start_soon(self._guard, direction.read)
                        nursery.start_soon(self._guard, direction.write)
        finally:
            up.release_all()
            down.release_all()
            if self.aborted:
                _abort(self.client)
                _abort(self.upstream)
            else:
                self.client.socket.close()
                self.upstream.socket.close()

    async def _guard(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run one half; a reset or a broken socket ends the whole link abortively."""
        try:
            await job()
        except _Reset:
            self.proxy.counters.resets += 1
            self.abort()
        except _IO_ERRORS:
            self.abort()


def _abort(stream: trio.SocketStream) -> None:
    """Close with ``SO_LINGER`` 0: the peer gets a reset, not a FIN."""
    sock = stream.socket
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
