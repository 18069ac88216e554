"""Settings objects of the services, built once by the CLI and passed down.

Each field's default is the documented one; the CLI (``tools/node_cli.py``)
fills them from options and the usage guide's environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from .auth import AuthPolicy
from .playback import BufferPolicy

#: No secrets: loopback callers need no credentials (see :mod:`vstack.auth`).
OPEN: Final = AuthPolicy()

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "StorageSettings", "binary_port_for"]

DEFAULT_MAX_CHUNK_BYTES: Final = 8 * 1024 * 1024
#: The binary protocol listens on the HTTP port plus this, unless configured.
BINARY_PORT_OFFSET: Final = 100


def binary_port_for(http_port: int) -> int:
    return http_port + BINARY_PORT_OFFSET if http_port else 0


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """Everything a storage node needs to know at start-up."""

    data_dir: Path
    port: int = 8081
    binary_port: int | None = None  # None: port + 100; 0: any free port
    host: str = "127.0.0.1"
    node_id: str = ""
    node_url: str | None = None
    node_key: str | None = None  # NODE_KEY; None: the one in data_dir/node.key (made once)
    metadata_urls: tuple[str, ...] = ()
    max_superblock_size: int = 1 << 30
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
    capacity_bytes: int | None = None  # refuse writes (507) beyond this many stored bytes
    max_disk_usage_percent: float = 95.0
    allowed_origin: str = "*"
    auth: AuthPolicy = OPEN
    heartbeat_interval: float = 10.0
    checkpoint_interval: float = 60.0
    compaction_interval: float = 30.0
    compaction_garbage_ratio: float = 0.5
    scrub_rate_bytes: int = 32 * 1024 * 1024  # per second; 0 disables scrubbing
    scrub_pause: float = 3600.0  # between two full passes
    read_timeout: float = 30.0  # one read inside a request
    idle_timeout: float = 75.0  # between requests on a keep-alive connection
    header_timeout: float = 30.0  # a whole request head (HTTP) or frame header (binary)
    max_connections: int | None = None  # per listener; None: a quarter of the fd limit, <= 1024
    #: Request payloads the binary protocol holds at once, all connections together
    #: (and as much again for chunks read into memory to answer GETs).
    max_buffered_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0..65535")
        if self.max_chunk_bytes <= 0:
            raise ValueError("max_chunk_bytes must be positive")
        if not 0 < self.compaction_garbage_ratio <= 1:
            raise ValueError("compaction_garbage_ratio must be in (0, 1]")
        if self.header_timeout <= 0:
            raise ValueError("HEADER_TIMEOUT must be positive")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("MAX_CONNECTIONS must be at least 1")
        if self.max_buffered_bytes <= 0:
            raise ValueError("MAX_BUFFERED_BYTES must be positive")
        if self.compaction_interval <= 0:
            raise ValueError("COMPACTION_INTERVAL_SEC must be positive")

    @property
    def effective_node_id(self) -> str:
        return self.node_id or f"node-{self.port}"

    @property
    def effective_binary_port(self) -> int:
        return binary_port_for(self.port) if self.binary_port is None else self.binary_port


@dataclass(frozen=True, kw_only=True)
class MetadataSettings:
    """Everything a metadata replica needs to know at start-up."""

    database: Path
    port: int = 8080
    host: str = "127.0.0.1"
    peers: tuple[str, ...] = ()  # every replica's base URL, the same list everywhere
    replica_id: int = 0
    heartbeat_interval: float = 10.0
    node_timeout: float = 30.0
    popularity_threshold: int = 1000
    storage_nodes: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()  # (name, URL reachable by callers)
    sqlite_synchronous: str = "FULL"
    probe_timeout: float = 2.0
    views_merge_interval: float = 5.0  # how often replicas exchange view counters
    chunk_duration: int = 10  # the nominal chunk length manifests announce (CHUNK_DURATION)
    peer_port: int | None = None  # replica-to-replica listener; None: port + 100; 0: any free port
    peer_addresses: tuple[str, ...] = ()  # each replica's host:port for peer traffic (default: derived)
    auth: AuthPolicy = OPEN  # its cluster secret also authenticates peer traffic
    max_rounds_in_flight: int = 2000  # decisions at once; more are refused with a 503
    bootstrap: bool = False  # a new cluster: vote at once, with no past to join
    read_timeout: float = 30.0
    idle_timeout: float = 75.0

    def __post_init__(self) -> None:
        if self.peers and not 0 <= self.replica_id < len(self.peers):
            raise ValueError("METADATA_ID must index METADATA_PEERS")
        if self.node_timeout <= 0 or self.heartbeat_interval <= 0:
            raise ValueError("intervals must be positive")
        if self.peer_addresses and len(self.peer_addresses) != len(self.peers):
            raise ValueError("METADATA_PEER_ADDRS must list one host:port per METADATA_PEERS entry")
        for addr in self.peer_addresses:
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"peer address {addr!r} is not host:port")

    @property
    def cluster_secret(self) -> bytes | None:
        """Authenticates peer traffic; ``None``: replicas accept peers on loopback only."""
        return self.auth.cluster_secret

    @property
    def replicas(self) -> int:
        return max(1, len(self.peers))

    @property
    def effective_peer_port(self) -> int:
        return binary_port_for(self.port) if self.peer_port is None else self.peer_port

    def peer_address(self, replica: int) -> tuple[str, int]:
        """Where replica ``replica`` listens for peer traffic: ``METADATA_PEER_ADDRS``,
        else its ``METADATA_PEERS`` host at that URL's port + 100."""
        if self.peer_addresses:
            host, _, port = self.peer_addresses[replica].rpartition(":")
            return host.strip("[]"), int(port)
        parts = urlsplit(self.peers[replica])
        return parts.hostname or "127.0.0.1", binary_port_for(parts.port or 80)


