"""The one error hierarchy of V-Stack.

Every error a peer or a user can cause carries a wire status (an HTTP-style
code), as h11 and wsproto carry one with every error: the layer that catches
it can answer the peer without guessing.

    VStackError
     +-- ProtocolError(msg, status)
          +-- LocalProtocolError    we were asked to do something invalid
          +-- RemoteProtocolError   the peer sent something invalid
          +-- TransportError        the peer could not be talked to (503)
               +-- PeerUnreachable  connecting failed
               +-- ConnectionLost   the connection broke or closed mid-exchange
               +-- PeerTimeout      no answer before the caller's deadline (504)

OS and trio errors are translated into these once, where bytes meet sockets
(``nodes/net/errors.py``, as httpcore's ``map_exceptions``): every caller
above that line catches :class:`VStackError` subclasses only.
"""

from __future__ import annotations

__all__ = [
    "ConnectionLost",
    "LocalProtocolError",
    "PeerTimeout",
    "PeerUnreachable",
    "ProtocolError",
    "RemoteProtocolError",
    "TransportError",
    "VStackError",
]


class VStackError(Exception):
    """Base class of every error V-Stack raises on purpose."""


class ProtocolError(VStackError):
    """An error with a wire status.

    Args:
        msg: a one-line, human-readable explanation (sent to the peer).
        status: the HTTP-style status code that describes the error (400,
            404, 409, 413, 507, ...). Binary frames carry the same code.
    """

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.msg!r}, status={self.status})"


class LocalProtocolError(ProtocolError):
    """We (or our caller) tried to do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a request that the protocol forbids."""


class TransportError(ProtocolError):
    """Talking to a peer failed: nothing can be concluded from its side.

    A request that failed this way may or may not have taken effect at the
    peer; callers retry only requests that are safe to repeat.
    """

    def __init__(self, msg: str, status: int = 503) -> None:
        super().__init__(msg, status)


class PeerUnreachable(TransportError):
    """The connection could not be opened (refused, no route, bad address)."""


class ConnectionLost(TransportError):
    """The connection broke, or the peer closed it, before the exchange ended."""


class PeerTimeout(TransportError):
    """The peer did not answer before the caller's deadline."""

    def __init__(self, msg: str, status: int = 504) -> None:
        super().__init__(msg, status)
