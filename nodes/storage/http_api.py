"""The storage node's HTTP endpoints (the contract's section 2), over h11.

``PUT/GET/HEAD/DELETE /chunk/{id}``, ``HEAD/GET /ping`` and ``GET /health``.
GET bodies of checked chunks leave with ``os.sendfile``. ``ETag`` is the
SHA-256 recorded at write time (a reader can verify what it got);
``X-Chunk-CRC32C`` is the CRC32C the node checks its copy against.
GET honours a single ``Range: bytes=a-b``.
"""

from __future__ import annotations

import re
import time
from functools import partial
from typing import Final

import trio

from nodes.net import routing
from nodes.net.http_server import Body, Handler, HttpLimits, serve_http
from nodes.net.routing import RouteTable
from protocol.api import parse_sha256
from protocol.errors import ProtocolError
from protocol.http import FileRange, Request, Response, Router, json_response
from vstack.auth import Access
from vstack.store import Location

from .metrics import node_metrics
from .node import StorageNode, chunk_key

__all__ = ["build_router", "serve"]

_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")  # 18 digits: no int64 overflow


async def put_chunk(node: StorageNode, req: Request, body: Body) -> Response:
    chunk_id = req.params["chunk_id"]
    chunk_key(chunk_id, for_write=True)
    if "chunked" in (req.header("transfer-encoding") or "").lower() or not req.content_length:
        raise ProtocolError("Content-Length header required", 400)
    limit = node.settings.max_chunk_bytes
    if req.content_length > limit:
        raise ProtocolError(
            f"Chunk of {req.content_length} bytes exceeds the limit of {limit}", 413)
    checksum = req.header("x-chunk-checksum") or req.header("x-checksum")
    if checksum is not None:
        parse_sha256(checksum)  # a malformed value is refused before the body is read
    size_hdr = req.header("x-chunk-size")
    if size_hdr is not None and size_hdr.strip() != str(req.content_length):
        raise ProtocolError("X-Chunk-Size does not match Content-Length", 400)
    data = await body.read(limit)
    status, loc = await node.put(chunk_id, data, checksum=checksum)
    headers = [("Location", f"/chunk/{chunk_id}"), ("ETag", loc.etag),
               ("X-Chunk-Size", str(loc.size))]
    return Response(status=status, headers=headers)


def _chunk_headers(loc: Location) -> list[tuple[str, str]]:
    return [("Content-Type", "application/octet-stream"), ("ETag", loc.etag),
            ("X-Chunk-Size", str(loc.size)), ("X-Chunk-CRC32C", f"{loc.crc:08x}"),
            ("X-Superblock-ID", str(loc.sb)), ("Accept-Ranges", "bytes")]


async def get_chunk(node: StorageNode, req: Request, body: Body) -> Response:
    """A chunk (or a range of it). One not yet checked since start is read into
    memory to be checked: its size is reserved first in the node's reads
    budget, shared with the binary protocol, and held until the answer has
    left (or been given up)."""
    chunk_id = req.params["chunk_id"]
    start, length, status = 0, None, 200
    loc = node.head(chunk_id)
    rng = req.header("range")
    if rng:
        start, length = _parse_range(rng, loc.size)
        status = 206
    reads = node.reads
    in_memory = 0 if loc.verified else min(loc.size, reads.capacity)
    await reads.acquire(in_memory)
    try:
        read = await node.open_read(chunk_id, start, length)
    except BaseException:
        reads.release(in_memory)
        raise
    headers = _chunk_headers(read.loc)
    if status == 206:
        end = read.start + read.length - 1
        headers.append(("Content-Range", f"bytes {read.start}-{end}/{read.loc.size}"))
    if read.data is not None:
        payload = read.data
        read.close()
        return Response(status=status, headers=headers, body=payload,
                        after=partial(reads.release, in_memory))
    reads.release(in_memory)  # checked meanwhile: it leaves with sendfile
    return Response(status=status, headers=headers,
                    body=FileRange(read.fd, read.offset, read.length), after=read.close)


async def head_chunk(node: StorageNode, req: Request, body: Body) -> Response:
    loc = node.head(req.params["chunk_id"])
    return Response(status=200, headers=[*_chunk_headers(loc), ("Content-Length", str(loc.size))])


