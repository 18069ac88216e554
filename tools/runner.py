"""Running services in one process until a signal: what ``vstack-node`` commands share."""

from __future__ import annotations

import errno
import logging
import signal

import click
import trio

from nodes.client.service import serve_client
from nodes.client.state import ClientService
from nodes.metadata.service import serve_metadata
from nodes.metadata.state import MetadataService
from nodes.net.errors import single_error
from nodes.redundancy.service import serve_redundancy
from nodes.storage.node import StorageNode
from nodes.storage.service import serve_storage_node
from nodes.uploader.service import Uploader, serve_uploader
from protocol.errors import VStackError
from vstack.settings import (
    ClientSettings,
    MetadataSettings,
    RedundancySettings,
    StorageSettings,
    UploaderSettings,
    WebSettings,
)

__all__ = ["Settings", "run_services"]

log = logging.getLogger("vstack.cli")

Settings = (StorageSettings | MetadataSettings | UploaderSettings | RedundancySettings
            | ClientSettings | WebSettings)


def run_services(*services: Settings) -> None:
    """Run the services until a signal; a failure to start (a port taken, the metadata
    service unreachable) is one line on stderr and exit status 1, not a traceback."""
    try:
        trio.run(_run_until_signal, *services)
    except BaseException as exc:
        leaf = single_error(exc)
        if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
            raise click.ClickException(f"a port is already in use ({leaf.strerror}): is "
                                       "another V-Stack (or another program) running?") from None
        if isinstance(leaf, VStackError | OSError):
            raise click.ClickException(str(leaf)) from None
        raise


def _url(settings: Settings, port: int) -> str:
    """Where the service can be reached: its bind address (loopback for a wildcard)."""
    host = str(getattr(settings, "host", "") or "")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _run_until_signal(*services: Settings) -> None:
    async with trio.open_nursery() as nursery:
        for settings in services:
            if isinstance(settings, UploaderSettings):
                up: Uploader = await nursery.start(serve_uploader, settings)
                click.echo(f"uploader: {_url(settings, up.port)} (temp {settings.temp_dir})",
                           err=True)
                continue
            if isinstance(settings, WebSettings):
                from web.service import serve_web

                web = await nursery.start(serve_web, settings)
                click.echo(f"web page: {_url(settings, web.port)}/", err=True)
                continue
            if isinstance(settings, ClientSettings):
                client: ClientService = await nursery.start(serve_client, settings)
                click.echo(f"smart client: {_url(settings, client.port)} (dashboard; HLS at "
                           f"/hls/VIDEO_ID.m3u8)", err=True)
                continue
            if isinstance(settings, RedundancySettings):
                mgr = await nursery.start(serve_redundancy, settings)
                where = f", {_url(settings, mgr.port)}/metrics" if mgr.port else ""
                click.echo(f"redundancy manager: a pass every {settings.interval:.0f} s{where}",
                           err=True)
                continue
            if isinstance(settings, MetadataSettings):
                meta: MetadataService = await nursery.start(serve_metadata, settings)
                click.echo(f"metadata replica {settings.replica_id}: {_url(settings, meta.port)}"
                           f" (database {settings.database})", err=True)
                continue
            node: StorageNode = await nursery.start(serve_storage_node, settings)
            click.echo(
                f"storage node {node.node_id}: {_url(settings, node.ports.http)} "
                f"(binary {node.ports.binary}), data in {settings.data_dir}",
                err=True,
            )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("got %s, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break



