"""``vstack-node``: start a V-Stack service (one subcommand per role).

Every option can also be set by the environment variable named in its help,
as the usage guide and docker-compose do. Logs go to stderr, one line per
event, at ``LOG_LEVEL``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from tools.client_options import client_options, client_settings
from tools.credentials import DEFAULT_DATA_DIR, ensure_secret_files, resolve_policy
from tools.ports import first_taken
from tools.runner import Settings, run_services
from vstack import __version__
from vstack.auth import AuthPolicy, check_bind, is_loopback
from vstack.node_urls import parse_aliases
from vstack.settings import (
    DEFAULT_MAX_CHUNK_BYTES,
    ClientSettings,
    MetadataSettings,
    RedundancySettings,
    StorageSettings,
    UploaderSettings,
    WebSettings,
    parse_database_url,
)

__all__ = ["main"]

log = logging.getLogger("vstack.cli")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="vstack-node")
@click.option("--log-level", envvar="LOG_LEVEL", default="INFO",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Log verbosity [env LOG_LEVEL].")
def main(log_level: str) -> None:
    """Start V-Stack services: a storage node, a metadata replica, the uploader, or all of
    them as one local cluster (`vstack-node all`).

    """
    _setup_logging(log_level)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(u.strip().rstrip("/") for u in (value or "").split(",") if u.strip())


F = TypeVar("F", bound=Callable[..., Any])


def security_options(fn: F) -> F:
    """The options every service shares: its secrets and how open it is (see README, Security)."""
    for option in reversed([
        click.option("--cluster-secret", envvar="CLUSTER_SECRET", default=None,
                     show_default=False, help="Shared secret (16+ characters) for calls between "
                     "services, sent as Authorization: Bearer [env CLUSTER_SECRET; unset: "
                     "loopback callers need none]."),
        click.option("--api-token", envvar="API_TOKEN", default=None, show_default=False,
                     help="Token (16+ characters) users' writes must carry: uploads, deletes, "
                     "status, overrides, views [env API_TOKEN]."),
        click.option("--public-reads/--no-public-reads", envvar="PUBLIC_READS", default=True,
                     help="Let anyone read manifests, chunks and lists [env PUBLIC_READS]."),
        click.option("--insecure", envvar="VSTACK_INSECURE", is_flag=True, default=False,
                     help="Allow listening beyond loopback with no CLUSTER_SECRET: anyone who "
                     "reaches the port can write [env VSTACK_INSECURE=1]."),
    ]):
        fn = option(fn)
    return fn


def _policy(host: str, sec: dict[str, Any]) -> AuthPolicy:
    """The service's :class:`AuthPolicy`, refusing an open service beyond loopback."""
    try:
        policy = resolve_policy(**sec)
        warning = check_bind(host, policy)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if warning:
        log.warning("%s", warning)
        click.echo(f"WARNING: {warning}", err=True)
    return policy


@main.command()
@click.option("--port", envvar="PORT", default=8081, type=click.IntRange(0, 65535),
              help="HTTP port [env PORT].")
@click.option("--binary-port", envvar="BINARY_PORT", type=click.IntRange(0, 65535), default=None,
              help="Binary protocol port [env BINARY_PORT; default: HTTP port + 100].")
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Address to listen on [env HOST].")
@click.option("--node-id", envvar="NODE_ID", default="",
              help="This node's id [env NODE_ID; default node-<port>].")
@click.option("--node-url", envvar="NODE_URL", default=None,
              help="URL others reach this node at, sent when registering [env NODE_URL].")
@click.option("--node-key", envvar="NODE_KEY", default=None, show_default=False,
              help="This node's identity key (16+ characters); its id stays bound to it "
              "[env NODE_KEY; default: made once in DATA_DIR/node.key].")
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
@click.option("--compaction-interval", envvar="COMPACTION_INTERVAL_SEC", default=30.0,
              type=click.FloatRange(0.01), help="Seconds between two compaction passes "
              "[env COMPACTION_INTERVAL_SEC].")
