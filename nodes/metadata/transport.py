"""How metadata replicas reach each other: Paxos batches and peer reads over HTTP.

One pooled keep-alive client (:class:`~nodes.net.http_client.HttpClient`)
carries everything between replicas: ``POST /paxos`` batches (encoded and
decoded here with :mod:`protocol.consensus`), and the reads of catch-up,
view merging and the consensus view (``GET /paxos/...``).
"""

from __future__ import annotations

from typing import Any

from nodes.net.http_client import HttpClient
from protocol.api import decode_answer
from protocol.consensus import Batch, Commit, Message, Reply, decode_message, decode_reply
from protocol.errors import RemoteProtocolError

from .learner import Change

__all__ = ["HttpTransport"]


def _changes(data: Any) -> tuple[str, list[Change]]:
    out: list[Change] = []
    for e in data["entries"]:
        msg = decode_message({**e, "t": "commit"})
        seq = e["s"]
        if not isinstance(msg, Commit) or isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("an entry must be a commit with a change number")
        out.append((seq, msg))
    return str(data["epoch"]), out


class HttpTransport:
    """Paxos batches over HTTP (``POST /paxos``), pooled connections per peer."""

    def __init__(self, peers: tuple[str, ...], self_id: int) -> None:
        self.self_id = self_id
        self.http = HttpClient(max_idle_per_host=4)
        self.peers = {i: url.rstrip("/") for i, url in enumerate(peers) if i != self_id}

    async def call(self, peer: int, batch: list[Message]) -> list[Reply]:
        body = Batch(sender=self.self_id, messages=tuple(batch)).to_json()
        # Safe to repeat: acceptors answer a repeated message the same way.
        res = await self.http.request("POST", self.peers[peer] + "/paxos", json_body=body,
                                      retry=True)
        if res.status != 200:
            raise RemoteProtocolError(f"replica {peer} answered {res.status}", 502)
        raw = res.json().get("replies") if isinstance(res.json(), dict) else None
        if not isinstance(raw, list) or len(raw) != len(batch):
            raise RemoteProtocolError(f"replica {peer} sent a malformed batch answer", 502)
        try:
            return [decode_reply(r, m) for r, m in zip(raw, batch, strict=True)]
        except ValueError as exc:
            raise RemoteProtocolError(f"replica {peer}: {exc}", 502) from None

    async def changes(self, peer: int, since: int, limit: int) -> tuple[str, list[Change]]:
        """``GET /paxos/committed?since=N``: what ``peer`` learned after its change ``since``."""
        data = await self.get_json(peer, f"/paxos/committed?since={since}&limit={limit}")
        return decode_answer(_changes, data, "GET /paxos/committed")

    async def get_json(self, peer: int, path: str) -> Any:
        """``GET`` a replica-to-replica path on ``peer``; its JSON (200 only).

        Raises:
            TransportError, RemoteProtocolError.
        """
        res = await self.http.request("GET", self.peers[peer] + path)
        if res.status != 200:
            raise RemoteProtocolError(f"replica {peer} answered {res.status} to {path}", 502)
        return res.json()

    async def aclose(self) -> None:
        await self.http.aclose()