async def delete_chunk(node: StorageNode, req: Request, body: Body) -> Response:
    await node.delete(req.params["chunk_id"])
    return Response(status=204)


#: Chunks listed per page of ``GET /chunks`` at most.
MAX_LIST: Final = 10_000


async def list_chunks(node: StorageNode, req: Request, body: Body) -> Response:
    """``GET /chunks?cursor=N&limit=M``: the chunks held here, a page at a time
    (for the redundancy manager's garbage collection)."""
    cursor, limit = _query_int(req, "cursor", 0), _query_int(req, "limit", 1000)
    if not 1 <= limit <= MAX_LIST:
        raise ProtocolError(f"limit must be 1..{MAX_LIST}", 400)
    found, after = await node.list_chunks(cursor, limit)
    return json_response(200, {"chunks": [{"chunk_id": loc.key.decode("ascii", "replace"),
                                           "size_bytes": loc.size, "checksum": loc.sha256.hex()}
                                          for loc in found], "next_cursor": after})


def _query_int(req: Request, name: str, default: int) -> int:
    raw = req.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise ProtocolError(f"{name} must be a non-negative integer", 400)
    return int(raw)


async def ping(node: StorageNode, req: Request, body: Body) -> Response:
    t0 = time.perf_counter()
    usage = node.disk_usage_percent()
    count = node.chunk_count()
    return Response(status=200, headers=[
        ("X-Node-ID", node.node_id),
        ("X-Disk-Usage-Percent", f"{usage:.2f}"),
        ("X-Chunk-Count", str(count)),
        ("X-Response-Time", f"{(time.perf_counter() - t0) * 1e3:.3f}"),
        ("Cache-Control", "no-cache"),
    ])


async def health(node: StorageNode, req: Request, body: Body) -> Response:
    info = node.health()
    status = 503 if info["status"] == "critical" else 200
    return json_response(status, info, [("Cache-Control", "no-cache")])


#: (method, path, who may call it, endpoint); see :mod:`vstack.auth`.
ROUTES: Final[RouteTable] = [
    ("PUT", "/chunk/{chunk_id}", Access.CLUSTER, put_chunk),
    ("GET", "/chunk/{chunk_id}", Access.READ, get_chunk),
    ("HEAD", "/chunk/{chunk_id}", Access.READ, head_chunk),
    ("DELETE", "/chunk/{chunk_id}", Access.CLUSTER, delete_chunk),
    ("GET", "/chunks", Access.CLUSTER, list_chunks),
    ("GET", "/ping", Access.PUBLIC, ping),
    ("HEAD", "/ping", Access.PUBLIC, ping),
    ("GET", "/health", Access.PUBLIC, health),
]


def build_router(node: StorageNode) -> Router[Handler]:
    return routing.build_router(ROUTES, node, node.settings.auth, node_metrics(node))


def _parse_range(value: str, size: int) -> tuple[int, int]:
    m = _RANGE.match(value.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise ProtocolError("Only a single 'bytes=a-b' range is supported", 416)
    a, b = m.group(1), m.group(2)
    if not a:  # suffix: the last b bytes
        n = min(int(b), size)
        return size - n, n
    start = int(a)
    end = min(int(b), size - 1) if b else size - 1
    if start >= size or end < start:
        raise ProtocolError("Requested range not satisfiable", 416)
    return start, end - start + 1


async def serve(node: StorageNode, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    s = node.settings
    origin = s.allowed_origin

    def default_headers() -> list[tuple[str, str]]:
        return [
            ("X-Request-ID", str(time.time_ns())),
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Methods", "GET, PUT, DELETE, HEAD, OPTIONS"),
            ("Access-Control-Allow-Headers", "Content-Type, X-Chunk-Checksum, Range"),
        ]

    await serve_http(
        build_router(node), host=s.host, port=s.port,
        limits=HttpLimits(read_timeout=s.read_timeout, idle_timeout=s.idle_timeout,
                          header_timeout=s.header_timeout, max_connections=s.max_connections),
        default_headers=default_headers, task_status=task_status,
    )
