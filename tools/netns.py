"""Test hosts on one machine: a network namespace per host, on a private bridge.

:class:`Network` makes a *switch* namespace holding a bridge, and for each
host a namespace with one interface (``eth0``, an address of
``10.<net>.0.0/24``) joined to the bridge by a veth pair. Nothing is added to
the machine's own namespace, and nothing leaves the bridge: the hosts reach
each other and nothing else. :meth:`Network.cut` and :meth:`Network.heal` take
a host's link down and up (a host cut off the network, its processes still
running). :meth:`Network.close` deletes every namespace, which deletes their
interfaces.

Blocking (``subprocess``), for tests and tools; needs root (or CAP_NET_ADMIN)
and ``ip`` from iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["NetnsUnavailable", "Network", "netns_unavailable"]


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, a kernel without them)."""


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or ``None`` if they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (Debian: apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"vsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Network:
    def __init__(self, prefix: str, net: int = 77) -> None:
        """``prefix``: a short tag for names (at most 5 characters), unique per network."""
        if not 1 <= len(prefix) <= 5 or not prefix.isalnum():
            raise ValueError("prefix: 1 to 5 letters or digits")
        self.prefix = prefix
        self.net = net
        self.switch = f"{prefix}-sw"
        self.hosts: dict[str, tuple[str, str]] = {}  # name -> (namespace, address)
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> str:
        """A new host on the bridge; returns its address."""
        index = len(self.hosts) + 1
        ns, address = f"{self.prefix}-{name}", f"10.{self.net}.0.{index}"
        inside, outside = f"{self.prefix}h{index}", f"{self.prefix}s{index}"
        _ip("netns", "add", ns)
        self.hosts[name] = (ns, address)
        _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "netns", self.switch)
        _ip("-n", ns, "link", "set", inside, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "set", outside, "master", "br0")
        _ip("-n", self.switch, "link", "set", outside, "up")
        return address

    def address(self, name: str) -> str:
        return self.hosts[name][1]

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run on host ``name``."""
        return ["ip", "netns", "exec", self.hosts[name][0], *argv]

    def spawn(self, name: str, role: str, env: Mapping[str, str], log: Path
              ) -> subprocess.Popen[bytes]:
        """``vstack-node ROLE`` on host ``name``, its stderr appended to ``log``."""
        with open(log, "ab") as err:
            return subprocess.Popen(
                self.command(name, [sys.executable, "-m", "tools.node_cli", role]),
                env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=err,
                cwd=Path(__file__).resolve().parent.parent)

    def cut(self, name: str) -> None:
        """Take the host off the network (its link down; its processes run on)."""
        _ip("-n", self.hosts[name][0], "link", "set", "eth0", "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.hosts[name][0], "link", "set", "eth0", "up")

    def close(self) -> None:
        for ns, _ in self.hosts.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)
        self.hosts.clear()
