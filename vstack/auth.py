"""Who may call what: the cluster's security model, as pure functions.

Every endpoint is in one class of :class:`Access`:

========  =====================================  ==================================
class     what                                   who may call it
========  =====================================  ==================================
PUBLIC    health, ping, banner                   anyone
READ      manifests, chunks, lists, statistics   anyone while ``PUBLIC_READS`` (the
                                                 default); else as USER
USER      users' writes: create, upload, status, ``Authorization: Bearer API_TOKEN``
          delete, overrides, views               (or the cluster secret)
CLUSTER   service to service: registration,      ``Authorization: Bearer
          heartbeats, chunk PUT/DELETE, commits  CLUSTER_SECRET``
========  =====================================  ==================================

With no secret configured for a class, a caller on the loopback interface
needs none (Redis's protected mode): the embedded cluster and the existing
clients, which send no credentials, keep working on one machine. A service
bound beyond loopback refuses to start unless ``CLUSTER_SECRET`` is set or
``VSTACK_INSECURE=1`` says, loudly, that anyone who reaches the port may
write (:func:`check_bind`).

Secrets are compared in constant time. Replica-to-replica traffic is
authenticated separately, by an HMAC of every frame under the same cluster
secret (:mod:`protocol.consensus`).
"""

from __future__ import annotations

import enum
import functools
import hmac
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from protocol.errors import ProtocolError

__all__ = ["MIN_SECRET_BYTES", "Access", "AuthError", "AuthPolicy", "check_bind", "is_loopback",
           "local_request", "parse_bearer"]

MIN_SECRET_BYTES = 16


class Access(enum.Enum):
    PUBLIC = "public"
    READ = "read"
    USER = "user"
    CLUSTER = "cluster"


class AuthError(ProtocolError):
    """Missing or wrong credentials (401)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, 401)


@functools.lru_cache(maxsize=4096)  # asked per request, of a connection's peer
def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is on the loopback interface.

    Names other than ``localhost`` are not resolved, and count as not loopback;
    so do the wildcard addresses (``0.0.0.0``, ``::``, empty).
    """
    host = host.strip("[]").split("%")[0]
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def local_request(origin: str | None, host: str | None) -> bool:
    """No browser of another site behind it: no ``Origin``, or an ``http(s)`` one naming
    a loopback host and nothing else; no ``Host``, or a loopback name (any case, one
    trailing dot allowed, as resolvers do)."""
    if origin is not None:
        try:
            parts = urlsplit(origin)
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError:
            return False
        if (parts.scheme not in ("http", "https") or parts.path not in ("", "/")
                or parts.query or parts.fragment or not _loopback_authority(parts.netloc)):
            return False
    return host is None or _loopback_authority(host)


#: ``host[:port]`` with nothing else in it: a name or IPv4 address, or an IPv6 one in brackets.
_AUTHORITY = re.compile(r"^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+))(?::\d{1,5})?$")


def _loopback_authority(value: str) -> bool:
    m = _AUTHORITY.match(value.strip())
    if m is None:
        return False
    name = (m.group(1) or m.group(2)).lower()
    return is_loopback(name[:-1] if name.endswith(".") else name)


def parse_bearer(header: str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("latin-1")


def _same(given: bytes | None, secret: bytes | None) -> bool:
    return given is not None and secret is not None and hmac.compare_digest(given, secret)


@dataclass(frozen=True, kw_only=True)
class AuthPolicy:
    """The secrets a service was started with, and what they guard."""

    cluster_secret: bytes | None = None
    api_token: bytes | None = None
    public_reads: bool = True
    insecure: bool = False  # VSTACK_INSECURE: unauthenticated callers from anywhere, as on loopback

    def __post_init__(self) -> None:
        for name, value in (("CLUSTER_SECRET", self.cluster_secret), ("API_TOKEN", self.api_token)):
            if value is not None and len(value) < MIN_SECRET_BYTES:
                raise ValueError(f"{name} must be at least {MIN_SECRET_BYTES} bytes")
            if value is not None and (value != value.strip() or not all(
                    0x20 <= c < 0x7F for c in value)):
                raise ValueError(f"{name} must be printable ASCII, no spaces at either end")

    def allows(self, access: Access, bearer: bytes | None, peer: str, *,
               origin: str | None = None, host: str | None = None) -> bool:
        """Whether a caller at address ``peer`` presenting ``bearer`` may make a call of ``access``.

        ``origin`` and ``host`` are the request's ``Origin`` and ``Host``
        headers: a loopback caller gets the rights of open mode only if it is
        not a web page of another site (an ``Origin`` that is not loopback) and
        did not reach us under another name (a ``Host`` that is not loopback,
        as after DNS rebinding), so a page the local user visits cannot write
        to a local cluster (Redis's protected mode guards the same way).
        """
        if access is Access.PUBLIC:
            return True
        if _same(bearer, self.cluster_secret):
            return True  # the cluster secret opens everything
        open_here = self.insecure or (is_loopback(peer) and local_request(origin, host))
        if access is Access.CLUSTER:
            return self.cluster_secret is None and open_here
        if access is Access.READ and self.public_reads:
            return True
        # USER, or READ when reads are not public
        if self.api_token is None and self.cluster_secret is None:
            return open_here
        return _same(bearer, self.api_token)

    def check(self, access: Access, authorization: str | None, peer: str, *,
              origin: str | None = None, host: str | None = None) -> None:
        """Raise :class:`AuthError` unless the call is allowed."""
        if not self.allows(access, parse_bearer(authorization), peer, origin=origin, host=host):
            raise _refusal(access, "Authorization: Bearer ...")

    def knows(self, token: bytes) -> bool:
        """Whether ``token`` is one of the configured secrets."""
        return _same(token, self.cluster_secret) or _same(token, self.api_token)

    def check_token(self, access: Access, token: bytes | None, peer: str) -> None:
        """:meth:`check` for a token already taken out of its header (binary protocol)."""
        if not self.allows(access, token, peer):
            raise _refusal(access, "AUTH first")

    def bearer_header(self) -> list[tuple[str, str]]:
        """The header a service sends on its own calls to other services."""
        if self.cluster_secret is None:
            return []
        return [("Authorization", "Bearer " + self.cluster_secret.decode("ascii"))]


def _refusal(access: Access, how: str) -> AuthError:
    what = "the cluster secret" if access is Access.CLUSTER else "an API token"
    return AuthError(f"this call needs {what} ({how})")


def check_bind(host: str, policy: AuthPolicy) -> str | None:
    """Refuse (``ValueError``) to listen beyond loopback with no cluster secret,
    unless insecure; returns a warning to log loudly in that case, else ``None``."""
    if is_loopback(host) or policy.cluster_secret is not None:
        return None
    if not policy.insecure:
        raise ValueError(
            f"refusing to listen on {host or '0.0.0.0'} without CLUSTER_SECRET: anyone who "
            "reaches the port could write and delete. Set CLUSTER_SECRET (and API_TOKEN for "
            "users' writes), bind HOST=127.0.0.1, or set VSTACK_INSECURE=1 to run open anyway")
    return (f"VSTACK_INSECURE=1: listening on {host or '0.0.0.0'} with NO authentication; anyone "
            "who reaches this port can create, change and delete videos and chunks")
