"""Start V-Stack services as child processes on 127.0.0.1 and wait for their ports.

Used by the tests (a storage node killed with SIGKILL mid-write, a metadata
replica killed mid-commit), the benchmarks, and later the chaos tool. A
service is ``python -m tools.node_cli <role>``, configured the way an
operator configures it: through the documented environment variables
(``PORT``, ``DATA_DIR``, ``METADATA_PEERS``...), added on top of this
process's environment.

Ports are picked by :func:`free_port` (bind to port 0, read the number, close)
and handed to the child, which binds them again; another process could take
one in between, which on a test machine does not happen in practice. A
service counts as up once every port it was given accepts a TCP connection;
if the child exits first, :meth:`ServiceProcess.start` says so, with the end
of its log.

Everything here blocks (``subprocess``, ``time.sleep``): call it from a
thread (``trio.to_thread.run_sync``) inside async code.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

__all__ = ["ROOT", "ServiceProcess", "free_port", "wait_port"]

#: The project root: the working directory of every child, so ``-m tools.node_cli`` resolves.
ROOT: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
_POLL: Final = 0.05
_LOG_TAIL: Final = 4000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago.

    Taken below the kernel's ephemeral range when there is room, so the
    ports outgoing connections get meanwhile can never take it first (a
    port from ``bind(0)`` is one of those, and was once taken between being
    chosen and being listened on).
    """
    low = _ephemeral_low()
    for _ in range(50):
        port = _PORTS.randrange(10_000, low) if low > 11_000 else 0
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            chosen: int = s.getsockname()[1]
            return chosen
    raise OSError("no free port found")


#: Its own generator: tests that seed the global one (hypothesis) get the same ports.
_PORTS = random.Random()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), else 65536."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 65_536


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Block until something accepts connections on ``port`` of 127.0.0.1.

    Raises:
        RuntimeError: nothing did within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _accepting(port):
            return
        time.sleep(_POLL)
    raise RuntimeError(f"nothing listening on {port}")


class ServiceProcess:
    """``python -m tools.node_cli <role>`` as a child process; startable again after a kill.

    Args:
        role: the ``vstack-node`` subcommand (``storage``, ``metadata``, ``all``...).
        env: environment variables set on top of this process's environment.
        ports: the ports the service listens on; :meth:`start` waits for all.
        log: file that collects the child's stderr (appended to, so restarts
            add to it); ``None`` leaves stderr to this process.
    """

    def __init__(self, role: str, env: Mapping[str, str], *, ports: Sequence[int] = (),
                 log: Path | None = None) -> None:
        self.role = role
        self.env = {**os.environ, **env}
        self.ports = tuple(ports)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start the child and wait until every port accepts connections.

        Raises:
            RuntimeError: the child exited, or a port stayed closed for
                ``timeout`` seconds (the child is then killed).
        """
        cmd = [sys.executable, "-m", "tools.node_cli", self.role]
        if self.log is None:
            self.proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT)
        else:
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stderr=log)
        deadline = time.monotonic() + timeout
        waiting = list(self.ports)
        while waiting:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} exited with status {self.proc.returncode}: "
                                   f"{self._log_tail()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(f"{self.role} did not start: port {waiting[0]} stayed closed")
            if _accepting(waiting[0]):
                waiting.pop(0)
            else:
                time.sleep(_POLL)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Send ``sig`` (SIGKILL: a crash; SIGTERM: a clean stop) and wait for the exit."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)

    def _log_tail(self) -> str:
        if self.log is None:
            return "(stderr not captured)"
        try:
            return self.log.read_text(errors="replace")[-_LOG_TAIL:]
        except OSError as exc:
            return f"(log unreadable: {exc})"
