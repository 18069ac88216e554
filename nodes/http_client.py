"""A minimal trio HTTP/1.1 client over h11, for calls between services.

One request per connection (``Connection: close``): calls between V-Stack
services are few and small (registration, heartbeats, commits), and a fresh
connection never carries state from a failed call. Timeouts belong to the
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

__all__ = ["HttpResult", "request"]

MAX_RESPONSE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    json_body: Any = None,
    headers: list[tuple[str, str]] | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> HttpResult:
    """Send one request and read the whole response.

    Raises:
        OSError: the connection failed.
        RemoteProtocolError: the server broke HTTP or sent too much.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"unsupported URL {url!r}")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    hdrs = [("Host", parts.netloc), ("Connection", "close"), *(headers or [])]
    if json_body is not None:
        body = json.dumps(json_body).encode()
        hdrs.append(("Content-Type", "application/json"))
    if body or method in ("POST", "PUT", "PATCH"):
        hdrs.append(("Content-Length", str(len(body))))
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(parts.hostname, port)
    async with stream:
        out = conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        await stream.send_all(out)
        status, resp_headers, chunks, seen = 0, {}, [], 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(f"bad HTTP response: {exc}", 502) from exc
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(256 * 1024))
            elif isinstance(event, h11.Response):
                status = event.status_code
                resp_headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                seen += len(event.data)
                if seen > max_bytes:
                    raise RemoteProtocolError("response body too large", 502)
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return HttpResult(status=status, headers=resp_headers, body=b"".join(chunks))
