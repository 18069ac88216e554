"""A whole local cluster in this process, for the web page's tests: a metadata
replica, storage nodes, the uploader, the smart-client service and the web page,
all on 127.0.0.1 with free ports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from nodes.client.service import serve_client
from nodes.net.http_client import request
from tools.launch import free_port
from vstack.settings import ClientSettings, WebSettings
from web.service import serve_web
from web.state import WebService

from .conftest import start_stoppable

__all__ = ["WebCluster", "start_web_cluster"]


@dataclass
class WebCluster:
    meta: str
    uploader: str
    client: str
    web: WebService
    nodes: list[str]
    node_ports: list[int]
    stops: dict[str, Callable[[], Any]] = field(default_factory=dict)
    stop_web: Callable[[], Any] | None = None
    start_web: Callable[[], Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web.port}"


async def start_web_cluster(nursery: trio.Nursery, start_node: Callable[..., Any],
                            start_metadata: Callable[..., Any],
                            start_uploader: Callable[..., Any], tmp_path: Path, *,
                            nodes: int = 3, **web: Any) -> WebCluster:
    svc = await start_metadata(node_timeout=30)
    meta = f"http://127.0.0.1:{svc.port}"
    urls, ports, stops = [], [], {}
    for i in range(nodes):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        _, stop = await start_node(data_dir=tmp_path / f"n{i}", port=port, node_id=f"n{i}",
                                   node_url=url, metadata_urls=(meta,))
        # Registered now rather than after the node's first delay.
        res = await request("POST", f"{meta}/nodes/register",
                            json_body={"node_url": url, "node_id": f"n{i}"})
        assert res.status == 200, res.body
        urls.append(url)
        ports.append(port)
        stops[url] = stop
    up, _ = await start_uploader(metadata_urls=(meta,), chunk_duration=1.0,
                                 redundancy="replication")
    client = await nursery.start(serve_client, ClientSettings(metadata_urls=(meta,), port=0))
    client_url = f"http://127.0.0.1:{client.port}"
    settings = WebSettings(metadata_urls=(meta,), uploader_url=f"http://127.0.0.1:{up.port}",
                           client_url=client_url, port=0, **web)
    page, stop = await start_stoppable(nursery, serve_web, settings)
    c = WebCluster(meta=meta, uploader=f"http://127.0.0.1:{up.port}", client=client_url,
                   web=page, nodes=urls, node_ports=ports, stops=stops, stop_web=stop)

    async def start_web() -> None:
        """The web service again, on the same port (after ``stop_web``)."""
        c.web, c.stop_web = await start_stoppable(nursery, serve_web,
                                                  replace(settings, port=page.port))

    c.start_web = start_web
    return c
