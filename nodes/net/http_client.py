"""The one HTTP/1.1 client of V-Stack: a keep-alive connection pool over h11.

Every service and CLI talks HTTP through :class:`HttpClient`: the metadata
replicas to each other, storage nodes to the metadata service, the uploader
and the metadata service to storage nodes, ``vstack-put`` to the uploader.

* **Pooling.** Idle connections are kept per ``(host, port)`` (at most
  ``max_idle_per_host``) and reused; at most ``max_per_host`` are open to
  one host at once, so a burst of calls cannot open unbounded sockets.
* **Stale connections.** A server closes idle connections (ours after
  ``idle_timeout``): an idle connection the server has closed, or sent
  anything on, is discarded before reuse, so no request is ever sent on it.
  A server may still close one just as we reuse it: a request that fails on
  a *reused* connection before any byte of the answer arrived is sent once
  more on a fresh one, if it is safe to repeat: the method is idempotent,
  or the caller says so (``retry=True``).
* **Errors** are mapped once (:mod:`nodes.net.errors`): callers see
  :class:`~protocol.errors.TransportError` subclasses and
  :class:`~protocol.errors.RemoteProtocolError`, never ``OSError`` or trio's
  resource errors.
* **Bounds.** Answer bodies are capped (``max_bytes``); connecting gives up
  after ``connect_timeout`` (a host whose link is down never refuses: its
  SYNs are dropped); other timeouts belong to the caller (``with deadline(...)``).

A request body is bytes, a JSON value, or an async iterable of bytes with
its length (``vstack-put`` streams a file that way, never holding it whole).
"""

from __future__ import annotations

import contextlib
import json
import select
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import h11
import trio

from protocol.errors import (
    ConnectionLost,
    LocalProtocolError,
    RemoteProtocolError,
    VStackError,
)

from .connect import CONNECT_SECONDS, open_tcp
from .errors import map_io_errors

__all__ = ["HttpClient", "HttpResult", "StreamBody", "request"]

MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_RECV: Final = 256 * 1024


@dataclass(frozen=True, kw_only=True)
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; a body that is not JSON is the peer's fault (502)."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise RemoteProtocolError(
                f"answer ({self.status}) is not JSON: {self.body[:80]!r}", 502) from None

    def error_detail(self) -> str:
        """A one-line reason from an error answer (its ``detail``/``error``, or its text)."""
        try:
            doc = json.loads(self.body)
            if isinstance(doc, dict):
                return str(doc.get("detail") or doc.get("error") or doc)[:300]
        except (ValueError, UnicodeDecodeError):
            pass
        return self.body[:200].decode("utf-8", "replace")


@dataclass(frozen=True)
class StreamBody:
    """A request body sent as it is produced: ``length`` bytes from ``chunks``."""

    chunks: AsyncIterable[bytes]
    length: int