@click.option("--allowed-origin", envvar="ALLOWED_ORIGIN", default="*",
              help="CORS Access-Control-Allow-Origin [env ALLOWED_ORIGIN].")
@click.option("--header-timeout", envvar="HEADER_TIMEOUT", default=30.0, type=click.FloatRange(0.1),
              help="Seconds a whole request head (HTTP) or frame header (binary) may take "
              "[env HEADER_TIMEOUT].")
@click.option("--max-connections", envvar="MAX_CONNECTIONS", default=None, type=click.IntRange(1),
              help="Connections served at once per port; more get 503 [env MAX_CONNECTIONS; "
              "default: a quarter of the open-files limit, at most 1024].")
@click.option("--max-buffered-bytes", envvar="MAX_BUFFERED_BYTES", default=256 * 1024 * 1024,
              type=click.IntRange(1 << 20), help="Request payloads the binary protocol holds at "
              "once, all connections together [env MAX_BUFFERED_BYTES].")
@security_options
def storage(port: int, binary_port: int | None, host: str, node_id: str, node_url: str | None,
            node_key: str | None, data_dir: Path, metadata_url: str, max_superblock_size: int,
            max_chunk_size: int, capacity: int | None, heartbeat_interval: float,
            scrub_rate: int, compaction_interval: float, allowed_origin: str,
            header_timeout: float, max_connections: int | None, max_buffered_bytes: int,
            **sec: Any) -> None:
    """Run one storage node: chunks over HTTP (PORT) and the binary protocol (PORT+100)."""
    settings = StorageSettings(
        data_dir=data_dir, port=port, binary_port=binary_port, host=host, node_id=node_id,
        node_url=node_url, node_key=node_key, metadata_urls=_split(metadata_url),
        max_superblock_size=max_superblock_size, max_chunk_bytes=max_chunk_size,
        capacity_bytes=capacity, heartbeat_interval=heartbeat_interval,
        scrub_rate_bytes=scrub_rate, compaction_interval=compaction_interval,
        allowed_origin=allowed_origin, auth=_policy(host, sec),
        header_timeout=header_timeout, max_connections=max_connections,
        max_buffered_bytes=max_buffered_bytes,
    )
    run_services(settings)


@main.command()
@click.option("--port", envvar="PORT", default=8080, type=click.IntRange(0, 65535),
              help="HTTP port [env PORT].")
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Address to listen on [env HOST].")
@click.option("--database", envvar="DATABASE_URL", default="./data/metadata.db",
              help="SQLite file: a path or sqlite:///path [env DATABASE_URL].")
@click.option("--peers", envvar="METADATA_PEERS", default="",
              help="Every replica's base URL, comma-separated, the same list on each replica; "
                   "empty for a single replica [env METADATA_PEERS].")
@click.option("--id", "replica_id", envvar="METADATA_ID", default=0, type=click.IntRange(0, 63),
              help="This replica's index in --peers [env METADATA_ID].")
@click.option("--heartbeat-interval", envvar="HEARTBEAT_INTERVAL", default=10.0,
              type=click.FloatRange(0.1), help="Seconds between node heartbeats and probes "
              "[env HEARTBEAT_INTERVAL].")
@click.option("--node-timeout", envvar="NODE_TIMEOUT", default=30.0, type=click.FloatRange(0.1),
              help="A node silent this long is down [env NODE_TIMEOUT].")
@click.option("--popularity-threshold", envvar="POPULARITY_THRESHOLD", default=1000,
              type=click.IntRange(0), help="Views above which a video is kept as 3 replicas "
              "rather than erasure-coded [env POPULARITY_THRESHOLD].")
@click.option("--storage-nodes", envvar="STORAGE_NODES", default="",
              help="Storage node URLs to probe, comma-separated; a node that answers counts as "
                   "heartbeating [env STORAGE_NODES].")
@click.option("--aliases", envvar="NODE_ALIASES", default="",
              help="name=url pairs, comma-separated: how callers' node names map to reachable "
                   "URLs, e.g. http://storage-node-1:8081=http://localhost:8081 [env NODE_ALIASES].")
