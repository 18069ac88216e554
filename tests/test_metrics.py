"""Every service's ``/metrics``: Prometheus text that prometheus-client parses, with the
figures the service really has (requests by route and status, fsyncs, Paxos rounds,
liveness verdicts, the client's downloads, the manager's counters)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.lowlevel
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from nodes.client.client import open_smart_client
from nodes.client.service import serve_client_http
from nodes.net.http_client import request
from nodes.redundancy.service import run_pass, serve_redundancy
from vstack.auth import AuthPolicy
from vstack.playback import BufferPolicy
from vstack.settings import ClientSettings, RedundancySettings

from .cluster import start_cluster


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of ``url``/metrics."""
    res = await request("GET", f"{url}/metrics")
    assert res.status == 200, res.body
    assert res.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(res.body.decode())
            for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def discard(data: bytes) -> None:
    return None


async def test_a_storage_node_counts_requests_by_route_and_its_fsyncs(
        nursery: trio.Nursery, start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    url = f"http://127.0.0.1:{node.ports.http}"
    assert (await request("PUT", f"{url}/chunk/abc", body=b"x" * 5000)).status == 201
    assert (await request("PUT", f"{url}/chunk/abc", body=b"x" * 5000)).status == 200
    assert (await request("GET", f"{url}/chunk/abc")).status == 200
    assert (await request("GET", f"{url}/chunk/nope")).status == 404
    assert (await request("GET", f"{url}/no/such/route")).status == 404
    m = await scrape(url)
    route = "/chunk/{chunk_id}"
    assert value(m, "vstack_http_requests_total", method="PUT", route=route, status="201") == 1
    assert value(m, "vstack_http_requests_total", method="PUT", route=route, status="200") == 1
    assert value(m, "vstack_http_requests_total", method="GET", route=route, status="404") == 1
    assert value(m, "vstack_http_received_bytes_total", route=route) == 10_000
    assert value(m, "vstack_http_sent_bytes_total", route=route) == 5000
    assert not any("/no/such/route" in str(labels) for _, labels in m)  # no label per path
    assert value(m, "vstack_storage_fsync_duration_seconds_count") == 1
    assert value(m, "vstack_storage_group_commit_writes_sum") == 1
    assert value(m, "vstack_storage_chunks", node_id="test-node") == 1
    assert value(m, "vstack_storage_stored_bytes", node_id="test-node") == 5000


async def test_metrics_are_a_read_behind_the_access_check(
        nursery: trio.Nursery, start_node: Callable[..., Any]) -> None:
    secret = "c" * 24
    node, _ = await start_node(auth=AuthPolicy(cluster_secret=secret.encode(),
                                               public_reads=False))
    url = f"http://127.0.0.1:{node.ports.http}"
    assert (await request("GET", f"{url}/metrics")).status == 401
    res = await request("GET", f"{url}/metrics", headers=[("Authorization", f"Bearer {secret}")])
    assert res.status == 200


async def test_the_metadata_client_and_manager_report_what_they_did(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = await c.pinned_video("replication", chunks=3, size=20_000)
    meta = await scrape(c.meta)
    decided = sum(value(meta, f"vstack_paxos_{k}_total", replica="0") or 0
                  for k in ("rounds", "fast"))
    assert decided >= 3 + 3  # a video, its chunks, its status, its override...
    assert value(meta, "vstack_storage_nodes", status="healthy") == 3
    assert value(meta, "vstack_chunks") == 3
    # The client service: a playback, then its downloads and buffer.
    settings = ClientSettings(metadata_urls=(c.meta,), port=0)
    async with open_smart_client((c.meta,), BufferPolicy()) as client, \
            trio.open_nursery() as n:
        svc = await n.start(lambda task_status: serve_client_http(
            client, n, settings, port=0, task_status=task_status))
        play = await client.playback(vid, speed=0)
        await play.run(discard)
        m = await scrape(f"http://127.0.0.1:{svc.port}")
        n.cancel_scope.cancel()
    assert value(m, "vstack_client_downloads_total", client="smart") == 3
    assert value(m, "vstack_client_fetched_bytes_total", client="smart") == 60_000
    assert len([k for k in m if k[0] == "vstack_client_node_score"]) == 3
    # The manager, on its own port.
    mgr = await nursery.start(serve_redundancy, RedundancySettings(
        metadata_urls=(c.meta,), interval=1e9, metrics_port=0))
    await run_pass(mgr)
    m = await scrape(f"http://127.0.0.1:{mgr.port}")
    assert value(m, "vstack_redundancy_passes_total") == 1
    assert value(m, "vstack_redundancy_repair_backlog") == 0
    health = await request("GET", f"http://127.0.0.1:{mgr.port}/health")
    assert health.json()["passes"] == 1
