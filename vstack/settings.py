"""Settings objects of the services, built once by the CLI and passed down.

Each field's default is the documented one; the CLI (``tools/node_cli.py``)
fills them from options and the usage guide's environment variables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["CHUNK_ID_RE", "DEFAULT_MAX_CHUNK_BYTES", "StorageSettings", "binary_port_for"]

#: The chunk-id rule of the contract; nothing outside it ever reaches a store.
CHUNK_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
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
    host: str = "0.0.0.0"
    node_id: str = ""
    node_url: str | None = None
    metadata_urls: tuple[str, ...] = ()
    max_superblock_size: int = 1 << 30
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
    capacity_bytes: int | None = None  # refuse writes (507) beyond this many stored bytes
    max_disk_usage_percent: float = 95.0
    allowed_origin: str = "*"
    heartbeat_interval: float = 10.0
    checkpoint_interval: float = 60.0
    compaction_interval: float = 30.0
    compaction_garbage_ratio: float = 0.5
    scrub_rate_bytes: int = 32 * 1024 * 1024  # per second; 0 disables scrubbing
    scrub_pause: float = 3600.0  # between two full passes
    read_timeout: float = 30.0  # one read inside a request
    idle_timeout: float = 75.0  # between requests on a keep-alive connection
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0..65535")
        if self.max_chunk_bytes <= 0:
            raise ValueError("max_chunk_bytes must be positive")
        if not 0 < self.compaction_garbage_ratio <= 1:
            raise ValueError("compaction_garbage_ratio must be in (0, 1]")

    @property
    def effective_node_id(self) -> str:
        return self.node_id or f"node-{self.port}"

    @property
    def effective_binary_port(self) -> int:
        return binary_port_for(self.port) if self.binary_port is None else self.binary_port
