"""A flipped byte on disk is found and never served as good data."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nodes.net.frame_client import open_frame_client
from nodes.net.http_client import request
from nodes.storage.jobs import scrub_pass
from protocol.errors import ProtocolError


def flip_byte(data_dir: Path, sb: int, offset: int) -> None:
    path = data_dir / "data" / f"superblock_{sb}.dat"
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0x40]))
        f.flush()
        os.fsync(f.fileno())


async def test_corruption_found_on_first_read_is_quarantined(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    base = f"http://127.0.0.1:{node.ports.http}"
    data = os.urandom(500_000)
    assert (await request("PUT", f"{base}/chunk/victim", body=data)).status == 201
    assert (await request("PUT", f"{base}/chunk/bystander", body=data[::-1])).status == 201
    loc = node.store.lookup(b"victim")
    flip_byte(node.settings.data_dir, loc.sb, loc.data_offset + 12345)

    bad = await request("GET", f"{base}/chunk/victim")
    assert bad.status == 500
    assert bad.json()["error"] == "Chunk corruption detected"
    assert data[:1000] not in bad.body
    assert (await request("HEAD", f"{base}/chunk/victim")).status == 500
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        with pytest.raises(ProtocolError) as info:
            await client.get("victim")
        assert info.value.status == 500
        assert await client.get("bystander") == data[::-1]
    health = (await request("GET", f"{base}/health")).json()
    assert health["quarantined"] == ["victim"]
    assert health["status"] == "warning"
    # Re-sending the right bytes (what repair will do) heals the chunk.
    assert (await request("PUT", f"{base}/chunk/victim", body=data)).status == 201
    assert (await request("GET", f"{base}/chunk/victim")).body == data
    assert (await request("GET", f"{base}/health")).json()["quarantined"] == []


async def test_scrubber_finds_corruption_under_zero_copy_reads(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    base = f"http://127.0.0.1:{node.ports.http}"
    chunks = {f"s{i}": os.urandom(100_000) for i in range(5)}
    for cid, blob in chunks.items():
        await request("PUT", f"{base}/chunk/{cid}", body=blob)
        assert (await request("GET", f"{base}/chunk/{cid}")).body == blob  # now verified
    loc = node.store.lookup(b"s3")
    assert loc is not None
    assert loc.verified
    flip_byte(node.settings.data_dir, loc.sb, loc.data_offset + 99)
    # A zero-copy read would now send damaged bytes, but never as good data:
    # the ETag is the SHA-256 recorded at write time, so the reader can tell.
    res = await request("GET", f"{base}/chunk/s3")
    assert hashlib.sha256(res.body).hexdigest() != res.headers["etag"]
    # ... and over the binary protocol the client's CRC32C check refuses them.
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        with pytest.raises(ProtocolError):
            await client.get("s3")
    checked, bad = await scrub_pass(node, rate=0)
    assert (checked, bad) == (5, 1)
    assert (await request("GET", f"{base}/chunk/s3")).status == 500
    assert (await request("GET", f"{base}/health")).json()["quarantined"] == ["s3"]
    for cid in ("s0", "s1", "s2", "s4"):
        assert (await request("GET", f"{base}/chunk/{cid}")).body == chunks[cid]


async def test_a_read_looked_up_before_a_scrub_quarantined_it_is_refused(
    start_node: Callable[..., Any],
) -> None:
    """A binary GET looks its chunk up once and may wait (for a read budget)
    before opening it: a chunk quarantined meanwhile is refused, not sent."""
    node, _ = await start_node()
    base = f"http://127.0.0.1:{node.ports.http}"
    blob = os.urandom(200_000)
    await request("PUT", f"{base}/chunk/racy", body=blob)
    assert (await request("GET", f"{base}/chunk/racy")).body == blob  # now verified
    looked_up = node.head("racy")
    assert looked_up.verified
    flip_byte(node.settings.data_dir, looked_up.sb, looked_up.data_offset + 7)
    assert await scrub_pass(node, rate=0) == (1, 1)
    with pytest.raises(ProtocolError) as info:
        await node.open_read("racy", loc=looked_up)
    assert info.value.status == 500


async def test_corruption_while_stopped_is_found_after_restart(
    start_node: Callable[..., Any],
) -> None:
    node, stop = await start_node()
    base = f"http://127.0.0.1:{node.ports.http}"
    await request("PUT", f"{base}/chunk/cold", body=b"c" * 70_000)
    await request("GET", f"{base}/chunk/cold")  # verified in this process only
    loc = node.store.lookup(b"cold")
    await stop()
    flip_byte(node.settings.data_dir, loc.sb, loc.data_offset + 5)
    node2, _ = await start_node()
    res = await request("GET", f"http://127.0.0.1:{node2.ports.http}/chunk/cold")
    assert res.status == 500
