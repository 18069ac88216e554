"""A cluster across hosts: every service in its own network namespace on this machine.

3 metadata replicas and 5 storage nodes, the uploader and the client each on a
host of their own (``tools/netns.py``: veth pairs on a private bridge), every
service bound to its host's address with secrets, nothing on 127.0.0.1. One
metadata replica and one storage node are cut off the network (link down)
while a video is uploaded and another played, then healed: no acknowledged
write is lost, the playback does not stall, and the replica and the node
catch up. Skips with the reason where namespaces cannot be made (not root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.netns import Network, netns_unavailable

from .conftest import ROOT
from .test_uploader import probe_file

SECRET = "netns cluster secret, long enough"
TOKEN = "netns api token, long enough too"
ENV = {"CLUSTER_SECRET": SECRET, "API_TOKEN": TOKEN, "LOG_LEVEL": "INFO"}


@pytest.fixture
def network() -> Iterator[Network]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(f"no network namespaces here: {why}")
    net = Network(prefix=f"v{os.getpid() % 10000}")
    try:
        yield net
    finally:
        net.close()


def on(net: Network, host: str, code: str, timeout: float = 60) -> Any:
    """Run Python ``code`` on ``host``; it prints one JSON value, returned here."""
    done = subprocess.run(net.command(host, [sys.executable, "-c", code]), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def get_json(net: Network, host: str, url: str) -> Any:
    return on(net, host, f"""
import json, urllib.request
req = urllib.request.Request({url!r}, headers={{"Authorization": "Bearer {TOKEN}"}})
with urllib.request.urlopen(req, timeout=5) as r:
    print(json.dumps(json.load(r)))
