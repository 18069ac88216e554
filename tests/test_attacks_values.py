"""Attack suite, part 2: values that once crashed a service (issue 9, class 1).

Each goes to a real service on 127.0.0.1 and must get a 4xx JSON answer,
store nothing, and leave the service serving (and restartable: nothing
accepted can fail to store later).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from nodes.net.http_client import request

BAD_VIDEOS = [
    b'{"title": "a", "duration_sec": 1e300}',
    b'{"title": "a", "duration_sec": 9223372036854775808}',
    b'{"title": "a", "duration_sec": -9223372036854775809}',
    b'{"title": "a", "duration_sec": 1e400}',
    b'{"title": "a", "duration_sec": NaN}',
    b'{"title": "\\ud800", "duration_sec": 1}',
    b'{"title": "a", "duration_sec": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"title": "a", "duration_sec": 1, "x": ' + b"[" * 40 + b"]" * 40 + b"}",
    b'{"title": "a", "duration_sec": ' + b"9" * 5000 + b"}",
    b'{"title": "' + b"t" * 2_000_000 + b'", "duration_sec": 1}',
]


@pytest.mark.parametrize("body", BAD_VIDEOS, ids=range(len(BAD_VIDEOS)))
async def test_a_bad_value_is_a_4xx_and_stores_nothing(
        start_metadata: Callable[..., Any], body: bytes) -> None:
    svc = await start_metadata()
    base = f"http://127.0.0.1:{svc.port}"
    res = await request("POST", f"{base}/video", body=body,
                        headers=[("Content-Type", "application/json")])
    assert 400 <= res.status < 500, res.body[:200]
    json.loads(res.body)  # the error itself is valid JSON (no NaN, no traceback)
    assert (await request("GET", f"{base}/videos")).json() == []
    assert (await request("GET", f"{base}/health")).status == 200


@pytest.mark.parametrize("query", ["offset=1e23", f"offset={10**30}", "limit=" + "9" * 5000,
                                   "offset=-1"])
async def test_bad_query_numbers_are_4xx(start_metadata: Callable[..., Any], query: str) -> None:
    svc = await start_metadata()
    res = await request("GET", f"http://127.0.0.1:{svc.port}/videos?{query}")
    assert 400 <= res.status < 500, res.body[:200]


async def test_a_huge_chunk_count_or_size_is_refused(start_metadata: Callable[..., Any]) -> None:
    svc = await start_metadata()
    base = f"http://127.0.0.1:{svc.port}"
    vid = (await request("POST", f"{base}/video", json_body={"title": "t", "duration_sec": 1})
           ).json()["video_id"]
    res = await request("PATCH", f"{base}/video/{vid}/status",
                        json_body={"status": "active", "chunk_count": 10**25})
    assert 400 <= res.status < 500
    commit = {"node_urls": ["http://127.0.0.1:1"], "checksum": "0" * 64, "size_bytes": 1e23,
              "video_id": vid, "sequence_num": 0}
    res = await request("POST", f"{base}/chunk/{vid}-0/commit", json_body=commit)
    assert 400 <= res.status < 500
    listed = (await request("GET", f"{base}/videos")).json()
    assert listed[0]["status"] == "uploading"
    assert listed[0]["total_chunks"] == 0


@pytest.mark.parametrize("value", ["bytes=0-" + "9" * 5000, "bytes=" + "1" * 30 + "-",
                                   "bytes=-" + "9" * 19])
async def test_a_range_with_a_huge_number_is_a_4xx(start_node: Callable[..., Any],
                                                   value: str) -> None:
    node, _ = await start_node()
    url = f"http://127.0.0.1:{node.ports.http}/chunk/c-0"
    assert (await request("PUT", url, body=b"0123456789")).status == 201
    res = await request("GET", url, headers=[("Range", value)])
    assert res.status in (200, 206, 416), res.body[:200]
    assert res.status != 200 or res.body == b"0123456789"
