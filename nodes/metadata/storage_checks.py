"""The metadata service's calls to storage nodes: verifying placements, deleting copies.

A chunk is committed only after a majority of the nodes its writer names
answer that they hold it with the right SHA-256 (for erasure-coded chunks,
enough fragments to rebuild it). Deleting a video removes every copy it
has on the nodes, best effort (a node that is down keeps garbage that the
redundancy manager collects later).
"""

from __future__ import annotations

import logging

import trio

from nodes.net.errors import deadline
from protocol.api import ChunkCommit, Fragment
from protocol.errors import VStackError

from .state import MetadataService

__all__ = ["Verified", "delete_copies", "verify_placement"]

log = logging.getLogger("vstack.metadata.checks")

ATTEMPTS = 3

Verified = tuple[list[str], list[Fragment]]


async def verify_placement(svc: MetadataService, chunk_id: str,
                           commit: ChunkCommit) -> Verified | None:
    """The listed nodes (request order) and fragments that hold the right bytes.

    A majority of ``node_urls`` must check out, or, for erasure-coded chunks,
    at least 3 fragments (all, if fewer were listed). Up to
    :data:`ATTEMPTS` tries, a short pause between them (a write may still be
    landing). ``None`` if they never do.
    """
    urls = list(dict.fromkeys(commit.node_urls))
    frags = list(commit.fragments or ())
    quorum = len(commit.node_urls) // 2 + 1
    for attempt in range(ATTEMPTS):
        held: dict[str, bool] = {}
        frag_ok: dict[str, bool] = {}

        async def check(url: str, stored_id: str, sha: str, into: dict[str, bool],
                        tag: str) -> None:
            into[tag] = await holds(svc, url, stored_id, sha)

        async with trio.open_nursery() as nursery:
            for url in urls:
                nursery.start_soon(check, url, chunk_id, commit.checksum, held, url)
            for f in frags:
                nursery.start_soon(check, f.node_url, f.fragment_id, f.checksum, frag_ok,
                                   f.fragment_id)
        nodes = [u for u in commit.node_urls if held.get(u)]
        good = [f for f in frags if frag_ok.get(f.fragment_id)]
        if frags:
            if len(good) >= min(3, len(frags)):
                return nodes, good
        elif len(nodes) >= quorum:
            return nodes, []
        if attempt < ATTEMPTS - 1:
            await trio.sleep(0.25 * (attempt + 1))
    return None


async def holds(svc: MetadataService, url: str, stored_id: str, sha256_hex: str) -> bool:
    try:
        with deadline(svc.settings.probe_timeout, f"check of {stored_id} on {url}"):
            return await svc.storage.holds(svc.aliases.resolve(url), stored_id, sha256_hex)
    except VStackError:
        return False


async def delete_copies(svc: MetadataService, targets: list[tuple[str, str]]) -> int:
    """Delete each ``(node URL, stored id)``; returns how many are gone (deleted or absent)."""
    deleted = 0

    async def one(url: str, stored_id: str) -> None:
        nonlocal deleted
        if await svc.storage.delete(svc.aliases.resolve(url), stored_id):
            deleted += 1

    async with trio.open_nursery() as nursery:
        for url, stored_id in targets:
            nursery.start_soon(one, url, stored_id)
    return deleted