def parse_database_url(value: str) -> Path:
    """``DATABASE_URL`` as the guide writes it: a path, or ``sqlite:///relative``
    / ``sqlite:////absolute`` (SQLAlchemy's spelling)."""
    if value.startswith("sqlite:///"):
        value = value[len("sqlite:///"):]
    elif value.startswith("file:"):
        value = value[len("file:"):]
    if not value:
        raise ValueError("DATABASE_URL names no file")
    return Path(value)


__all__ += ["MetadataSettings", "parse_database_url"]


@dataclass(frozen=True, kw_only=True)
class UploaderSettings:
    """Everything the uploader needs to know at start-up."""

    temp_dir: Path
    metadata_urls: tuple[str, ...]
    port: int = 8084
    host: str = "127.0.0.1"
    chunk_size: int = 2 * 1024 * 1024
    chunk_duration: float = 10.0
    max_concurrent_uploads: int = 5
    max_upload_bytes: int = 8 * 1024**3
    max_segment_bytes: int = DEFAULT_MAX_CHUNK_BYTES - 64 * 1024  # what a node accepts
    replicas: int = 3
    chunks_in_flight: int = 8
    ffmpeg: str | None = None  # None: a system ffmpeg, else the imageio-ffmpeg one
    #: UPLOAD_REDUNDANCY: "auto" (what /redundancy/recommend says), "replication", "erasure_coding"
    redundancy: str = "auto"
    auth: AuthPolicy = OPEN
    read_timeout: float = 60.0
    idle_timeout: float = 75.0

    def __post_init__(self) -> None:
        if not self.metadata_urls:
            raise ValueError("METADATA_SERVICE_URL is required")
        if self.chunk_size < 64 * 1024 or self.chunk_duration <= 0:
            raise ValueError("chunk size/duration out of range")
        if self.max_concurrent_uploads < 1 or self.replicas < 1:
            raise ValueError("limits must be positive")
        if self.redundancy not in ("auto", "replication", "erasure_coding"):
            raise ValueError("UPLOAD_REDUNDANCY must be auto, replication or erasure_coding")


__all__ += ["UploaderSettings"]


