"""Talking to the metadata service, whichever replica answers.

``METADATA_SERVICE_URL`` may list several replicas; :class:`MetadataClient`
keeps one keep-alive connection per replica, sends each call to the replica
that answered last, and moves on to the next when one is unreachable or
answers 503 (no quorum from its side).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from protocol.errors import ProtocolError

from .http_client import HttpResult, KeepAliveClient

__all__ = ["MetadataClient", "MetadataUnavailable"]

log = logging.getLogger("vstack.metadata.client")


class MetadataUnavailable(ProtocolError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"metadata service unavailable: {detail}", 503)


class MetadataClient:
    def __init__(self, urls: tuple[str, ...], *, timeout: float = 15.0) -> None:
        if not urls:
            raise ValueError("no metadata service URL")
        self.urls = urls
        self.timeout = timeout
        self._clients = [KeepAliveClient(u) for u in urls]
        self._best = 0

    async def call(self, method: str, path: str, json_body: Any = None) -> HttpResult:
        """The first answer that is not a transport failure or a 503."""
        last = "no replica tried"
        for k in range(len(self._clients)):
            i = (self._best + k) % len(self._clients)
            try:
                with trio.fail_after(self.timeout):
                    res = await self._clients[i].request(method, path, json_body=json_body)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, ProtocolError) as exc:
                last = f"{self.urls[i]}: {exc}"
                continue
            if res.status == 503:
                last = f"{self.urls[i]} answered 503"
                continue
            self._best = i
            return res
        raise MetadataUnavailable(last)

    async def json(self, method: str, path: str, json_body: Any = None, *,
                   ok: tuple[int, ...] = (200,)) -> Any:
        res = await self.call(method, path, json_body)
        if res.status not in ok:
            try:
                detail = res.json().get("detail") or res.json().get("error")
            except (ValueError, AttributeError):
                detail = res.body[:200].decode(errors="replace")
            raise ProtocolError(f"metadata {method} {path}: {res.status} {detail}", res.status)
        return res.json()

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()
