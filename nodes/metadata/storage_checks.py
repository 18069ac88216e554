"""The metadata service's calls to storage nodes: verifying placements, deleting copies.

A chunk is committed only after a majority of the nodes its writer names
answer that they hold it with the right SHA-256 (for erasure-coded chunks,
enough fragments to rebuild it: :func:`check_shards` first refuses a list of
shards that could never be decoded, then at least 3 distinct indices must
check out). A writer may name only known nodes: a
registered node (by its id or the URL it registered), a node of
``STORAGE_NODES``, or an operator's alias. The check goes to the address
the cluster knows for it, never to one the writer made up; any other name
is never contacted and counts as a node that failed (:func:`known_nodes`).

Deleting a video removes every copy it has on the nodes, best effort (a node
that is down keeps garbage that the redundancy manager collects later).
"""

from __future__ import annotations

import logging
from collections import Counter

import trio

from nodes.net.errors import deadline
from protocol.api import ChunkCommit, Fragment
from protocol.errors import ProtocolError, VStackError
from vstack.node_urls import normalize_url
from vstack.redundancy import DATA_SHARDS, PARITY_SHARDS, TOTAL_SHARDS

from .state import MetadataService

__all__ = ["KnownNodes", "Verified", "check_shards", "delete_copies", "known_nodes",
           "verify_placement"]

log = logging.getLogger("vstack.metadata.checks")

ATTEMPTS = 3

Verified = tuple[list[str], list[Fragment]]


class KnownNodes:
    """The storage nodes this replica may contact, and the address of each."""

    def __init__(self, svc: MetadataService) -> None:
        self._aliases = svc.aliases
        self._by_id: dict[str, str] = {}
        self._urls: set[str] = {normalize_url(u) for u in svc.settings.storage_nodes}
        self._urls |= set(svc.aliases.as_dict().values())
        self._ids: dict[str, str] = {}  # registered URL, and its address -> node id
        for row in svc.reader.node_rows():
            url = normalize_url(str(row["node_url"]))
            self._by_id[str(row["node_id"])] = url
            self._urls.add(url)
            self._ids[url] = self._ids[svc.aliases.resolve(url)] = str(row["node_id"])

    def address(self, name: str) -> str | None:
        """Where to check the node ``name`` names, or ``None`` if it is no known node."""
        if name in self._by_id:
            return self._aliases.resolve(self._by_id[name])
        url = normalize_url(name)
        resolved = self._aliases.resolve(url)
        if url in self._urls or resolved != url:
            return resolved
        return None


    def identity(self, name: str) -> str:
        """One name for the node ``name`` names, whichever name it is (an id, the URL
        it registered, an alias of either): its node id if it is registered, else
        the address it resolves to."""
        if name in self._by_id:
            return name
        url = normalize_url(name)
        resolved = self._aliases.resolve(url)
        return self._ids.get(url) or self._ids.get(resolved) or resolved


def known_nodes(svc: MetadataService) -> KnownNodes:
    return KnownNodes(svc)


def check_shards(commit: ChunkCommit, known: KnownNodes) -> None:
    """Refuse (422) an erasure-coded placement that could never be decoded, or that
    losing one node would leave undecodable: every index in ``[0, 5)`` and listed
    once, at least 3 of them, at most 2 on any one node (whatever name it is
    given by: a node's id, URL and aliases are one node).

    Raises:
        ProtocolError: 422, saying which rule the fragments break.
    """
    frags = commit.fragments or ()
    if not frags:
        return
    indices = [f.fragment_index for f in frags]
    why = None
    if any(not 0 <= i < TOTAL_SHARDS for i in indices):
        why = f"fragment_index must be in [0, {TOTAL_SHARDS})"
    elif len(set(indices)) != len(indices):
        why = "each fragment_index may be listed once"
    elif len(indices) < DATA_SHARDS:
        why = f"at least {DATA_SHARDS} fragments are needed to decode the chunk"
    else:
        per_node = Counter(known.address(f.node_url) or normalize_url(f.node_url)
                           for f in frags)
        if max(per_node.values()) > PARITY_SHARDS:
            why = (f"at most {PARITY_SHARDS} fragments of a chunk may share a node (losing it "
                   f"must leave {DATA_SHARDS})")
    if why is not None:
        raise ProtocolError(f"erasure-coded placement refused: {why}", 422)


async def verify_placement(svc: MetadataService, chunk_id: str,
                           commit: ChunkCommit) -> Verified | None:
    """The listed nodes (request order) and fragments that hold the right bytes.

    A majority of ``node_urls`` must check out, or, for erasure-coded chunks,
    fragments of at least 3 distinct indices (:func:`check_shards` has
    refused lists that break the shard rules). Up to
    :data:`ATTEMPTS` tries, a short pause between them (a write may still be
    landing). ``None`` if they never do.
    """
    known = known_nodes(svc)
    urls = list(dict.fromkeys(commit.node_urls))
    frags = list(commit.fragments or ())
    quorum = len(commit.node_urls) // 2 + 1
    for attempt in range(ATTEMPTS):
        held: dict[str, bool] = {}
        frag_ok: dict[str, bool] = {}

        async def check(name: str, stored_id: str, sha: str, into: dict[str, bool],
                        tag: str) -> None:
            address = known.address(name)
            into[tag] = address is not None and await holds(svc, address, stored_id, sha)

        async with trio.open_nursery() as nursery:
            for url in urls:
                nursery.start_soon(check, url, chunk_id, commit.checksum, held, url)
            for f in frags:
                nursery.start_soon(check, f.node_url, f.fragment_id, f.checksum, frag_ok,
                                   f.fragment_id)
        nodes = [u for u in commit.node_urls if held.get(u)]
        good = [f for f in frags if frag_ok.get(f.fragment_id)]
        if frags:
            if len({f.fragment_index for f in good}) >= DATA_SHARDS:
                return nodes, good
        elif len(nodes) >= quorum:
            return nodes, []
        if attempt < ATTEMPTS - 1:
            await trio.sleep(0.25 * (attempt + 1))
    return None


async def holds(svc: MetadataService, address: str, stored_id: str, sha256_hex: str) -> bool:
    try:
        with deadline(svc.settings.probe_timeout, f"check of {stored_id} on {address}"):
            return await svc.storage.holds(address, stored_id, sha256_hex)
    except VStackError:
        return False


async def delete_copies(svc: MetadataService, targets: list[tuple[str, str]]) -> int:
    """Delete each ``(node URL, stored id)``; returns how many are gone (deleted or absent)."""
    deleted = 0
    known = known_nodes(svc)

    async def one(url: str, stored_id: str) -> None:
        nonlocal deleted
        address = known.address(url)
        if address is None:
            log.warning("not deleting %s from %s: no longer a known node", stored_id, url)
        elif await svc.storage.delete(address, stored_id):
            deleted += 1

    async with trio.open_nursery() as nursery:
        for url, stored_id in targets:
            nursery.start_soon(one, url, stored_id)
    return deleted