@click.option("--views-merge-interval", envvar="VIEWS_MERGE_INTERVAL", default=5.0,
              type=click.FloatRange(0.1), help="Seconds between exchanges of view counters "
              "with the other replicas [env VIEWS_MERGE_INTERVAL].")
@click.option("--chunk-duration", envvar="CHUNK_DURATION", default=10.0,
              type=click.FloatRange(1.0, 3600.0), help="Nominal chunk length manifests announce "
              "as chunk_duration_sec, in whole seconds [env CHUNK_DURATION].")
@click.option("--peer-port", envvar="METADATA_PEER_PORT", type=click.IntRange(0, 65535),
              default=None, help="Port for traffic between replicas [env METADATA_PEER_PORT; "
              "default: HTTP port + 100].")
@click.option("--peer-addrs", envvar="METADATA_PEER_ADDRS", default="",
              help="Each replica's host:port for traffic between replicas, comma-separated, in "
              "METADATA_PEERS order [env METADATA_PEER_ADDRS; default: each peer's HTTP port "
              "+ 100].")
@click.option("--bootstrap/--no-bootstrap", envvar="METADATA_BOOTSTRAP", default=False,
              help="A new cluster: a replica with an empty database votes at once instead of "
              "joining first (only when every replica is new) [env METADATA_BOOTSTRAP].")
