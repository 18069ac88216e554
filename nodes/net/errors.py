"""Where bytes meet sockets: trio and OS errors become V-Stack errors, once.

Every client in :mod:`nodes.net` wraps its socket work in
:func:`map_io_errors` (httpcore's ``map_exceptions`` is the model), and every
caller that sets a deadline uses :func:`deadline` instead of a bare
``trio.fail_after``. Above this module nobody catches ``OSError``,
``trio.BrokenResourceError`` or ``trio.TooSlowError``: they catch
:class:`~protocol.errors.VStackError` (or a subclass), and a new kind of
failure is added here, not in fifteen ``except`` tuples.

=================================  ==========================================
raised below                       raised above
=================================  ==========================================
``OSError`` while connecting       :class:`~protocol.errors.PeerUnreachable`
``OSError`` after connecting,      :class:`~protocol.errors.ConnectionLost`
``trio.BrokenResourceError``,
``trio.ClosedResourceError``
``h11.RemoteProtocolError``        :class:`~protocol.errors.RemoteProtocolError`
``h11.LocalProtocolError``         :class:`~protocol.errors.LocalProtocolError`
``trio.TooSlowError`` (deadline)   :class:`~protocol.errors.PeerTimeout`
=================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import h11
import trio

from protocol.errors import (
    ConnectionLost,
    LocalProtocolError,
    PeerTimeout,
    PeerUnreachable,
    RemoteProtocolError,
)

__all__ = ["deadline", "map_io_errors", "single_error"]


@contextmanager
def map_io_errors(peer: str, *, connecting: bool = False) -> Iterator[None]:
    """Translate the I/O errors of a block talking to ``peer``.

    Args:
        peer: names the other side in the message (a URL or host:port).
        connecting: the block opens the connection, so an ``OSError`` means
            the peer could not be reached at all.
    """
    try:
        yield
    except OSError as exc:
        if connecting:
            raise PeerUnreachable(f"{peer} unreachable: {exc.strerror or exc}") from exc
        raise ConnectionLost(f"connection to {peer} failed: {exc.strerror or exc}") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectionLost(f"connection to {peer} lost: {exc or 'closed'}") from exc
    except h11.RemoteProtocolError as exc:
        raise RemoteProtocolError(f"{peer} broke HTTP: {exc}", 502) from exc
    except h11.LocalProtocolError as exc:  # we built a bad request: our fault, not the peer's
        raise LocalProtocolError(f"bad request to {peer}: {exc}", 400) from exc


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """``trio.fail_after(seconds)`` raising :class:`PeerTimeout` naming ``what``."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise PeerTimeout(f"{what}: no answer within {seconds:g} s") from None


def single_error(exc: BaseException) -> BaseException:
    """The one error inside nested exception groups of one (else ``exc`` itself):
    what a nursery that failed for one reason raised, as a caller reports it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
