"""The redundancy manager: one background service that keeps the right bytes in the right places.

Theory of operation. Every ``REDUNDANCY_INTERVAL_SEC`` one *pass* looks at
the cluster (:func:`observe`: nodes and their liveness, every video's
manifest and view count) and then, in order:

1. repairs chunks that lost copies on lost nodes (:mod:`.repair`);
2. converts videos whose target mode changed (:mod:`.migrate`);
3. expires stalled uploads and collects orphaned copies (:mod:`.gc`).

Each step is bounded per pass (``REPAIRS_PER_PASS``, ``MIGRATIONS_PER_PASS``)
and every byte moved goes through one rate limiter, so playback is never
starved. A failure in one step of one pass is logged and retried at the next
pass; the service never stops for it (:func:`nodes.net.jobs.run_forever`).
Started alone by ``vstack-node redundancy``, and inside ``vstack-node all``.
"""

from __future__ import annotations

import logging
from functools import partial

import trio

from nodes.net.http_client import HttpClient
from nodes.net.jobs import Backoff, run_forever
from nodes.net.metadata_client import MetadataClient
from nodes.net.storage_client import open_storage_pool
from protocol.api import Manifest
from protocol.errors import VStackError
from vstack.reconcile import plan_repairs, stored_mode, target_mode
from vstack.settings import RedundancySettings

from . import gc, http_api, migrate, repair
from .state import Manager, RateLimiter, Snapshot

__all__ = ["MIGRATIONS_PER_PASS", "REPAIRS_PER_PASS", "observe", "run_pass",
           "serve_redundancy"]

log = logging.getLogger("vstack.redundancy")

REPAIRS_PER_PASS = 200
#: Manifests read at once when a pass looks at the cluster.
MANIFESTS_AT_ONCE = 8
MIGRATIONS_PER_PASS = 4


async def observe(mgr: Manager) -> Snapshot:
    """The cluster now: nodes (and which are lost), and every manifest not deleted."""
    now = trio.current_time()
    nodes = await mgr.metadata.all_nodes()
    lost = mgr.liveness.observe({n.node_id: n.status for n in nodes}, now)
    ids = await mgr.metadata.video_ids()
    found: dict[str, Manifest] = {}
    todo = iter(ids)

    async def reader() -> None:  # a few readers share the list: no task per video
        for video_id in todo:
            m = await mgr.metadata.manifest(video_id)
            if m is not None and m.status != "deleted":
                found[video_id] = m

    async with trio.open_nursery() as nursery:
        for _ in range(MANIFESTS_AT_ONCE):
            nursery.start_soon(reader)
    manifests = [found[v] for v in ids if v in found]  # newest first, as listed
    return Snapshot(nodes=nodes, lost=lost, manifests=manifests)


async def run_pass(mgr: Manager) -> Snapshot:
    """One look at the cluster and what follows from it (see the module docstring)."""
    snap = await observe(mgr)
    plan = plan_repairs(snap.manifests, snap.lost, mgr.missing, snap.identity)
    mgr.stats.under_replicated = len(plan)
    await repair.run_repairs(mgr, snap, plan, limit=REPAIRS_PER_PASS)
    await _migrations(mgr, snap)
    await gc.expire_uploads(mgr, snap)
    await gc.collect_orphans(mgr, snap)
    mgr.stats.passes += 1
    return snap


async def _migrations(mgr: Manager, snap: Snapshot) -> None:
    now = trio.current_time()
    started = 0
    active = [m for m in snap.manifests if m.status == "active" and m.chunks]
    mgr.views.forget_except({m.video_id for m in active})
    for m in active:
        current = stored_mode(m)
        try:
            rec = await mgr.metadata.recommend(m.video_id)
        except VStackError as exc:
            log.info("no recommendation for %s: %s", m.video_id, exc)
            continue
        views = mgr.views.observe(m.video_id, rec.view_count, now)
        target = target_mode(current or rec.recommended_mode, views,
                             mgr.settings.popularity_threshold, rec.override)
        key = f"migrate:{m.video_id}"
        if current == target or started >= MIGRATIONS_PER_PASS or mgr.deferred(key):
            continue
        started += 1
        try:
            await migrate.migrate_video(mgr, snap, m, target)
        except VStackError as exc:
            mgr.failed(key)
            log.warning("migration of %s to %s stopped: %s (retried later)", m.video_id,
                        target, exc)
        else:
            mgr.succeeded(key)


async def serve_redundancy(settings: RedundancySettings, *,
                           task_status: trio.TaskStatus[Manager] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    """Run the manager until cancelled; reports the :class:`Manager` once started."""
    async with HttpClient(headers=settings.auth.bearer_header()) as http, \
            open_storage_pool(http, secret=settings.auth.cluster_secret) as pool, \
            trio.open_nursery() as nursery:
        mgr = Manager(settings=settings, metadata=MetadataClient(settings.metadata_urls, http=http),
                      pool=pool, limiter=RateLimiter(settings.rate_bytes))

        async def step() -> None:
            await run_pass(mgr)

        nursery.start_soon(partial(run_forever, "redundancy pass", step, log=log,
                                   every=settings.interval, initial_delay=settings.interval,
                                   backoff=Backoff(initial=1.0, maximum=settings.interval)))
        if settings.metrics_port is not None:
            mgr.port = await nursery.start(partial(http_api.serve, mgr, settings.host,
                                                   settings.metrics_port))
        log.info("redundancy manager running: a pass every %.0f s, repair grace %.0f s, orphan "
                 "grace %.0f s", settings.interval, settings.repair_grace, settings.orphan_grace)
        task_status.started(mgr)
