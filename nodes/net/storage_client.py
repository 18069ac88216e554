"""Connections from a service (the uploader, the metadata service) to the storage nodes.

One pipelined binary-protocol connection per node, opened on first use:
the node's binary port is read from its ``/health``. A node whose binary
port cannot be reached is written to over HTTP instead. Every write is
acknowledged only after the node's fsync, as the node guarantees.

Errors come out as :class:`~protocol.errors.ProtocolError` subclasses
only: :class:`~protocol.errors.TransportError` when the node could not be
talked to, the node's own status otherwise.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio

from protocol.api import decode_answer
from protocol.errors import ProtocolError, RemoteProtocolError, TransportError, VStackError
from protocol.node_api import NodeHealth

from .connect import open_tcp
from .errors import deadline
from .frame_client import FrameClient, Payload
from .http_client import HttpClient

__all__ = ["StoragePool", "open_storage_pool"]

log = logging.getLogger("vstack.storage.pool")

MAX_PAYLOAD = 64 * 1024 * 1024


class StoragePool:
    def __init__(self, nursery: trio.Nursery, http: HttpClient, *,
                 secret: bytes | None = None, binary: bool = True) -> None:
        """``secret``: the cluster secret (or a user's API token), presented on each
        binary connection; ``binary=False``: HTTP only (e.g. to reach nodes through
        proxies that forward their HTTP port alone)."""
        self._nursery = nursery
        self.http = http
        self.secret = secret
        self.binary = binary
        self._clients: dict[str, FrameClient] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def health(self, node_url: str) -> NodeHealth:
        """A node's ``/health``, checked.

        Raises:
            TransportError: unreachable; RemoteProtocolError: not a node's answer.
        """
        res = await self.http.request("GET", node_url + "/health")
        if res.status not in (200, 503):
            raise RemoteProtocolError(f"{node_url}/health answered {res.status}", 502)
        return decode_answer(NodeHealth.from_json, res.json(), f"{node_url}/health")

    async def _client(self, node_url: str) -> FrameClient | None:
        if not self.binary:
            return None
        lock = self._locks.setdefault(node_url, trio.Lock())
        async with lock:
            client = self._clients.pop(node_url, None)
            if client is not None:
                if client.usable:
                    self._clients[node_url] = client
                    return client
                await client.aclose()  # broken (the node went away): its socket too
            # A node that does not answer its health check is unreachable: that is
            # the caller's error, not a reason to try HTTP (a cut link would cost
            # the caller a second wait).
            with deadline(5, f"connecting to {node_url}"):
                info = await self.health(node_url)
            try:
                with deadline(5, f"connecting to {node_url}"):
                    host = urlsplit(node_url).hostname or "127.0.0.1"
                    stream = await open_tcp(host, info.binary_port)
            except VStackError as exc:
                log.debug("no binary connection to %s: %s", node_url, exc)
                return None
            client = FrameClient(stream, max_payload=MAX_PAYLOAD, peer=node_url)
            self._nursery.start_soon(client.run_reader)
            if self.secret is not None and info.auth_required:
                try:
                    with deadline(5, f"authenticating to {node_url}"):
                        await client.authenticate(self.secret)
                except VStackError as exc:
                    log.warning("binary connection to %s refused our secret: %s", node_url, exc)
                    await client.aclose()
                    return None
            self._clients[node_url] = client
            return client

    async def put(self, node_url: str, chunk_id: str, data: Payload, sha256_hex: str) -> None:
        """Store a chunk on a node (201 or 200 both mean it is there).

        Raises:
            ProtocolError: the node refused (its status) or could not be
                reached (a TransportError).
        """
        client = await self._client(node_url)
        if client is not None:
            _, info = await client.put(chunk_id, data)
            if info.sha256.hex() != sha256_hex:
                raise RemoteProtocolError(f"{node_url} stored different bytes", 502)
            return
        res = await self.http.request("PUT", f"{node_url}/chunk/{chunk_id}", body=bytes(data),
                                      headers=[("X-Checksum", sha256_hex)])
        if res.status not in (200, 201):
            raise ProtocolError(f"{node_url} answered {res.status}: {res.error_detail()}",
                                res.status)

    async def holds(self, node_url: str, chunk_id: str, sha256_hex: str) -> bool:
        """Does the node hold the chunk with this SHA-256 (a binary HEAD, else HTTP)?
        ``False`` if the node cannot be reached."""
        try:
            client = await self._client(node_url)
        except VStackError:
            return False
        if client is not None:
            try:
                info = await client.head(chunk_id)
            except TransportError:
                pass  # the connection broke: ask over HTTP once
            except ProtocolError:
                return False  # 404, or the node's copy is corrupt (500)
            else:
                return info.sha256.hex() == sha256_hex
        try:
            res = await self.http.request("HEAD", f"{node_url}/chunk/{chunk_id}")
        except VStackError:
            return False
        return res.status == 200 and res.headers.get("etag", "").strip('"') == sha256_hex

    async def get(self, node_url: str, chunk_id: str, sha256_hex: str) -> bytes:
        """A chunk's bytes, checked against ``sha256_hex`` (binary GET, else HTTP).

        Raises:
            ProtocolError: not there (404), corrupt there (500), or different bytes (502).
            TransportError: the node could not be reached.
        """
        client = await self._client(node_url)
        data: bytes | bytearray | None = None
        if client is not None:
            try:
                data = await client.get(chunk_id)
            except TransportError:
                data = None  # the connection broke: ask over HTTP once
        if data is None:
            res = await self.http.request("GET", f"{node_url}/chunk/{chunk_id}",
                                          max_bytes=MAX_PAYLOAD)
            if res.status != 200:
                raise ProtocolError(f"{node_url} answered {res.status}: {res.error_detail()}",
                                    res.status)
            data = res.body
        if hashlib.sha256(data).hexdigest() != sha256_hex:
            raise RemoteProtocolError(f"{node_url} sent {chunk_id} with the wrong SHA-256", 502)
        return bytes(data)

    async def ping(self, node_url: str) -> None:
        """One round trip to the node: a binary ``PING``, else ``HEAD /ping``.

        Raises:
            ProtocolError: the node did not answer, or not with success.
        """
        client = await self._client(node_url)
        if client is not None:
            try:
                await client.ping()
                return
            except TransportError:
                pass  # the connection broke: ask over HTTP once
        res = await self.http.request("HEAD", f"{node_url}/ping")
        if res.status != 200:
            raise ProtocolError(f"{node_url}/ping answered {res.status}", res.status)

    async def list_page(self, node_url: str, cursor: int, limit: int = 1000
                        ) -> tuple[list[tuple[str, str]], int | None]:
        """A page of ``(stored id, SHA-256)`` the node holds, and the next cursor."""
        res = await self.http.request("GET", f"{node_url}/chunks?cursor={cursor}&limit={limit}",
                                      max_bytes=64 * 1024 + 160 * limit)
        if res.status != 200:
            raise ProtocolError(f"{node_url}/chunks answered {res.status}: {res.error_detail()}",
                                res.status)

        def parse(d: Any) -> tuple[list[tuple[str, str]], int | None]:
            after = d["next_cursor"]
            if after is not None and (not isinstance(after, int) or after <= cursor):
                raise ValueError("next_cursor must move forward")
            return [(str(c["chunk_id"]), str(c["checksum"])) for c in d["chunks"]], after

        return decode_answer(parse, res.json(), f"{node_url}/chunks")

    async def delete_many(self, node_url: str, chunk_ids: list[str]) -> int:
        """Best effort, pipelined on one binary connection; returns how many existed
        (0 if the node cannot be reached: never raises)."""
        try:
            client = await self._client(node_url)
        except VStackError as exc:
            log.warning("could not delete %d chunks from %s: %s", len(chunk_ids), node_url, exc)
            return 0
        if client is None:
            for chunk_id in chunk_ids:
                await self.delete(node_url, chunk_id)
            return 0
        found = 0
        limit = trio.Semaphore(32)

        async def one(chunk_id: str) -> None:
            nonlocal found
            async with limit:
                try:
                    await client.delete(chunk_id)
                    found += 1
                except VStackError:
                    pass  # 404: never stored there; or the node went away

        async with trio.open_nursery() as nursery:
            for chunk_id in chunk_ids:
                nursery.start_soon(one, chunk_id)
        return found

    async def delete(self, node_url: str, chunk_id: str) -> bool:
        """Best effort; ``True`` if the node no longer holds it (deleted or never there)."""
        try:
            with deadline(5, f"DELETE on {node_url}"):
                res = await self.http.request("DELETE", f"{node_url}/chunk/{chunk_id}")
        except VStackError as exc:
            log.warning("could not delete %s from %s: %s", chunk_id, node_url, exc)
            return False
        return res.status in (204, 404)

    async def discard(self, node_url: str) -> None:
        """Close the node's binary connection (one that hung, say): the next request
        opens a new one."""
        client = self._clients.pop(node_url, None)
        if client is not None:
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


@asynccontextmanager
async def open_storage_pool(http: HttpClient | None = None, *, secret: bytes | None = None,
                            binary: bool = True) -> AsyncIterator[StoragePool]:
    own = http is None
    client = http or HttpClient()
    async with trio.open_nursery() as nursery:
        pool = StoragePool(nursery, client, secret=secret, binary=binary)
        try:
            yield pool
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
                if own:
                    await client.aclose()
            nursery.cancel_scope.cancel()
