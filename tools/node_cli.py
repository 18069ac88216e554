"""``vstack-node``: start a V-Stack service (one subcommand per role).

Every option can also be set by the environment variable named in its help,
as the usage guide and docker-compose do. Logs go to stderr, one line per
event, at ``LOG_LEVEL``.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click
import trio

from nodes.storage_node import StorageNode, serve_storage_node
from vstack.settings import DEFAULT_MAX_CHUNK_BYTES, StorageSettings

__all__ = ["main"]

log = logging.getLogger("vstack.cli")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--log-level", envvar="LOG_LEVEL", default="INFO",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Log verbosity [env LOG_LEVEL].")
def main(log_level: str) -> None:
    """Start V-Stack services: storage nodes now; metadata, uploader and more to come."""
    _setup_logging(log_level)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(u.strip().rstrip("/") for u in (value or "").split(",") if u.strip())


async def _run_until_signal(*services: StorageSettings) -> None:
    async with trio.open_nursery() as nursery:
        for settings in services:
            node: StorageNode = await nursery.start(serve_storage_node, settings)
            click.echo(
                f"storage node {node.node_id}: http://127.0.0.1:{node.ports.http} "
                f"(binary {node.ports.binary}), data in {settings.data_dir}",
                err=True,
            )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("got %s, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


@main.command()
@click.option("--port", envvar="PORT", default=8081, type=click.IntRange(0, 65535),
              help="HTTP port [env PORT].")
@click.option("--binary-port", envvar="BINARY_PORT", type=click.IntRange(0, 65535), default=None,
              help="Binary protocol port [env BINARY_PORT; default: HTTP port + 100].")
@click.option("--host", envvar="HOST", default="0.0.0.0", help="Address to listen on [env HOST].")
@click.option("--node-id", envvar="NODE_ID", default="",
              help="This node's id [env NODE_ID; default node-<port>].")
@click.option("--node-url", envvar="NODE_URL", default=None,
              help="URL others reach this node at, sent when registering [env NODE_URL].")
@click.option("--data-dir", envvar="DATA_DIR", default="./data", type=click.Path(path_type=Path),
              help="Where superblocks and the index live [env DATA_DIR].")
@click.option("--metadata-url", envvar="METADATA_SERVICE_URL", default="",
              help="Metadata replica URL(s), comma-separated; register and heartbeat there "
                   "[env METADATA_SERVICE_URL].")
@click.option("--max-superblock-size", envvar="MAX_SUPERBLOCK_SIZE", default=1 << 30,
              type=click.IntRange(1 << 20), help="Start a new superblock file past this many "
              "bytes [env MAX_SUPERBLOCK_SIZE].")
@click.option("--max-chunk-size", envvar="MAX_CHUNK_SIZE", default=DEFAULT_MAX_CHUNK_BYTES,
              type=click.IntRange(1), help="Largest chunk accepted; bigger PUTs get 413 "
              "[env MAX_CHUNK_SIZE].")
@click.option("--capacity", envvar="CAPACITY_BYTES", default=None, type=click.IntRange(1),
              help="Refuse writes (507) once superblocks hold this many bytes "
              "[env CAPACITY_BYTES; default: until the disk is 95% full].")
@click.option("--heartbeat-interval", envvar="HEARTBEAT_INTERVAL", default=10.0,
              type=click.FloatRange(0.1), help="Seconds between heartbeats [env HEARTBEAT_INTERVAL].")
@click.option("--scrub-rate", envvar="SCRUB_RATE", default=32 * 1024 * 1024, type=click.IntRange(0),
              help="Bytes per second the background scrubber re-checks; 0 disables "
              "[env SCRUB_RATE].")
@click.option("--allowed-origin", envvar="ALLOWED_ORIGIN", default="*",
              help="CORS Access-Control-Allow-Origin [env ALLOWED_ORIGIN].")
def storage(port: int, binary_port: int | None, host: str, node_id: str, node_url: str | None,
            data_dir: Path, metadata_url: str, max_superblock_size: int, max_chunk_size: int,
            capacity: int | None, heartbeat_interval: float, scrub_rate: int,
            allowed_origin: str) -> None:
    """Run one storage node: chunks over HTTP (PORT) and the binary protocol (PORT+100)."""
    settings = StorageSettings(
        data_dir=data_dir, port=port, binary_port=binary_port, host=host, node_id=node_id,
        node_url=node_url, metadata_urls=_split(metadata_url),
        max_superblock_size=max_superblock_size, max_chunk_bytes=max_chunk_size,
        capacity_bytes=capacity, heartbeat_interval=heartbeat_interval,
        scrub_rate_bytes=scrub_rate, allowed_origin=allowed_origin,
    )
    trio.run(_run_until_signal, settings)


@main.command(name="all")
@click.option("--data-dir", envvar="DATA_DIR", default="./vstack-data",
              type=click.Path(path_type=Path), help="Root of every service's data [env DATA_DIR].")
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Address to listen on [env HOST].")
@click.option("--nodes", "node_count", default=3, type=click.IntRange(1, 9),
              help="Storage nodes to start, on ports 8081, 8082, ...")
def all_services(data_dir: Path, host: str, node_count: int) -> None:
    """Run the embedded local cluster on the guide's ports.

    Today that is the storage nodes (8081-8083, binary 8181-8183); the
    metadata service (8080) and uploader (8084) join as they land.
    """
    services = [
        StorageSettings(
            data_dir=data_dir / f"storage-node-{i}", port=8080 + i, host=host,
            node_id=f"storage-node-{i}", node_url=f"http://{host}:{8080 + i}",
        )
        for i in range(1, node_count + 1)
    ]
    click.echo(
        f"V-Stack local cluster: {node_count} storage nodes on ports 8081-{8080 + node_count} "
        f"(binary 8181-{8180 + node_count}), data under {data_dir}.\n"
        "The metadata service (8080) and the uploader (8084) are not part of V-Stack yet; "
        "Ctrl-C stops the cluster.",
        err=True,
    )
    trio.run(_run_until_signal, *services)


if __name__ == "__main__":
    main()
