"""Opening a TCP connection to another service, within a deadline.

A host whose link is down never refuses a connection: its SYNs are dropped,
and the kernel goes on retrying for minutes. Every service-to-service
connection is opened here, so none waits longer than :data:`CONNECT_SECONDS`
(generous for a cluster's own network) for a host that is not there.
"""

from __future__ import annotations

from typing import Final

import trio

from protocol.errors import PeerUnreachable

from .errors import map_io_errors

__all__ = ["CONNECT_SECONDS", "open_tcp"]

#: Seconds to open a connection.
CONNECT_SECONDS: Final = 5.0


async def open_tcp(host: str, port: int, *, what: str | None = None,
                   seconds: float = CONNECT_SECONDS) -> trio.SocketStream:
    """A connection to ``host:port``.

    Raises:
        PeerUnreachable: refused, no route, or no answer within ``seconds``.
    """
    peer = what or f"{host}:{port}"
    with map_io_errors(peer, connecting=True):
        with trio.move_on_after(seconds):
            return await trio.open_tcp_stream(host, port)
    raise PeerUnreachable(f"{peer} unreachable: no answer to connecting within {seconds:g} s")
