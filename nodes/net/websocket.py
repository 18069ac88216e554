"""Websockets on the services' HTTP port (trio-websocket over a taken-over connection).

A route answers a websocket handshake with :func:`websocket_response`: the
HTTP server hands it the connection (:attr:`protocol.http.Response.takeover`),
trio-websocket reads the handshake again from the replayed head and accepts
it, and ``handler`` runs with the open websocket. :func:`push_forever` is what
the dashboards do with it: send a JSON message every ``interval`` seconds; a
browser that does not take a message within ``send_timeout`` is dropped,
never buffered for (a slow or stopped tab cannot hold the service's memory).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from protocol.errors import ProtocolError
from protocol.http import Request, Response, json_bytes

__all__ = ["push_forever", "websocket_response"]

log = logging.getLogger("vstack.websocket")

#: A browser must finish the handshake within this.
HANDSHAKE_SEC: Final = 10.0
#: Messages from the browser are tiny (or none): anything larger closes it.
MAX_MESSAGE: Final = 64 * 1024

WsHandler = Callable[[WebSocketConnection], Awaitable[None]]


def websocket_response(request: Request, handler: WsHandler) -> Response:
    """Take the connection over and run ``handler`` on the accepted websocket.

    Browsers apply no same-origin rule to websockets: a page of any site could
    open one to this service and read what it pushes. So a handshake whose
    ``Origin`` is not this service's own (scheme aside, its host and port as the
    request's ``Host`` names them) is refused; tools that send no ``Origin``
    are not browsers and pass.

    Raises:
        ProtocolError: 400, the request is not a websocket handshake; 403, it
            comes from a page of another site.
    """
    if "websocket" not in (request.header("upgrade") or "").lower():
        raise ProtocolError("this URL is a websocket: connect with Upgrade: websocket", 400)
    origin = request.header("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != \
            (request.header("host") or "").lower():
        raise ProtocolError("a websocket from a page of another site is refused", 403)

    async def takeover(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            ws: WebSocketConnection | None = None
            with trio.move_on_after(HANDSHAKE_SEC):
                req = await wrap_server_stream(nursery, stream, message_queue_size=4,
                                               max_message_size=MAX_MESSAGE)
                ws = await req.accept()
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            try:
                await handler(ws)
            except ConnectionClosed:
                pass
            finally:
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()

    return Response(status=101, takeover=takeover)


async def push_forever(ws: WebSocketConnection, message: Callable[[], Any], *,
                       interval: float, send_timeout: float = 5.0) -> None:
    """Send ``message()`` (a JSON text, or an object made JSON here, non-finite numbers
    as null) now and every ``interval`` seconds until the browser leaves, or is too
    slow to take one (then it is dropped)."""

    async def drain_incoming(done: trio.CancelScope) -> None:
        try:
            while True:
                await ws.get_message()  # anything the page sends: read and ignored
        except ConnectionClosed:
            done.cancel()

    async def send_loop(done: trio.CancelScope) -> None:
        try:
            while True:
                made = message()
                data = made if isinstance(made, str) else json_bytes(made).decode()
                with trio.move_on_after(send_timeout) as scope:
                    await ws.send_message(data)
                if scope.cancelled_caught:
                    log.info("dropping a websocket that does not read (%s)", ws.remote)
                    break
                await trio.sleep(interval)
        except ConnectionClosed:
            pass
        done.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_incoming, nursery.cancel_scope)
        nursery.start_soon(send_loop, nursery.cancel_scope)
