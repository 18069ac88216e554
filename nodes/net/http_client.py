"""Minimal trio HTTP/1.1 clients over h11, for calls between services.

:func:`request` makes one request on a fresh connection (``Connection:
close``): for rare calls (registration, heartbeats, checks), where a fresh
connection never carries state from a failed call. :class:`KeepAliveClient`
keeps one connection to one server open and sends requests on it in turn:
for the steady traffic between metadata replicas. Timeouts belong to the
caller (``with trio.fail_after(...)``). Response bodies are capped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from protocol.errors import RemoteProtocolError

__all__ = ["HttpResult", "KeepAliveClient", "request"]

MAX_RESPONSE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _split(url: str) -> tuple[str, int, str, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"unsupported URL {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, parts.netloc, target


def _encode(conn: h11.Connection, method: str, netloc: str, target: str, body: bytes,
            json_body: Any, headers: list[tuple[str, str]] | None, close: bool) -> bytes:
    hdrs = [("Host", netloc), *(headers or [])]
    if close:
        hdrs.append(("Connection", "close"))
    if json_body is not None:
        body = json.dumps(json_body).encode()
        hdrs.append(("Content-Type", "application/json"))
    if body or method in ("POST", "PUT", "PATCH"):
        hdrs.append(("Content-Length", str(len(body))))
    out = conn.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
    if body:
        out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out


async def _read_response(conn: h11.Connection, stream: trio.abc.ReceiveStream,
                         max_bytes: int) -> HttpResult:
    status, resp_headers, chunks, seen = 0, {}, [], 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise RemoteProtocolError(f"bad HTTP response: {exc}", 502) from exc
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(256 * 1024))  # type: ignore[arg-type]
        elif isinstance(event, h11.Response):
            status = event.status_code
            resp_headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            seen += len(event.data)
            if seen > max_bytes:
                raise RemoteProtocolError("response body too large", 502)
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise trio.BrokenResourceError("connection closed before the response ended")
    return HttpResult(status=status, headers=resp_headers, body=b"".join(chunks))


async def request(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    json_body: Any = None,
    headers: list[tuple[str, str]] | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> HttpResult:
    """Send one request on a new connection and read the whole response.

    Raises:
        OSError: the connection failed.
        trio.BrokenResourceError: the connection broke mid-response.
        RemoteProtocolError: the server broke HTTP or sent too much.
    """
    host, port, netloc, target = _split(url)
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(_encode(conn, method, netloc, target, body, json_body, headers, True))
        return await _read_response(conn, stream, max_bytes)


class KeepAliveClient:
    """One persistent connection to one server; requests take turns on it.

    A request that fails on a reused connection (the server may have closed
    it while idle) is retried once on a fresh one, so only use this for
    requests that are safe to repeat.
    """

    def __init__(self, base_url: str, *, max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.host, self.port, self.netloc, _ = _split(base_url.rstrip("/") + "/")
        self.max_bytes = max_bytes
        self._stream: trio.SocketStream | None = None
        self._conn: h11.Connection | None = None
        self._lock = trio.Lock()

    async def request(self, method: str, path: str, *, json_body: Any = None, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> HttpResult:
        async with self._lock:
            for attempt in range(2):
                fresh = self._stream is None
                try:
                    if self._stream is None:
                        self._stream = await trio.open_tcp_stream(self.host, self.port)
                        self._conn = h11.Connection(h11.CLIENT)
                    assert self._conn is not None
                    data = _encode(self._conn, method, self.netloc, path, body, json_body, headers,
                                   False)
                    await self._stream.send_all(data)
                    result = await _read_response(self._conn, self._stream, self.max_bytes)
                    if self._conn.our_state is h11.MUST_CLOSE:
                        await self._drop()
                    else:
                        self._conn.start_next_cycle()
                    return result
                except (OSError, trio.BrokenResourceError, RemoteProtocolError,
                        h11.LocalProtocolError):
                    await self._drop()
                    if fresh or attempt:
                        raise
                except BaseException:
                    await self._drop()  # cancelled mid-request: the connection is unusable
                    raise
            raise AssertionError("unreachable")

    async def _drop(self) -> None:
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await stream.aclose()

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()