@security_options
def metadata(port: int, host: str, database: str, peers: str, replica_id: int,
             heartbeat_interval: float, node_timeout: float, popularity_threshold: int,
             storage_nodes: str, aliases: str, views_merge_interval: float,
             chunk_duration: float, peer_port: int | None, peer_addrs: str,
             bootstrap: bool, **sec: Any) -> None:
    """Run one metadata replica: videos, chunk placements and nodes, agreed by Paxos."""
    try:
        settings = MetadataSettings(
            database=parse_database_url(database), port=port, host=host, peers=_split(peers),
            replica_id=replica_id, heartbeat_interval=heartbeat_interval,
            node_timeout=node_timeout, popularity_threshold=popularity_threshold,
            storage_nodes=_split(storage_nodes), aliases=parse_aliases(aliases),
            views_merge_interval=views_merge_interval, chunk_duration=round(chunk_duration),
            peer_port=peer_port, peer_addresses=_split(peer_addrs),
            auth=_policy(host, sec), bootstrap=bootstrap,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    run_services(settings)


@main.command()
@click.option("--port", envvar="PORT", default=8084, type=click.IntRange(0, 65535),
              help="HTTP port [env PORT].")
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Address to listen on [env HOST].")
@click.option("--metadata-url", envvar="METADATA_SERVICE_URL", default="http://localhost:8080",
              help="Metadata replica URL(s), comma-separated [env METADATA_SERVICE_URL].")
@click.option("--temp-dir", envvar="TEMP_DIR", default="/tmp/uploads",
              type=click.Path(path_type=Path),
              help="Where uploads, chunks being cut and session files live [env TEMP_DIR].")
@click.option("--chunk-size", envvar="CHUNK_SIZE", default=2 * 1024 * 1024,
              type=click.IntRange(64 * 1024), help="Target chunk size in bytes [env CHUNK_SIZE].")
@click.option("--chunk-duration", envvar="CHUNK_DURATION", default=10.0,
              type=click.FloatRange(1.0), help="Target chunk duration in seconds "
              "[env CHUNK_DURATION].")
@click.option("--max-concurrent-uploads", envvar="MAX_CONCURRENT_UPLOADS", default=5,
              type=click.IntRange(1), help="Videos processed at once; more wait in order "
              "[env MAX_CONCURRENT_UPLOADS].")
@click.option("--max-upload-bytes", envvar="MAX_UPLOAD_BYTES", default=8 * 1024**3,
              type=click.IntRange(1), help="Largest upload accepted (413 above) "
              "[env MAX_UPLOAD_BYTES].")
@click.option("--ffmpeg", envvar="FFMPEG", default=None,
              help="FFmpeg binary [env FFMPEG; default: ffmpeg on PATH, else imageio-ffmpeg's].")
@click.option("--redundancy", envvar="UPLOAD_REDUNDANCY", default="auto",
              type=click.Choice(["auto", "replication", "erasure_coding"]),
              help="How new uploads are stored; auto: as /redundancy/recommend says "
              "[env UPLOAD_REDUNDANCY].")
@security_options
def uploader(port: int, host: str, metadata_url: str, temp_dir: Path, chunk_size: int,
             chunk_duration: float, max_concurrent_uploads: int, max_upload_bytes: int,
             ffmpeg: str | None, redundancy: str, **sec: Any) -> None:
    """Run the uploader: video files in, ~10 s MPEG-TS chunks on the storage nodes out."""
    settings = UploaderSettings(
        temp_dir=temp_dir, metadata_urls=_split(metadata_url), port=port, host=host,
        chunk_size=chunk_size, chunk_duration=chunk_duration,
        max_concurrent_uploads=max_concurrent_uploads, max_upload_bytes=max_upload_bytes,
        ffmpeg=ffmpeg, redundancy=redundancy, auth=_policy(host, sec))
    run_services(settings)


@main.command()
@click.option("--metadata-url", envvar="METADATA_SERVICE_URL", default="http://localhost:8080",
              help="Metadata replica URL(s), comma-separated [env METADATA_SERVICE_URL].")
@click.option("--interval", envvar="REDUNDANCY_INTERVAL_SEC", default=30.0,
              type=click.FloatRange(0.1), help="Seconds between two looks at the cluster "
              "[env REDUNDANCY_INTERVAL_SEC].")
@click.option("--repair-grace", envvar="REPAIR_GRACE_SEC", default=300.0,
              type=click.FloatRange(0.0), help="A node down this long is lost and its chunks "
              "are rebuilt elsewhere [env REPAIR_GRACE_SEC].")
@click.option("--orphan-grace", envvar="ORPHAN_GRACE_SEC", default=3600.0,
              type=click.FloatRange(0.0), help="A stored copy no placement references this "
              "long is deleted [env ORPHAN_GRACE_SEC].")
@click.option("--upload-expiry", envvar="UPLOAD_EXPIRY_SEC", default=6 * 3600.0,
              type=click.FloatRange(0.0), help="An upload with no progress this long is deleted "
              "[env UPLOAD_EXPIRY_SEC].")
@click.option("--popularity-threshold", envvar="POPULARITY_THRESHOLD", default=1000,
              type=click.IntRange(0), help="Views in the window above which a video is "
              "replicated; below half of it, erasure-coded [env POPULARITY_THRESHOLD].")
@click.option("--popularity-window", envvar="POPULARITY_WINDOW_SEC", default=3600.0,
              type=click.FloatRange(1.0), help="Views are counted over this many recent "
              "seconds [env POPULARITY_WINDOW_SEC].")
@click.option("--port", envvar="REDUNDANCY_PORT", default=8087, type=click.IntRange(0, 65535),
              help="Port of its /health and /metrics [env REDUNDANCY_PORT].")
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Address to listen on [env HOST].")
@click.option("--rate", envvar="REDUNDANCY_RATE_BYTES", default=64 * 1024 * 1024,
              type=click.IntRange(1), help="Bytes per second repair and migration may move "
              "[env REDUNDANCY_RATE_BYTES].")
@security_options
def redundancy(metadata_url: str, interval: float, repair_grace: float, orphan_grace: float,
               upload_expiry: float, popularity_threshold: int, popularity_window: float,
               port: int, host: str, rate: int, **sec: Any) -> None:
    """Run the redundancy manager: self-repair, migration between modes, garbage collection."""
    settings = RedundancySettings(
        metadata_urls=_split(metadata_url), interval=interval, repair_grace=repair_grace,
        orphan_grace=orphan_grace, upload_expiry=upload_expiry,
        popularity_threshold=popularity_threshold, popularity_window=popularity_window,
        rate_bytes=rate, metrics_port=port, host=host, auth=_policy(host, sec))
    run_services(settings)


@main.command()
@click.option("--port", envvar="CLIENT_SERVICE_PORT", default=8086, type=click.IntRange(0, 65535),
              help="HTTP port [env CLIENT_SERVICE_PORT].")
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Address to listen on [env HOST].")
@click.option("--metadata-url", envvar="METADATA_SERVICE_URL", default="http://localhost:8080",
              help="Metadata replica URL(s), comma-separated [env METADATA_SERVICE_URL].")
@click.option("--hls-cache-bytes", envvar="HLS_CACHE_BYTES", default=256 * 1024 * 1024,
              type=click.IntRange(0), help="Segments the HLS gateway keeps ready (prefetched "
              "and recent), in bytes [env HLS_CACHE_BYTES].")
@client_options
@security_options
def client(port: int, host: str, metadata_url: str, hls_cache_bytes: int, **opts: Any) -> None:
    """Run the smart-client service: status, dashboard, stream and the HLS gateway."""
    sec = {k: opts.pop(k) for k in ("cluster_secret", "api_token", "public_reads", "insecure")}
    settings = client_settings(_split(metadata_url), port, host, _policy(host, sec), **opts)
    run_services(replace(settings, hls_cache_bytes=hls_cache_bytes))


@main.command()
@click.option("--port", envvar="DEMO_PORT", default=8085, type=click.IntRange(0, 65535),
              help="HTTP port [env DEMO_PORT].")
@click.option("--host", envvar=["DEMO_HOST", "HOST"], default="127.0.0.1",
              help="Address to listen on [env DEMO_HOST, or HOST].")
@click.option("--metadata-url", envvar="METADATA_SERVICE_URL", default="http://localhost:8080",
              help="Metadata replica URL(s), comma-separated [env METADATA_SERVICE_URL].")
@click.option("--uploader-url", envvar="UPLOADER_SERVICE_URL", default="http://localhost:8084",
              help="The uploader [env UPLOADER_SERVICE_URL].")
@click.option("--client-url", envvar="CLIENT_DASHBOARD_URL", default="http://localhost:8086",
              help="The smart-client service [env CLIENT_DASHBOARD_URL].")
@click.option("--redundancy-url", envvar="REDUNDANCY_URL", default="http://localhost:8087",
              help="The redundancy manager's /health, for the repair figures "
              "[env REDUNDANCY_URL].")
@click.option("--hls-url", envvar="HLS_PUBLIC_URL", default=None,
              help="Where browsers reach the HLS gateway [env HLS_PUBLIC_URL; default: "
              "CLIENT_DASHBOARD_URL/hls].")
@click.option("--max-upload-bytes", envvar="MAX_UPLOAD_BYTES", default=8 * 1024**3,
              type=click.IntRange(1), help="Largest upload accepted; 413 above "
              "[env MAX_UPLOAD_BYTES].")
@security_options
def web(port: int, host: str, metadata_url: str, uploader_url: str, client_url: str,
        redundancy_url: str, hls_url: str | None, max_upload_bytes: int, **sec: Any) -> None:
    """Run the web page: upload, watch, and the cluster live."""
    try:
        settings = WebSettings(
            metadata_urls=_split(metadata_url), uploader_url=uploader_url.rstrip("/"),
            client_url=client_url.rstrip("/"), redundancy_url=redundancy_url.rstrip("/"),
            hls_public_url=hls_url, port=port, host=host,
            max_upload_bytes=max_upload_bytes, auth=_policy(host, sec))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run_services(settings)


@main.command()
@click.option("--proxy", "proxies", envvar="NETEM_PROXIES", multiple=True, required=True,
              help="LISTEN_PORT=HOST:PORT, once per proxied port (a node's HTTP or binary "
              "port) [env NETEM_PROXIES, space-separated].")
@click.option("--control", envvar="NETEM_CONTROL_PORT", default=8089,
              type=click.IntRange(0, 65535), help="Control API port [env NETEM_CONTROL_PORT].")
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Address to listen on [env HOST].")
@click.option("--seed", envvar="NETEM_SEED", default=0, type=int,
              help="Seed of the random faults, for repeatable runs [env NETEM_SEED].")
@click.option("--max-connections", envvar="MAX_CONNECTIONS", default=256, type=click.IntRange(1),
              help="Connections each proxy carries at once [env MAX_CONNECTIONS].")
@security_options
def netem(proxies: tuple[str, ...], control: int, host: str, seed: int, max_connections: int,
          **sec: Any) -> None:
    """Run the network emulator: a TCP proxy with faults per node (see README)."""
    from nodes.netem.service import run_netem
    from vstack.netem import NetemSettings, parse_proxy_spec

    try:
        settings = NetemSettings(
            proxies=tuple(parse_proxy_spec(p) for p in proxies), control_port=control,
            host=host, seed=seed, max_connections=max_connections, auth=_policy(host, sec))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    trio.run(run_netem, settings)


@main.command(name="all")
@click.option("--data-dir", envvar="DATA_DIR", default=DEFAULT_DATA_DIR,
              type=click.Path(path_type=Path), help="Root of every service's data [env DATA_DIR].")
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Address to listen on [env HOST].")
@click.option("--nodes", "node_count", default=3, type=click.IntRange(1, 9),
              help="Storage nodes to start, on ports 8081, 8082, ...")
@security_options
def all_services(data_dir: Path, host: str, node_count: int, **sec: Any) -> None:
    """Run the embedded local cluster on the guide's ports.

    The metadata service (8080), three storage nodes (8081-8083, binary
    8181-8183), the uploader (8084), the redundancy manager and the smart
    client service (8086) and the web page (8085).
    """
    if not is_loopback(host) and not sec["cluster_secret"] and not sec["insecure"]:
        # Beyond loopback with no secrets given: make them once, where the CLIs look.
        cluster, token = ensure_secret_files(data_dir)
        sec = {**sec, "cluster_secret": cluster.decode(),
               "api_token": sec["api_token"] or token.decode()}
        click.echo(f"secrets (CLUSTER_SECRET, API_TOKEN) in {data_dir / 'secrets'}", err=True)
    auth = _policy(host, sec)
    busy = first_taken(host or "0.0.0.0", [8080, 8180, *range(8081, 8081 + node_count),
                                           *range(8181, 8181 + node_count), 8084, 8085, 8086, 8087])
    if busy:
        raise click.ClickException(f"{busy}: stop it, or is a V-Stack cluster running already?")
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    meta_url = f"http://{reach}:8080"
    services: list[Settings] = [MetadataSettings(
        database=data_dir / "metadata" / "metadata.db", port=8080, host=host, auth=auth,
        aliases=tuple((f"http://storage-node-{i}:8081", f"http://localhost:{8080 + i}")
                      for i in range(1, node_count + 1)),
    )]
    services += [
        StorageSettings(
            data_dir=data_dir / f"storage-node-{i}", port=8080 + i, host=host,
            node_id=f"storage-node-{i}", node_url=f"http://{reach}:{8080 + i}",
            metadata_urls=(meta_url,), auth=auth,
        )
        for i in range(1, node_count + 1)
    ]
    services.append(UploaderSettings(temp_dir=data_dir / "uploads", metadata_urls=(meta_url,),
                                     port=8084, host=host, auth=auth))
    services.append(RedundancySettings(metadata_urls=(meta_url,), metrics_port=8087, host=host,
                                       auth=auth))
    services.append(ClientSettings(metadata_urls=(meta_url,), port=8086, host=host, auth=auth))
    services.append(WebSettings(metadata_urls=(meta_url,), uploader_url=f"http://{reach}:8084",
                                client_url=f"http://{reach}:8086",
                                redundancy_url=f"http://{reach}:8087", port=8085, host=host,
                                auth=auth))
    click.echo(
        f"V-Stack local cluster: metadata service on 8080, {node_count} storage nodes on ports "
        f"8081-{8080 + node_count} (binary 8181-{8180 + node_count}), uploader on 8084, smart client on "
        f"8086, web page on http://{reach}:8085/, data under {data_dir}. Ctrl-C stops the cluster.",
        err=True,
    )
    run_services(*services)


if __name__ == "__main__":
    main()
