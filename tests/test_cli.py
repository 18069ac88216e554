"""``vstack-node``: help a newcomer can read, and the guide's environment variables."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tools.node_cli import main
from vstack.store import StoreInUse, SuperblockStore


def test_help_names_every_setting_and_its_variable() -> None:
    out = " ".join(CliRunner().invoke(main, ["storage", "--help"]).output.split())
    for env in ("PORT", "BINARY_PORT", "NODE_ID", "NODE_URL", "DATA_DIR", "MAX_SUPERBLOCK_SIZE",
                "METADATA_SERVICE_URL", "HEARTBEAT_INTERVAL", "CAPACITY_BYTES",
                "COMPACTION_INTERVAL_SEC", "HEADER_TIMEOUT", "MAX_CONNECTIONS", "MAX_BUFFERED_BYTES"):
        assert f"env {env}" in out, env
    assert "vstack-node" in CliRunner().invoke(main, ["--help"]).output or "Usage" in out


def test_environment_configures_a_real_node(node_process: Callable[..., Any]) -> None:
    proc = node_process(NODE_ID="storage-node-9", MAX_CHUNK_SIZE="1000")
    proc.start()
    base = f"http://127.0.0.1:{proc.port}"
    with urllib.request.urlopen(f"{base}/health") as res:
        health = json.load(res)
    assert health["node_id"] == "storage-node-9"
    assert health["binary_port"] == proc.binary_port
    req = urllib.request.Request(f"{base}/chunk/too-big", data=b"x" * 1001, method="PUT")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    assert info.value.code == 413
    assert json.load(info.value)["error"].startswith("Chunk of 1001 bytes")
    assert (proc.data_dir / "data").is_dir()


def test_two_nodes_cannot_share_a_data_dir(tmp_path: Path) -> None:
    first = SuperblockStore.open(tmp_path)
    try:
        with pytest.raises(StoreInUse, match="in use"):
            SuperblockStore.open(tmp_path)
    finally:
        first.close()
    SuperblockStore.open(tmp_path).close()
