"""A small real cluster for tests: a metadata replica, storage nodes, the redundancy
manager (passes run by the test), and videos stored directly (no FFmpeg), as
replicas or as 3+2 shards, with their bytes kept to compare."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from nodes.client.fetcher import fetch_chunk
from nodes.net.http_client import HttpClient, request
from nodes.net.metadata_client import MetadataClient
from nodes.redundancy.service import serve_redundancy
from nodes.redundancy.state import Manager
from protocol.api import chunk_id, shard_id
from tools.launch import free_port
from vstack import erasure
from vstack.placement import NodeInfo, choose_shard_nodes
from vstack.settings import RedundancySettings

__all__ = ["Cluster", "start_cluster"]


@dataclass
class Cluster:
    meta: str
    nodes: list[str]
    stops: dict[str, Callable[[], Any]]
    mgr: Manager
    http: HttpClient
    data: dict[str, list[bytes]] = field(default_factory=dict)  # video -> its chunks

    async def put_video(self, mode: str, chunks: int = 3, size: int = 50_000,
                        duration: float = 10.0) -> str:
        """A video stored in ``mode`` on the nodes and committed, then made active."""
        vid = (await request("POST", f"{self.meta}/video",
                             json_body={"title": mode, "duration_sec": chunks})).json()["video_id"]
        infos = [NodeInfo(url=u, node_id=u) for u in self.nodes]
        self.data[vid] = []
        for seq in range(chunks):
            data = os.urandom(size)
            self.data[vid].append(data)
            cid = chunk_id(vid, seq)
            sha = hashlib.sha256(data).hexdigest()
            body: dict[str, Any] = {"checksum": sha, "size_bytes": size, "video_id": vid,
                                    "sequence_num": seq, "redundancy_mode": mode,
                                    "duration_sec": duration, "start_sec": seq * duration}
            if mode == "replication":
                for url in self.nodes[:3]:
                    await self.store(url, cid, data)
                body["node_urls"] = self.nodes[:3]
            else:
                shards = erasure.encode(data)
                layout = choose_shard_nodes(infos, turn=seq)
                frags: list[dict[str, Any]] = []
                for s in shards:
                    url = layout[s.index].url
                    await self.store(url, shard_id(cid, s.index), bytes(s.data))
                    frags.append({"fragment_id": shard_id(cid, s.index),
                                  "fragment_index": s.index, "node_url": url,
                                  "size_bytes": s.size, "checksum": s.sha256})
                body |= {"node_urls": sorted({str(f["node_url"]) for f in frags}),
                         "fragments_metadata": frags}
            res = await request("POST", f"{self.meta}/chunk/{cid}/commit", json_body=body)
            assert res.json()["success"], res.body
        res = await request("PATCH", f"{self.meta}/video/{vid}/status",
                            json_body={"status": "active"})
        assert res.status == 200
        return str(vid)

    async def pinned_video(self, mode: str, **kwargs: Any) -> str:
        """A video stored in ``mode`` and pinned there (a new video would otherwise
        be migrated to erasure coding)."""
        vid = await self.put_video(mode, **kwargs)
        res = await request("POST", f"{self.meta}/redundancy/override/{vid}?mode={mode}")
        assert res.status == 200
        return vid

    async def store(self, url: str, stored_id: str, data: bytes) -> None:
        assert (await request("PUT", f"{url}/chunk/{stored_id}", body=data)).status == 201

    async def manifest(self, vid: str) -> Any:
        return await self.mgr.metadata.manifest(vid)

    async def read_all(self, vid: str) -> None:
        """Every chunk of ``vid`` read back whole and right (as a player would)."""
        m = await self.manifest(vid)
        got = [await fetch_chunk(self.http, c) for c in m.chunks]
        assert got == self.data[vid]

    async def inventory(self) -> set[tuple[str, str]]:
        held = set()
        for url in self.nodes:
            if url in self.stops:
                page, _ = await self.mgr.pool.list_page(url, 0, 10_000)
                held |= {(url, sid) for sid, _ in page}
        return held


async def start_cluster(nursery: trio.Nursery, start_node: Callable[..., Any],
                        start_metadata: Callable[..., Any], tmp_path: Any, nodes: int,
                        public_url: Callable[[int], str] | None = None,
                        ports: Iterator[int] | None = None, aliased: bool = False,
                        **manager: Any) -> Cluster:
    """``ports``: the nodes' ports (default: free ones); ``public_url(port)``: the URL a
    node registers (a proxy in front of it, say); ``aliased``: nodes register
    127.0.0.1 URLs and NODE_ALIASES makes manifests show localhost ones
    (docker-compose's layout, and the README's for the netem proxies)."""
    chosen = [next(ports) if ports is not None else free_port() for _ in range(nodes)]
    urls = [public_url(p) if public_url else f"http://127.0.0.1:{p}" for p in chosen]
    aliases = tuple((u, f"http://localhost:{p}") for u, p in zip(urls, chosen, strict=True))
    svc = await start_metadata(node_timeout=30, heartbeat_interval=5, popularity_threshold=10,
                               **({"aliases": aliases} if aliased else {}))
    meta = f"http://127.0.0.1:{svc.port}"
    stops = {}
    for i, (port, url) in enumerate(zip(chosen, urls, strict=True)):
        _, stop = await start_node(data_dir=tmp_path / f"n{i}", port=port, node_id=f"n{i}",
                                   node_url=url, metadata_urls=(meta,), heartbeat_interval=5)
        stops[url] = stop
    settings = RedundancySettings(**{
        "metadata_urls": (meta,), "interval": 1e9, "repair_grace": 60, "orphan_grace": 120,
        "upload_expiry": 300, "popularity_threshold": 10, "popularity_window": 100, **manager})
    mgr: Manager = await nursery.start(serve_redundancy, settings)
    client = MetadataClient((meta,))
    with trio.fail_after(60):
        while len([n for n in await client.healthy_nodes()]) < nodes:
            await trio.sleep(1)
    await client.aclose()
    return Cluster(meta=meta, nodes=urls, stops=stops, mgr=mgr, http=HttpClient(max_idle_per_host=0))
