"""Naming storage nodes: internal URLs, public URLs and aliases.

A storage node may be named by the URL it registered (``node_url``), by a
Docker-network name (``http://storage-node-1:8081``), or by an alias the
operator configured. :class:`AliasTable` maps any of these to the URL this
service can reach (for its checks) and to the URL callers can reach (for
manifests), so the embedded cluster answers the Docker names the existing
clients and tests use.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["AliasTable", "normalize_url", "parse_aliases"]


def normalize_url(url: str) -> str:
    """Scheme and host lowercased, no trailing slash."""
    url = url.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}"


def parse_aliases(text: str) -> tuple[tuple[str, str], ...]:
    """``"name=url,name=url"`` as pairs; raises ValueError on a malformed entry."""
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(f"alias {item!r} is not name=url")
        pairs.append((normalize_url(name), normalize_url(target)))
    return tuple(pairs)


class AliasTable:
    """Resolves a node name to a reachable URL; unknown names pass through."""

    def __init__(self, aliases: Iterable[tuple[str, str]] = ()) -> None:
        self._map = {normalize_url(a): normalize_url(b) for a, b in aliases}

    def resolve(self, url: str) -> str:
        """The URL to use for ``url`` (an alias's target, else ``url`` itself)."""
        u = normalize_url(url)
        return self._map.get(u, u)

    def public(self, url: str) -> str:
        """What a manifest shows for ``url``: reachable by the caller."""
        return self.resolve(url)

    def same_node(self, a: str, b: str) -> bool:
        return self.resolve(a) == self.resolve(b)

    def as_dict(self) -> dict[str, str]:
        return dict(self._map)
