"""Fetching a stored video back, chunk by chunk, verified (a first, simple client).

Reads the manifest, then downloads chunks in order, a few ahead in parallel,
from the first replica that serves bytes matching the manifest's SHA-256
(failing over to the next replica otherwise), and hands each chunk to a sink
in sequence. The smart client (node scoring, buffering, hedging) builds on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from nodes.net.http_client import request
from nodes.net.metadata_client import MetadataClient
from protocol.errors import VStackError

__all__ = ["FetchFailed", "fetch_chunk", "stream_video"]


class FetchFailed(Exception):
    pass


async def fetch_chunk(chunk: dict[str, Any]) -> bytes:
    """The chunk's bytes from the first replica whose copy checks out."""
    want = str(chunk["checksum"]).removeprefix("sha256:")
    errors = []
    for url in chunk.get("replicas") or []:
        try:
            with trio.fail_after(30):
                res = await request("GET", f"{url}/chunk/{chunk['chunk_id']}")
        except (VStackError, trio.TooSlowError, ValueError, KeyError, TypeError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        if res.status != 200:
            errors.append(f"{url}: {res.status}")
            continue
        if hashlib.sha256(res.body).hexdigest() != want:
            errors.append(f"{url}: damaged copy")
            continue
        return res.body
    raise FetchFailed(f"chunk {chunk['sequence_num']}: no replica served it ({'; '.join(errors)})")


async def stream_video(metadata: MetadataClient, video_id: str,
                       sink: Callable[[bytes], Awaitable[None]], *, ahead: int = 4) -> int:
    """Send every chunk of ``video_id`` to ``sink`` in order; returns the byte count."""
    res = await metadata.call("GET", f"/manifest/{video_id}")
    if res.status == 404:
        raise FetchFailed(f"no video {video_id}")
    if res.status != 200:
        raise FetchFailed(f"manifest: {res.status}")
    chunks = sorted(res.json()["chunks"], key=lambda c: c["sequence_num"])
    results: dict[int, trio.Event] = {i: trio.Event() for i in range(len(chunks))}
    data: dict[int, bytes | BaseException] = {}
    window = trio.Semaphore(ahead)
    total = 0

    async def get(i: int) -> None:
        try:
            data[i] = await fetch_chunk(chunks[i])
        except FetchFailed as exc:
            data[i] = exc
        results[i].set()

    async with trio.open_nursery() as nursery:

        async def producer() -> None:
            for i in range(len(chunks)):
                await window.acquire()
                nursery.start_soon(get, i)

        nursery.start_soon(producer)
        for i in range(len(chunks)):
            await results[i].wait()
            item = data.pop(i)
            window.release()
            if isinstance(item, BaseException):
                nursery.cancel_scope.cancel()
                raise item
            await sink(item)
            total += len(item)
    return total