def split_url(url: str) -> tuple[str, int, str, str]:
    """``(host, port, netloc, target)`` of an ``http://`` URL.

    Raises:
        LocalProtocolError: not an http URL with a host.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        raise LocalProtocolError(f"unsupported URL {url!r}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise LocalProtocolError(f"unsupported URL {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, parts.netloc, target


class _Conn:
    __slots__ = ("h11", "peer", "stream")

    def __init__(self, stream: trio.SocketStream, peer: str) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.peer = peer


class _Stale(VStackError):
    """A reused connection failed before any answer: try a fresh one."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class HttpClient:
    """A pool of keep-alive connections; use ``async with HttpClient() as c`` or
    call :meth:`aclose`."""

    def __init__(self, *, max_bytes: int = MAX_RESPONSE_BYTES, max_idle_per_host: int = 8,
                 max_per_host: int = 64, headers: Sequence[tuple[str, str]] = (),
                 connect_timeout: float = CONNECT_SECONDS) -> None:
        """``headers`` go with every request (a service's ``Authorization``)."""
        self.headers = list(headers)
        self.connect_timeout = connect_timeout
        self.max_bytes = max_bytes
        self.max_idle_per_host = max_idle_per_host
        self.max_per_host = max_per_host
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._limits: dict[tuple[str, int], trio.Semaphore] = {}
        self._closed = False

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | StreamBody = b"",
        json_body: Any = None,
        headers: list[tuple[str, str]] | None = None,
        retry: bool | None = None,
        max_bytes: int | None = None,
        on_sent: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> HttpResult:
        """Send a request and read the whole answer.

        Args:
            retry: repeat on a fresh connection if a reused one fails before
                any answer (default: only for idempotent methods).
            on_sent: called with each body piece's size as it is sent (for
                progress bars).

        Raises:
            PeerUnreachable, ConnectionLost: the exchange failed.
            RemoteProtocolError: the server broke HTTP or sent too much.
            LocalProtocolError: the URL is not http://host[:port]/...
        """
        if self._closed:
            raise LocalProtocolError("HTTP client is closed")
        host, port, netloc, target = split_url(url)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = [*(headers or []), ("Content-Type", "application/json")]
        hdrs = [("Host", netloc), *self.headers, *(headers or [])]
        length = body.length if isinstance(body, StreamBody) else len(body)
        if length or method in ("POST", "PUT", "PATCH"):
            hdrs.append(("Content-Length", str(length)))
        may_repeat = (method in IDEMPOTENT if retry is None else retry) and not isinstance(
            body, StreamBody)
        key = (host, port)
        limit = self._limits.setdefault(key, trio.Semaphore(self.max_per_host))
        async with limit:
            for attempt in range(2):
                conn = await self._take_idle(key) if attempt == 0 else None  # a retry goes fresh
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(host, port)
                try:
                    result = await self._exchange(conn, method, target, hdrs, body,
                                                  max_bytes or self.max_bytes, reused, on_sent)
                except _Stale as stale:
                    await _close(conn)
                    if not may_repeat:
                        raise stale.cause from None
                    continue
                except BaseException:
                    await _close(conn)  # cancelled or failed mid-exchange: unusable
                    raise
                await self._release(key, conn)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _take_idle(self, key: tuple[str, int]) -> _Conn | None:
        """The most recent idle connection the server has not closed meanwhile."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not _readable(conn):
                return conn
            await _close(conn)  # EOF (closed while idle) or bytes nobody asked for
        return None

    async def _connect(self, host: str, port: int) -> _Conn:
        return _Conn(await open_tcp(host, port, seconds=self.connect_timeout), f"{host}:{port}")

    async def _release(self, key: tuple[str, int], conn: _Conn) -> None:
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle_per_host and not self._closed:
                idle.append(conn)
                return
        await _close(conn)

    async def _exchange(self, conn: _Conn, method: str, target: str,
                        hdrs: list[tuple[str, str]], body: bytes | StreamBody, max_bytes: int,
                        reused: bool,
                        on_sent: Callable[[int], Awaitable[None] | None] | None) -> HttpResult:
        answered = False
        try:
            with map_io_errors(conn.peer):
                out = conn.h11.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
                if isinstance(body, StreamBody):
                    await conn.stream.send_all(out)
                    try:
                        await _send_stream(conn, body, on_sent)
                    except ConnectionLost:
                        # The server may have answered early and closed (413: too
                        # large): that answer is the one to report.
                        early = await _early_answer(conn, max_bytes)
                        if early is None:
                            raise
                        return early
                    out = b""
                elif body:
                    out += conn.h11.send(h11.Data(data=body)) or b""
                out += conn.h11.send(h11.EndOfMessage()) or b""
                await conn.stream.send_all(out)
                status, resp_headers, chunks, seen = 0, {}, [], 0
                while True:
                    event = conn.h11.next_event()
                    if event is h11.NEED_DATA:
                        data = await conn.stream.receive_some(_RECV)
                        conn.h11.receive_data(data)
                        if not data and not answered:
                            raise ConnectionLost(f"{conn.peer} closed the connection")
                        continue
                    answered = True
                    if isinstance(event, h11.Response):
                        status = event.status_code
                        resp_headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                                        for k, v in event.headers}
                    elif isinstance(event, h11.Data):
                        seen += len(event.data)
                        if seen > max_bytes:
                            raise RemoteProtocolError(
                                f"answer from {conn.peer} larger than {max_bytes} bytes", 502)
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        return HttpResult(status=status, headers=resp_headers,
                                          body=b"".join(chunks))
                    elif isinstance(event, h11.ConnectionClosed):
                        raise ConnectionLost(f"{conn.peer} closed the connection mid-answer")
        except ConnectionLost as exc:
            if reused and not answered:
                raise _Stale(exc) from exc
            raise

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await _close(conn)


async def _send_stream(conn: _Conn, body: StreamBody,
                       on_sent: Callable[[int], Awaitable[None] | None] | None) -> None:
    sent = 0
    try:
        with map_io_errors(conn.peer):
            async for piece in body.chunks:
                sent += len(piece)
                if sent > body.length:
                    raise LocalProtocolError("request body longer than its length")
                await conn.stream.send_all(conn.h11.send(h11.Data(data=piece)) or b"")
                if on_sent is not None:
                    maybe = on_sent(len(piece))
                    if maybe is not None:
                        await maybe
    finally:
        aclose = getattr(body.chunks, "aclose", None)  # an async generator: finish it now
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()


async def _early_answer(conn: _Conn, max_bytes: int) -> HttpResult | None:
    """A complete answer the server sent before it stopped reading our body, if any."""
    status, headers, chunks = 0, {}, []
    with trio.move_on_after(2):
        try:
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    data = await conn.stream.receive_some(_RECV)
                    if not data:
                        return None
                    conn.h11.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                               for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                    if sum(map(len, chunks)) > max_bytes:
                        return None
                elif isinstance(event, h11.EndOfMessage) and status:
                    return HttpResult(status=status, headers=headers, body=b"".join(chunks))
                else:
                    return None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return None
    return None


def _readable(conn: _Conn) -> bool:
    """Whether an idle connection has something to read: it is then unusable."""
    unread, closed = conn.h11.trailing_data  # read with the last answer, after its end
    if unread or closed:
        return True
    try:
        poller = select.poll()
        poller.register(conn.stream.socket.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed already
        return True


async def _close(conn: _Conn) -> None:
    with trio.move_on_after(1) as cs:
        cs.shield = True
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await conn.stream.aclose()


async def request(method: str, url: str, **kwargs: Any) -> HttpResult:
    """One request on a fresh connection, closed afterwards (for rare calls and tests)."""
    async with HttpClient(max_idle_per_host=0) as client:
        return await client.request(method, url, **kwargs)