@dataclass(frozen=True, kw_only=True)
class RedundancySettings:
    """The redundancy manager: repair, migration between modes, garbage collection."""

    metadata_urls: tuple[str, ...]
    interval: float = 30.0  # REDUNDANCY_INTERVAL_SEC: between two looks at the cluster
    repair_grace: float = 300.0  # REPAIR_GRACE_SEC: a node down this long is lost
    orphan_grace: float = 3600.0  # ORPHAN_GRACE_SEC: an unreferenced copy this old is deleted
    upload_expiry: float = 6 * 3600.0  # UPLOAD_EXPIRY_SEC: an upload stalled this long fails
    popularity_threshold: int = 1000  # POPULARITY_THRESHOLD
    popularity_window: float = 3600.0  # POPULARITY_WINDOW_SEC: views counted over this window
    rate_bytes: int = 64 * 1024 * 1024  # REDUNDANCY_RATE_BYTES: bytes/s moved at most
    metrics_port: int | None = None  # REDUNDANCY_PORT: /health and /metrics (None: none)
    host: str = "127.0.0.1"
    auth: AuthPolicy = OPEN

    def __post_init__(self) -> None:
        if not self.metadata_urls:
            raise ValueError("METADATA_SERVICE_URL is required")
        if min(self.interval, self.popularity_window) <= 0 or self.rate_bytes <= 0:
            raise ValueError("intervals and the rate must be positive")
        if min(self.repair_grace, self.orphan_grace, self.upload_expiry) < 0:
            raise ValueError("grace periods must not be negative")


__all__ += ["RedundancySettings"]


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """The smart client: ``vstack-play`` and the client service (port 8086)."""

    metadata_urls: tuple[str, ...]
    port: int = 8086  # CLIENT_SERVICE_PORT
    host: str = "127.0.0.1"
    monitoring_interval: float = 3.0  # MONITORING_INTERVAL (PING_INTERVAL is read too)
    target_buffer_sec: float = 30.0  # TARGET_BUFFER_SEC
    low_water_mark_sec: float = 15.0  # LOW_WATER_MARK_SEC
    max_concurrent_downloads: int = 4  # MAX_CONCURRENT_DOWNLOADS
    download_timeout: float = 10.0  # DOWNLOAD_TIMEOUT: the most one download may take
    #: CLIENT_TRANSPORT: "auto" (the binary protocol where a node offers it) or "http"
    #: (HTTP only: nodes reached through proxies that forward their HTTP port alone).
    transport: str = "auto"
    hls_cache_bytes: int = 256 * 1024 * 1024  # chunks the HLS gateway keeps ready
    auth: AuthPolicy = OPEN

    def __post_init__(self) -> None:
        if not self.metadata_urls:
            raise ValueError("METADATA_SERVICE_URL is required")
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0..65535")
        if not 0.1 <= self.monitoring_interval <= 3600:
            raise ValueError("MONITORING_INTERVAL must be in [0.1, 3600] seconds")
        if self.transport not in ("auto", "http"):
            raise ValueError("CLIENT_TRANSPORT must be auto or http")
        if self.download_timeout < 1 or self.hls_cache_bytes < 0:
            raise ValueError("DOWNLOAD_TIMEOUT must be at least 1 s")
        self.policy()  # the buffer settings' own checks

    def policy(self) -> BufferPolicy:
        return BufferPolicy(target_sec=self.target_buffer_sec,
                            low_water_sec=self.low_water_mark_sec,
                            max_concurrent=self.max_concurrent_downloads,
                            max_timeout_sec=self.download_timeout)


__all__ += ["ClientSettings"]


@dataclass(frozen=True, kw_only=True)
class WebSettings:
    """The web page (port 8085): upload, watch, the cluster live."""

    metadata_urls: tuple[str, ...]
    uploader_url: str = "http://localhost:8084"  # UPLOADER_SERVICE_URL
    client_url: str = "http://localhost:8086"  # CLIENT_DASHBOARD_URL: the client service
    redundancy_url: str = "http://localhost:8087"  # REDUNDANCY_URL: the manager's /health
    #: HLS_PUBLIC_URL: where browsers reach the client's HLS gateway (default: client_url/hls)
    hls_public_url: str | None = None
    port: int = 8085  # DEMO_PORT
    host: str = "127.0.0.1"
    max_upload_bytes: int = 8 * 1024**3  # as the uploader's default
    auth: AuthPolicy = OPEN

    def __post_init__(self) -> None:
        if not self.metadata_urls:
            raise ValueError("METADATA_SERVICE_URL is required")
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0..65535")
        for url in (self.uploader_url, self.client_url, self.redundancy_url, self.hls_public_url):
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")

    @property
    def hls_base(self) -> str:
        return (self.hls_public_url or self.client_url.rstrip("/") + "/hls").rstrip("/")


__all__ += ["WebSettings"]
