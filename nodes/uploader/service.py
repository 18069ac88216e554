"""The uploader service: a video file in, stored and listed chunks out.

``POST /upload`` streams the multipart body to ``TEMP_DIR`` as it arrives
(never the whole file in memory; ``MAX_UPLOAD_BYTES`` caps it with a 413),
probes the content with FFmpeg (the extension is not trusted), registers the
video with the metadata service (so the ``video_id`` in the answer is the one
every service knows) and queues the session. At most
``MAX_CONCURRENT_UPLOADS`` sessions are processed at once; the others wait in
order, their position in their status.

Processing: FFmpeg cuts MPEG-TS chunks at keyframes (see
:mod:`vstack.media`); each chunk gets its SHA-256 and goes to distinct
healthy nodes chosen by :func:`vstack.placement.choose_nodes`, over the
binary protocol, many chunks in flight; a node that fails is replaced by
another; each chunk is committed through the metadata service only once its
nodes acknowledged the fsynced write; the video becomes ``active`` when all
its chunks are committed. On any failure the video record and every chunk
already stored are removed: nothing is left behind.

This module only wires the package together; it is the one that knows
every other:

=====================  ==========================================================
:mod:`.state`          :class:`Uploader`, what handlers and uploads share; the queue
:mod:`.http_api`       the HTTP endpoints
:mod:`.receiver`       a multipart upload streamed to disk
:mod:`.job`            one upload's pipeline (:class:`~.job.UploadJob`)
:mod:`.placer`         placing and committing one chunk
:mod:`.cleanup`        removing what failed or interrupted uploads stored
:mod:`.ffmpeg`         running FFmpeg
:mod:`.errors`         why an upload fails
=====================  ==========================================================
"""

from __future__ import annotations

import logging

import trio

from nodes.net.http_client import HttpClient
from nodes.net.metadata_client import MetadataClient
from nodes.net.storage_client import open_storage_pool
from vstack.settings import UploaderSettings

from . import cleanup, http_api
from .ffmpeg import find_ffmpeg
from .state import Uploader

__all__ = ["Uploader", "serve_uploader"]

log = logging.getLogger("vstack.uploader")


async def serve_uploader(settings: UploaderSettings, *,
                         task_status: trio.TaskStatus[Uploader] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the uploader until cancelled; reports the :class:`Uploader` once listening.

    One HTTP connection pool serves both the metadata client and the storage
    pool; uploads run in the service's nursery, so stopping the service
    stops them (their sessions are marked interrupted at the next start).
    """
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, settings.ffmpeg)
    async with HttpClient(headers=settings.auth.bearer_header()) as http, \
            open_storage_pool(http, secret=settings.auth.cluster_secret) as pool, \
            trio.open_nursery() as nursery:
        metadata = MetadataClient(settings.metadata_urls, http=http)
        up = await Uploader.open(settings, metadata, pool, nursery, ffmpeg=ffmpeg)
        await cleanup.recover(up)
        up.port = await nursery.start(http_api.serve, up)
        log.info("uploader ready on port %d (ffmpeg %s, temp %s)", up.port, up.ffmpeg,
                 settings.temp_dir)
        task_status.started(up)
