"""What the client service's handlers share: the smart client, the HLS gateway,
and the one playback ``POST /api/control`` runs."""

from __future__ import annotations

import logging

import trio

from vstack.auth import AuthPolicy

from .client import SmartClient
from .fetcher import FetchFailed
from .hls import HlsGateway

__all__ = ["ClientService"]

log = logging.getLogger("vstack.client")


class ClientService:
    def __init__(self, client: SmartClient, nursery: trio.Nursery, auth: AuthPolicy, *,
                 hls_cache_bytes: int) -> None:
        self.client = client
        self.nursery = nursery
        self.auth = auth
        self.hls = HlsGateway(client, nursery, cache_bytes=hls_cache_bytes)
        self._playing: trio.CancelScope | None = None
        self.port = 0

    async def play(self, video_id: str, speed: float, *, viewer: str | None = None) -> None:
        """Start playing ``video_id`` here (bytes discarded: a probe of what a viewer
        would see, shown by ``/api/status`` and the dashboard); stops the previous one.

        Raises:
            FetchFailed: no such video (404), or not playable (409).
        """
        play = await self.client.playback(video_id, speed=speed, viewer=viewer)
        self.stop()
        scope = self._playing = trio.CancelScope()

        async def run() -> None:
            with scope:
                try:
                    await play.run(_discard)
                except FetchFailed as exc:
                    log.info("playback of %s failed: %s", video_id, exc)

        self.nursery.start_soon(run)

    def stop(self) -> None:
        if self._playing is not None:
            self._playing.cancel()
            self._playing = None


async def _discard(data: bytes) -> None:
    return None
