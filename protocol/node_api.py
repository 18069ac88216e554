"""Messages about storage nodes: registration, heartbeats, health, listings.

The same rules as :mod:`protocol.api`: frozen dataclasses, ``from_json``
validates once (a 422 problem list for a request, a ValueError that
:func:`~protocol.api.decode_answer` turns into a 502 for an answer),
``to_json`` spells the wire form.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .api import MAX_NODE_ID, MAX_URL, json_object
from .errors import ProtocolError
from .validate import Validator

__all__ = ["Heartbeat", "NodeHealth", "NodeRecord", "NodeRegistration", "node_key_digest"]

#: A node id: letters, digits, dot, dash, underscore (no spaces or control characters:
#: ids end up in logs and URLs).
NODE_ID_PATTERN = r"[A-Za-z0-9._-]{1,128}"

#: A node key: 16-256 printable ASCII characters, the node's own secret identity.
NODE_KEY_PATTERN = r"[!-~]{16,256}"


def check_node_url(url: str) -> None:
    """A node's base URL: ``http(s)://host[:port]``, nothing else (no user, path, query).

    Raises:
        ProtocolError: 400, with what is wrong.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ProtocolError("Invalid node_url: bad host or port", 400) from None
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username
            or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment
            or (port is not None and not 0 < port < 65536)):
        raise ProtocolError("Invalid node_url: must be http(s)://host[:port] with no user, "
                            "path, query or fragment", 400)


def node_key_digest(node_key: str | None) -> str | None:
    """What the cluster stores of a node key: its SHA-256, never the key."""
    return None if node_key is None else hashlib.sha256(node_key.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeRegistration:
    """``POST /nodes/register``: a storage node says where it is."""

    node_url: str
    node_id: str
    version: str
    #: The node's own secret: the first registration that names one binds the
    #: node id to it, and a later one (or a heartbeat) for that id must repeat it.
    node_key: str | None = None

    @classmethod
    def from_json(cls, data: Any, *, default_version: str = "") -> NodeRegistration:
        v = Validator(dict(json_object(data)))
        node_url = v.string("node_url", min_len=1, max_len=MAX_URL)
        node_id = v.string("node_id", min_len=1, max_len=MAX_NODE_ID, pattern=NODE_ID_PATTERN)
        version = v.string("version", required=False, max_len=64, default=default_version)
        node_key = v.string("node_key", required=False, pattern=NODE_KEY_PATTERN)
        v.done()
        if not node_url.startswith(("http://", "https://")):
            raise ProtocolError("Invalid node_url: must start with http:// or https://", 400)
        check_node_url(node_url)
        return cls(node_url=node_url, node_id=node_id, version=version, node_key=node_key)

    def to_json(self) -> dict[str, Any]:
        out = {"node_url": self.node_url, "node_id": self.node_id, "version": self.version}
        if self.node_key is not None:
            out["node_key"] = self.node_key
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class Heartbeat:
    """``POST /nodes/{id}/heartbeat``: a storage node's vital signs."""

    disk_usage_percent: float
    chunk_count: int
    free_bytes: int | None = None
    version: str | None = None
    node_key: str | None = None  # as registered (see NodeRegistration)

    @classmethod
    def from_json(cls, data: Any) -> Heartbeat:
        v = Validator(dict(json_object(data)))
        usage = v.number("disk_usage_percent", ge=0, le=100)
        count = v.integer("chunk_count", ge=0)
        free = v.integer("free_bytes", required=False, ge=0)
        version = v.string("version", required=False, max_len=64)
        node_key = v.string("node_key", required=False, pattern=NODE_KEY_PATTERN)
        v.done()
        return cls(disk_usage_percent=float(usage), chunk_count=count, free_bytes=free,
                   version=version, node_key=node_key)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"disk_usage_percent": self.disk_usage_percent,
                               "chunk_count": self.chunk_count}
        if self.free_bytes is not None:
            out["free_bytes"] = self.free_bytes
        if self.version is not None:
            out["version"] = self.version
        if self.node_key is not None:
            out["node_key"] = self.node_key
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeHealth:
    """What other services read of a storage node's ``GET /health``."""

    node_id: str
    status: str
    disk_usage: float
    chunk_count: int
    free_bytes: int | None
    version: str
    binary_port: int
    #: The node takes writes only from connections that present the cluster secret
    #: (binary ``AUTH``); a node in open mode does not know one, and would refuse it.
    auth_required: bool = False

    @classmethod
    def from_json(cls, data: Any) -> NodeHealth:
        port = int(data.get("binary_port", 0))
        if not 0 <= port < 65536:
            raise ValueError("binary_port out of range")
        usage = float(data.get("disk_usage", 0.0))
        if not 0.0 <= usage <= 100.0:
            raise ValueError("disk_usage out of range")
        free = data.get("free_bytes")
        return cls(node_id=str(data["node_id"]), status=str(data.get("status", "healthy")),
                   disk_usage=usage, chunk_count=max(0, int(data.get("chunk_count", 0))),
                   free_bytes=None if free is None else max(0, int(free)),
                   version=str(data.get("version", "")), binary_port=port,
                   auth_required=data.get("auth_required") is True)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(disk_usage_percent=self.disk_usage, chunk_count=self.chunk_count,
                         free_bytes=self.free_bytes, version=self.version or None)


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeRecord:
    """One storage node as ``/nodes/healthy`` and ``/nodes/all`` list it."""

    node_url: str
    node_id: str
    status: str
    disk_usage_percent: float = 0.0
    chunk_count: int = 0
    free_bytes: int | None = None
    last_heartbeat: str | None = None
    version: str | None = None
    #: The URL manifests show for this node (an alias of ``node_url``), if another one.
    public_url: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> NodeRecord:
        free, public = data.get("free_bytes"), data.get("public_url")
        return cls(node_url=str(data["node_url"]), node_id=str(data["node_id"]),
                   status=str(data.get("status", "healthy")),
                   disk_usage_percent=float(data.get("disk_usage_percent") or 0.0),
                   chunk_count=int(data.get("chunk_count") or 0),
                   free_bytes=None if free is None else int(free),
                   last_heartbeat=data.get("last_heartbeat"), version=data.get("version"),
                   public_url=None if public is None else str(public))

    def to_json(self) -> dict[str, Any]:
        out = {"node_url": self.node_url, "node_id": self.node_id,
               "last_heartbeat": self.last_heartbeat,
               "disk_usage_percent": self.disk_usage_percent, "chunk_count": self.chunk_count,
               "free_bytes": self.free_bytes, "status": self.status, "version": self.version}
        if self.public_url is not None:
            out["public_url"] = self.public_url
        return out
