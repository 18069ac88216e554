"""Fetching a stored video back, chunk by chunk, verified (a first, simple client).

Reads the manifest (:class:`protocol.api.Manifest`), then downloads chunks
in order, ``ahead`` at once, from the first replica that serves bytes
matching the manifest's SHA-256 (failing over to the next replica
otherwise), and hands each chunk to a sink in sequence. The smart client
(node scoring, buffering, hedging) builds on it.

Theory of operation: one task per chunk fills a :class:`_Slot`; a window
semaphore lets at most ``ahead`` chunks be fetched or waiting to be
delivered; the caller's task delivers the slots in order. A failure (a
chunk no replica serves, or the sink failing, as when the player reading
stdout quits) stops every fetch and is raised *as itself*, never inside an
exception group, so a command-line tool can print it in one line.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from nodes.net.errors import deadline
from nodes.net.http_client import HttpClient
from nodes.net.metadata_client import MetadataClient
from protocol.api import Fragment, Manifest, ManifestChunk
from protocol.errors import ProtocolError, VStackError
from vstack import erasure
from vstack.redundancy import DATA_SHARDS

__all__ = ["FetchFailed", "fetch_chunk", "fetch_shards", "stream_video"]

log = logging.getLogger("vstack.client")

#: How long one replica may take to serve one chunk.
CHUNK_SECONDS: Final = 30.0

Sink = Callable[[bytes], Awaitable[object]]


class FetchFailed(ProtocolError):
    """The video or one of its chunks could not be fetched (404: no such video; 502 otherwise)."""

    def __init__(self, msg: str, status: int = 502) -> None:
        super().__init__(msg, status)


async def fetch_chunk(http: HttpClient, chunk: ManifestChunk) -> bytes:
    """The chunk's bytes from the first replica whose copy checks out.

    Raises:
        FetchFailed: no replica served a copy with the right SHA-256.
    """
    if chunk.fragments:
        return await fetch_shards(http, chunk)
    if not chunk.replicas:
        raise FetchFailed(f"chunk {chunk.sequence_num} has no replica")
    errors: list[str] = []
    for url in chunk.replicas:
        data = await _get_checked(http, url, chunk.chunk_id, chunk.checksum, errors)
        if data is not None:
            return data
    raise FetchFailed(f"chunk {chunk.sequence_num}: no replica served it ({'; '.join(errors)})")


async def fetch_shards(http: HttpClient, chunk: ManifestChunk) -> bytes:
    """An erasure-coded chunk: its shards asked for all at once, the first 3 whose
    SHA-256 checks out decoded (the slower requests are cancelled), the result
    checked against the chunk's own SHA-256.

    Raises:
        FetchFailed: fewer than 3 good shards, or they decode to the wrong bytes.
    """
    assert chunk.fragments
    good: dict[int, bytes] = {}
    errors: list[str] = []

    async def one(f: Fragment, cancel: trio.CancelScope) -> None:
        data = await _get_checked(http, f.node_url, f.fragment_id, f.checksum, errors)
        if data is not None and len(good) < DATA_SHARDS:
            good[f.fragment_index] = data
            if len(good) == DATA_SHARDS:
                cancel.cancel()

    async with trio.open_nursery() as nursery:
        for f in chunk.fragments:
            nursery.start_soon(one, f, nursery.cancel_scope)
    if len(good) < DATA_SHARDS:
        raise FetchFailed(f"chunk {chunk.sequence_num}: only {len(good)} good shards of "
                          f"{len(chunk.fragments)} ({'; '.join(errors)})")
    try:
        data = await trio.to_thread.run_sync(erasure.decode, good)
    except erasure.ErasureError as exc:
        raise FetchFailed(f"chunk {chunk.sequence_num}: {exc}") from None
    if await trio.to_thread.run_sync(_sha256, data) != chunk.checksum:
        raise FetchFailed(f"chunk {chunk.sequence_num}: shards decoded to the wrong bytes")
    return data


async def _get_checked(http: HttpClient, url: str, stored_id: str, sha256_hex: str,
                       errors: list[str]) -> bytes | None:
    """``GET {url}/chunk/{stored_id}`` if its bytes match ``sha256_hex``, else ``None``
    (and why, appended to ``errors``)."""
    try:
        with deadline(CHUNK_SECONDS, f"GET {stored_id} from {url}"):
            res = await http.request("GET", f"{url}/chunk/{stored_id}")
    except VStackError as exc:
        errors.append(str(exc))
        return None
    if res.status != 200:
        errors.append(f"{url}: {res.status}")
        return None
    if await trio.to_thread.run_sync(_sha256, res.body) != sha256_hex:
        errors.append(f"{url}: damaged copy of {stored_id}")
        return None
    return res.body


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def stream_video(metadata: MetadataClient, video_id: str, sink: Sink, *, ahead: int = 4,
                       http: HttpClient | None = None) -> int:
    """Send every chunk of ``video_id`` to ``sink`` in order; returns the byte count.

    Args:
        http: the connection pool for the storage nodes (default: the
            metadata client's).

    Raises:
        FetchFailed: no such video (404), or a chunk could not be fetched.
        ProtocolError: the metadata service failed (``MetadataUnavailable``).
        Exception: whatever ``sink`` raised (``BrokenPipeError``, ...).
    """
    manifest = await _manifest(metadata, video_id)
    slots = [_Slot(c) for c in manifest.chunks]
    window = trio.Semaphore(max(1, ahead))
    failure: Exception | None = None
    total = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_prefetch, http or metadata.http, slots, window)
        try:
            for slot in slots:
                total += await slot.deliver(window, sink)
        except Exception as exc:  # raised below, outside the nursery: no exception group
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return total


async def _manifest(metadata: MetadataClient, video_id: str) -> Manifest:
    manifest = await metadata.manifest(video_id)
    if manifest is None:
        raise FetchFailed(f"no video {video_id}", 404)
    return manifest


@dataclass(eq=False)
class _Slot:
    """One chunk on its way: fetched by one task, delivered by another."""

    chunk: ManifestChunk
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: FetchFailed | None = None

    async def fill(self, http: HttpClient) -> None:
        try:
            self.data = await fetch_chunk(http, self.chunk)
        except FetchFailed as exc:
            self.error = exc
        self.done.set()  # not on a bug: that one ends the nursery, and so the delivery

    async def deliver(self, window: trio.Semaphore, sink: Sink) -> int:
        """Wait for the chunk, free its place in the window, hand it to ``sink``."""
        await self.done.wait()
        window.release()
        if self.error is not None:
            raise self.error
        data, self.data = self.data, None
        assert data is not None
        await sink(data)
        return len(data)


async def _prefetch(http: HttpClient, slots: Sequence[_Slot], window: trio.Semaphore) -> None:
    async with trio.open_nursery() as nursery:
        for slot in slots:
            await window.acquire()
            nursery.start_soon(slot.fill, http)
