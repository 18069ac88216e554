"""SIGKILL a real node process in the middle of PUTs; every acknowledged chunk survives."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import trio

from nodes.net.frame_client import open_frame_client
from nodes.net.http_client import request
from protocol.errors import ProtocolError


def blob(chunk_id: str, size: int) -> bytes:
    seed = hashlib.sha256(chunk_id.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


@pytest.mark.slow
async def test_sigkill_during_puts_loses_no_acknowledged_chunk(
    node_process: Callable[..., Any],
) -> None:
    proc = node_process(MAX_SUPERBLOCK_SIZE=str(8 * 1024 * 1024))
    await trio.to_thread.run_sync(proc.start)
    acked: set[str] = set()
    attempted: set[str] = set()
    enough = trio.Event()

    async def writer(w: int) -> None:
        try:
            async with open_frame_client("127.0.0.1", proc.binary_port) as client:
                for i in range(150):  # bounded: at most 6 x 150 x ~0.7 MB, if never killed
                    cid = f"w{w}-chunk-{i:05d}"
                    attempted.add(cid)
                    status, _ = await client.put(cid, blob(cid, 700_000 + 1000 * w))
                    assert status == 201
                    acked.add(cid)
                    if len(acked) >= 60:
                        enough.set()
        except (trio.BrokenResourceError, OSError, ProtocolError):
            return  # the node died under us

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for w in range(6):
                nursery.start_soon(writer, w)
            await enough.wait()
            proc.proc.send_signal(signal.SIGKILL)
    await trio.to_thread.run_sync(lambda: proc.proc.wait(10))
    unacked = attempted - acked
    assert len(acked) >= 60
    assert unacked, "the kill must land while writes are in flight"

    await trio.to_thread.run_sync(proc.start)  # same data dir, same ports
    async with open_frame_client("127.0.0.1", proc.binary_port) as client:
        for cid in sorted(acked):
            w = int(cid[1 : cid.index("-")])
            assert await client.get(cid) == blob(cid, 700_000 + 1000 * w), cid
        visible = 0
        missing: list[int] = []
        for cid in sorted(unacked):
            try:
                data = await client.get(cid)
            except ProtocolError as exc:
                missing.append(exc.status)
                continue
            w = int(cid[1 : cid.index("-")])
            assert data == blob(cid, 700_000 + 1000 * w)  # whole, never partial
            visible += 1
        assert set(missing) <= {404}  # absent, never damaged
        # Writes continue normally after recovery.
        assert (await client.put("after-crash", b"fine"))[0] == 201
    health = (await request("GET", f"http://127.0.0.1:{proc.port}/health")).json()
    assert health["chunk_count"] == len(acked) + visible + 1
    assert health["quarantined"] == []
    await trio.to_thread.run_sync(lambda: proc.kill(signal.SIGTERM))


@pytest.mark.slow
async def test_sigkill_during_pipelined_puts_keeps_every_acknowledged_chunk_whole(
    node_process: Callable[..., Any],
) -> None:
    """Many PUTs in flight on each connection (the node hashes each chunk while
    another thread writes it, and writes its header last): after a SIGKILL,
    every acknowledged chunk reads back with its bytes and its SHA-256."""
    proc = node_process(MAX_SUPERBLOCK_SIZE=str(16 * 1024 * 1024))
    await trio.to_thread.run_sync(proc.start)
    acked: dict[str, int] = {}  # chunk id -> size (its bytes are blob(id, size))
    attempted: dict[str, int] = {}
    enough = trio.Event()

    async def put(client: Any, cid: str, limit: trio.Semaphore) -> None:
        size = 1_000_000 + 4096 * len(attempted) % 65536
        data = blob(cid, size)
        attempted[cid] = size
        try:
            status, info = await client.put(cid, data)
        except (trio.BrokenResourceError, OSError, ProtocolError):
            return  # the node died under us
        finally:
            limit.release()
        assert status == 201
        assert info.sha256 == hashlib.sha256(data).digest()  # the node's own hash
        acked[cid] = size
        if len(acked) >= 40:
            enough.set()

    async def connection(c: int) -> None:
        try:
            async with open_frame_client("127.0.0.1", proc.binary_port) as client, \
                    trio.open_nursery() as nursery:
                limit = trio.Semaphore(8)  # 8 PUTs in flight on this one connection
                for i in range(150):  # bounded: at most 2 x 150 x ~1 MB, if never killed
                    await limit.acquire()
                    nursery.start_soon(put, client, f"p{c}-chunk-{i:05d}", limit)
        except (trio.BrokenResourceError, OSError, ProtocolError):
            return

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for c in range(2):
                nursery.start_soon(connection, c)
            await enough.wait()
            proc.proc.send_signal(signal.SIGKILL)
            nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(lambda: proc.proc.wait(10))
    assert len(acked) >= 40
    assert set(attempted) - set(acked), "the kill must land while writes are in flight"

    await trio.to_thread.run_sync(proc.start)
    async with open_frame_client("127.0.0.1", proc.binary_port) as client:
        for cid, size in sorted(acked.items()):
            data = blob(cid, size)
            assert await client.get(cid) == data, cid
            assert (await client.head(cid)).sha256 == hashlib.sha256(data).digest(), cid
        statuses: list[int] = []
        for cid in sorted(set(attempted) - set(acked)):
            try:
                got = await client.get(cid)
            except ProtocolError as exc:
                statuses.append(exc.status)
                continue
            assert got == blob(cid, attempted[cid])  # whole, never partial
        assert set(statuses) <= {404}  # absent, never damaged
    health = (await request("GET", f"http://127.0.0.1:{proc.port}/health")).json()
    assert health["quarantined"] == []
    await trio.to_thread.run_sync(lambda: proc.kill(signal.SIGTERM))


@pytest.mark.slow
async def test_clean_restart_uses_the_checkpoint(node_process: Callable[..., Any]) -> None:
    proc = node_process()
    await trio.to_thread.run_sync(proc.start)
    async with open_frame_client("127.0.0.1", proc.binary_port) as client:
        for i in range(20):
            await client.put(f"c{i}", os.urandom(10_000))
    await trio.to_thread.run_sync(lambda: proc.kill(signal.SIGTERM))
    await trio.to_thread.run_sync(proc.start)
    health = (await request("GET", f"http://127.0.0.1:{proc.port}/health")).json()
    assert health["chunk_count"] == 20
    assert health["recovery"]["checkpoint_loaded"] is True
    assert health["recovery"]["records_scanned"] == 0


@pytest.mark.slow
async def test_compaction_in_a_real_process_then_sigterm_keeps_deletes_deleted(
    node_process: Callable[..., Any],
) -> None:
    """COMPACTION_INTERVAL_SEC drives the compactor from outside; after it ran and
    the node was stopped, deleted chunks stay deleted and live ones intact."""
    proc = node_process(MAX_SUPERBLOCK_SIZE=str(1 << 20), COMPACTION_INTERVAL_SEC="0.2")
    await trio.to_thread.run_sync(proc.start)
    keep = {f"keep-{i}": blob(f"keep-{i}", 150_000) for i in range(10)}
    async with open_frame_client("127.0.0.1", proc.binary_port) as client:
        for i in range(10):  # interleaved: every superblock holds live and dead chunks
            await client.put(f"drop-{i}", blob(f"drop-{i}", 150_000))
            await client.put(f"keep-{i}", keep[f"keep-{i}"])
        for i in range(10):
            await client.delete(f"drop-{i}")
    health_url = f"http://127.0.0.1:{proc.port}/health"
    with trio.fail_after(30):
        while (await request("GET", health_url)).json()["garbage_bytes"] > 1 << 20:
            await trio.sleep(0.1)  # polling another process
    await trio.to_thread.run_sync(lambda: proc.kill(signal.SIGTERM))
    await trio.to_thread.run_sync(proc.start)
    async with open_frame_client("127.0.0.1", proc.binary_port) as client:
        for cid, data in keep.items():
            assert await client.get(cid) == data
        for i in range(10):
            with pytest.raises(ProtocolError) as info:
                await client.head(f"drop-{i}")
            assert info.value.status == 404
    health = (await request("GET", health_url)).json()
    assert health["chunk_count"] == len(keep)
    await trio.to_thread.run_sync(lambda: proc.kill(signal.SIGTERM))
