"""Connections from a service (the uploader, the metadata service) to the storage nodes.

One pipelined binary-protocol connection per node, opened on first use:
the node's binary port is read from its ``/health``. A node whose binary
port cannot be reached is written to over HTTP instead. Every write is
acknowledged only after the node's fsync, as the node guarantees.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio

from protocol.errors import ProtocolError

from .frame_client import FrameClient
from .http_client import request

__all__ = ["StoragePool", "open_storage_pool"]

log = logging.getLogger("vstack.storage.pool")


class StoragePool:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._clients: dict[str, FrameClient] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def _client(self, node_url: str) -> FrameClient | None:
        lock = self._locks.setdefault(node_url, trio.Lock())
        async with lock:
            client = self._clients.get(node_url)
            if client is not None and client.usable:
                return client
            try:
                with trio.fail_after(5):
                    info = (await request("GET", node_url + "/health")).json()
                port = int(info["binary_port"])
                host = urlsplit(node_url).hostname or "127.0.0.1"
                stream = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, ProtocolError,
                    ValueError, KeyError, TypeError):
                return None
            client = FrameClient(stream, max_payload=64 * 1024 * 1024)
            self._nursery.start_soon(client.run_reader)
            self._clients[node_url] = client
            return client

    async def put(self, node_url: str, chunk_id: str, data: bytes, sha256_hex: str) -> None:
        """Store a chunk on a node (201 or 200 both mean it is there).

        Raises:
            ProtocolError: the node refused (its status) or could not be reached (503).
        """
        client = await self._client(node_url)
        if client is not None:
            try:
                _, info = await client.put(chunk_id, data)
            except trio.BrokenResourceError as exc:
                raise ProtocolError(f"{node_url} went away: {exc}", 503) from exc
            if info.sha256.hex() != sha256_hex:
                raise ProtocolError(f"{node_url} stored different bytes", 502)
            return
        try:
            res = await request("PUT", f"{node_url}/chunk/{chunk_id}", body=data,
                                headers=[("X-Checksum", sha256_hex)])
        except (OSError, trio.BrokenResourceError) as exc:
            raise ProtocolError(f"{node_url} unreachable: {exc}", 503) from exc
        if res.status not in (200, 201):
            raise ProtocolError(f"{node_url} answered {res.status}", res.status)

    async def holds(self, node_url: str, chunk_id: str, sha256_hex: str) -> bool:
        """Does the node hold the chunk with this SHA-256 (a binary HEAD, else HTTP)?"""
        client = await self._client(node_url)
        if client is not None:
            try:
                info = await client.head(chunk_id)
            except ProtocolError:
                return False  # 404, or the node's copy is corrupt (500)
            except trio.BrokenResourceError:
                pass  # the connection broke: ask over HTTP once
            else:
                return info.sha256.hex() == sha256_hex
        try:
            res = await request("HEAD", f"{node_url}/chunk/{chunk_id}")
        except (OSError, trio.BrokenResourceError, ProtocolError):
            return False
        return res.status == 200 and res.headers.get("etag", "").strip('"') == sha256_hex

    async def delete_many(self, node_url: str, chunk_ids: list[str]) -> int:
        """Best effort, pipelined on one binary connection; returns how many existed."""
        client = await self._client(node_url)
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
                except (ProtocolError, trio.BrokenResourceError):
                    pass  # 404: never stored there

        async with trio.open_nursery() as nursery:
            for chunk_id in chunk_ids:
                nursery.start_soon(one, chunk_id)
        return found

    async def delete(self, node_url: str, chunk_id: str) -> None:
        """Best effort."""
        try:
            with trio.fail_after(5):
                await request("DELETE", f"{node_url}/chunk/{chunk_id}")
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ProtocolError):
            log.warning("could not delete %s from %s", chunk_id, node_url)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


@asynccontextmanager
async def open_storage_pool() -> AsyncIterator[StoragePool]:
    async with trio.open_nursery() as nursery:
        pool = StoragePool(nursery)
        try:
            yield pool
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
            nursery.cancel_scope.cancel()
