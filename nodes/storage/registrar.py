"""A storage node makes itself known: registration, then heartbeats, to every metadata replica.

One job per replica (a replica that is down or misbehaves delays no
other). Each job registers (``POST /nodes/register``) until a replica
accepts, then heartbeats (``POST /nodes/{id}/heartbeat``) every
``heartbeat_interval`` seconds; a heartbeat answered 404 means the replica
forgot us (a fresh database): the job registers again. A 404 to the first
heartbeat after a registration is a failure like any other (backed off),
not a reason to register again at once.

A replica that resets the connection, hangs, or answers garbage costs one
failed step: the job backs off and goes on (:func:`nodes.net.jobs.run_forever`),
and the node keeps serving. A hung replica is cut off by a deadline per
call; a garbage answer is a :class:`~protocol.errors.ProtocolError` like any
other failure.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from nodes.net.errors import deadline
from nodes.net.http_client import HttpClient, HttpResult
from nodes.net.jobs import Backoff, run_forever
from protocol.errors import RemoteProtocolError
from protocol.node_api import Heartbeat, NodeRegistration
from vstack import fsio

from .node import StorageNode

__all__ = ["CALL_TIMEOUT", "NODE_KEY_FILE", "Registrar", "load_node_key"]

NODE_KEY_FILE = "node.key"

log = logging.getLogger("vstack.storage.registrar")

#: Seconds a replica has to answer one registration or heartbeat.
CALL_TIMEOUT = 5.0
#: The longest pause between tries to reach a replica that did not answer: a
#: heartbeat is small, and a replica back on the network should hear from its
#: nodes again within seconds (its peers vouch for them meanwhile).
HEARTBEAT_BACKOFF_MAX = 5.0
#: Seconds after start before the first registration (the listeners are up by then).
FIRST_DELAY = 0.5


@dataclass(eq=False)
class Registrar:
    """Registration and heartbeats to one metadata replica."""

    node: StorageNode
    metadata_url: str
    http: HttpClient
    node_key: str | None = None  # binds our node id to us (see NodeRegistration)
    registered: bool = False
    heartbeats: int = 0  # accepted since start (for tests and /health)

    @property
    def base(self) -> str:
        return self.metadata_url.rstrip("/")

    async def run(self) -> None:
        await run_forever(f"registration with {self.base}", self.step, log=log,
                          every=self.node.settings.heartbeat_interval,
                          initial_delay=FIRST_DELAY,
                          backoff=Backoff(initial=1.0, maximum=max(
                              HEARTBEAT_BACKOFF_MAX, self.node.settings.heartbeat_interval)))

    async def step(self) -> float | None:
        """Register if we are not registered, then heartbeat."""
        fresh = not self.registered
        if fresh:  # then heartbeat in the same step: the replica learns our vital signs
            await self.register()
        res = await self._post(f"/nodes/{quote(self.node.node_id, safe='')}/heartbeat",
                               self._heartbeat())
        if res.status == 404:
            self.registered = False
            if fresh:  # it accepted the registration, yet knows no such node
                raise RemoteProtocolError("heartbeat answered 404 right after registration", 502)
            log.info("metadata replica %s forgot this node; registering again", self.base)
            return 0.0
        _expect_ok(res, "heartbeat")
        self.heartbeats += 1
        return None

    async def register(self) -> None:
        s = self.node.settings
        assert s.node_url is not None
        body = NodeRegistration(node_url=s.node_url, node_id=self.node.node_id,
                                version=self.node.version, node_key=self.node_key)
        res = await self._post("/nodes/register", body.to_json())
        _expect_ok(res, "registration")
        self.registered = True
        log.info("registered with metadata service %s", self.base)

    def _heartbeat(self) -> dict[str, object]:
        node = self.node
        return Heartbeat(disk_usage_percent=round(node.disk_usage_percent(), 2),
                         chunk_count=node.chunk_count(), free_bytes=node.free_bytes(),
                         version=node.version, node_key=self.node_key).to_json()

    async def _post(self, path: str, body: dict[str, object]) -> HttpResult:
        with deadline(CALL_TIMEOUT, f"POST {self.base}{path}"):
            return await self.http.request("POST", self.base + path, json_body=body, retry=True)


def load_node_key(data_dir: Path, given: str | None = None) -> str:
    """This node's key: ``given`` (``NODE_KEY``), else the one in ``data_dir/node.key``,
    made once (random, mode 0600, fsynced with its directory) on first start.

    The key stays with the data: a node that lost its data directory is a new
    node, and registers under its old id only if given the old key back.
    """
    if given:
        return given
    path = data_dir / NODE_KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(32)
    fsio.write_atomic(path, key.encode(), mode=0o600)
    return key


def _expect_ok(res: HttpResult, what: str) -> None:
    if res.status != 200:
        raise RemoteProtocolError(f"{what} answered {res.status}: {res.error_detail()}", 502)