""")


def wait_for(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except (AssertionError, subprocess.TimeoutExpired):
            pass
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.5)


def cli(net: Network, host: str, module: str, *args: str, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(net.command(host, [sys.executable, "-m", module, *args]), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV})


@pytest.mark.slow
def test_a_cluster_across_hosts_survives_a_replica_and_a_node_cut_off(
        network: Network, tmp_path: Path, media: dict[str, Path]) -> None:
    net = network
    metas = [net.add_host(f"m{i}") for i in range(3)]
    nodes = [net.add_host(f"s{i}") for i in range(5)]
    up, _client = net.add_host("up"), net.add_host("cl")
    meta_urls = ",".join(f"http://{a}:8080" for a in metas)
    procs = []
    try:
        for i, addr in enumerate(metas):
            procs.append(net.spawn(f"m{i}", "metadata", {
                **ENV, "HOST": addr, "PORT": "8080", "METADATA_ID": str(i),
                "METADATA_PEERS": meta_urls, "METADATA_PEER_PORT": "8180",
                "METADATA_PEER_ADDRS": ",".join(f"{a}:8180" for a in metas),
                "NODE_TIMEOUT": "3", "HEARTBEAT_INTERVAL": "0.5",
                # A brand-new cluster: the replicas vote at once (joining a cluster with
                # a past is tested in test_metadata_cluster.py).
                "METADATA_BOOTSTRAP": "1",
                "DATABASE_URL": str(tmp_path / f"m{i}" / "metadata.db")}, tmp_path / f"m{i}.log"))
        for i, addr in enumerate(nodes):
            procs.append(net.spawn(f"s{i}", "storage", {
                **ENV, "HOST": addr, "PORT": "8081", "BINARY_PORT": "8181",
                "NODE_ID": f"s{i}", "NODE_URL": f"http://{addr}:8081",
                "METADATA_SERVICE_URL": meta_urls, "HEARTBEAT_INTERVAL": "0.5",
                "DATA_DIR": str(tmp_path / f"s{i}"), "SCRUB_RATE": "0"}, tmp_path / f"s{i}.log"))
        procs.append(net.spawn("up", "uploader", {
            **ENV, "HOST": up, "PORT": "8084", "METADATA_SERVICE_URL": meta_urls,
            "TEMP_DIR": str(tmp_path / "uploads"), "CHUNK_DURATION": "1"},
            tmp_path / "up.log"))
        m0, m2 = f"http://{metas[0]}:8080", f"http://{metas[2]}:8080"
        wait_for(lambda: len(get_json(net, "cl", f"{m0}/nodes/healthy")) == 5, 120,
                 "5 storage nodes registered")

        def put(title: str) -> str:
            done = cli(net, "cl", "tools.put_cli", str(media["clip.mp4"]), "--title", title,
                       "--uploader", f"http://{up}:8084", "--metadata", meta_urls, "--json")
            assert done.returncode == 0, done.stdout + done.stderr
            state = json.loads(done.stdout)
            assert state["status"] == "completed", state
            return str(state["video_id"])

        first = put("before the cut")
        manifest = get_json(net, "cl", f"{m0}/manifest/{first}")
        # Nothing assumes localhost: every copy is named by its host's address.
        urls = {u for ch in manifest["chunks"] for u in
                (ch["replicas"] or [f["node_url"] for f in ch.get("fragments") or []])}
        assert urls <= {f"http://{a}:8081" for a in nodes}, urls
        # A playback runs (real time) while a replica and a node are cut off.
        out = tmp_path / "first.ts"
        player = subprocess.Popen(
            net.command("cl", [sys.executable, "-m", "tools.play_cli", first, "-o", str(out),
                               "--json", "--metadata", meta_urls, "--transport", "http"]),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **ENV})
        time.sleep(1.0)
        net.cut("m2")
        net.cut("s4")
        with pytest.raises(AssertionError):  # really off the network
            on(net, "cl", f"import urllib.request; urllib.request.urlopen({m2!r} + "
                          "'/health', timeout=2)", timeout=30)
        second = put("during the cut")
        stdout, stderr = player.communicate(timeout=120)
        assert player.returncode == 0, stderr
        status = json.loads(stdout)
        assert status["buffer_stats"]["rebuffering_events"] == 0
        assert status["buffer_stats"]["total_chunks_played"] == len(manifest["chunks"])
        assert abs(probe_file(out).duration - 5.0) < 0.2  # the whole clip, not the manifest
        wait_for(lambda: f"http://{nodes[4]}:8081" not in
                 {n["node_url"] for n in get_json(net, "cl", f"{m0}/nodes/healthy")}, 30,
                 "the cut-off node seen down")
        net.heal("m2")
        net.heal("s4")
        for vid in (first, second):  # the cut-off replica catches up
            wait_for(lambda vid=vid: get_json(net, "cl", f"{m2}/manifest/{vid}")["chunks"] ==
                     get_json(net, "cl", f"{m0}/manifest/{vid}")["chunks"], 60,
                     f"replica 2 has {vid}")
        wait_for(lambda: f"http://{nodes[4]}:8081" in
                 {n["node_url"] for n in get_json(net, "cl", f"{m0}/nodes/healthy")}, 30,
                 "the cut-off node back")
        again = cli(net, "cl", "tools.play_cli", second, "-o", str(tmp_path / "second.ts"),
                    "--speed", "0", "--json", "--metadata", m2)
        assert again.returncode == 0, again.stderr  # the acknowledged write, from replica 2
        assert abs(probe_file(tmp_path / "second.ts").duration - 5.0) < 0.2
        # The node serves again what it held before the cut.
        s4 = f"http://{nodes[4]}:8081"
        held = [(ch["chunk_id"], ch["checksum"]) for ch in manifest["chunks"]
                if s4 in (ch["replicas"] or [])]
        held += [(f["fragment_id"], f["checksum"]) for ch in manifest["chunks"]
                 for f in ch.get("fragments") or [] if f["node_url"] == s4]
        assert held  # 5 nodes: every chunk has a copy or a shard on each
        for cid, sha in held:
            got = on(net, "cl", f"""
import hashlib, json, urllib.request
req = urllib.request.Request("http://{nodes[4]}:8081/chunk/{cid}",
                             headers={{"Authorization": "Bearer {TOKEN}"}})
print(json.dumps(hashlib.sha256(urllib.request.urlopen(req, timeout=5).read()).hexdigest()))
""")
            assert got == sha.removeprefix("sha256:")
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
