"""Redundancy policy: which videos are replicated, which erasure-coded, and what each costs.

Popular videos (more than ``popularity_threshold`` views) keep
``REPLICAS`` full copies of every chunk: any copy serves a read, no
decoding. The long tail is Reed-Solomon coded into ``DATA_SHARDS`` data and
``PARITY_SHARDS`` parity shards: any ``DATA_SHARDS`` of them rebuild the
chunk, at ``TOTAL/DATA`` times its size instead of ``REPLICAS`` times. Both
survive the loss of any two nodes. An operator's override wins over the
view count.

Every figure below is computed from these constants and the chunk size, so
changing the scheme changes what the API reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DATA_SHARDS",
    "PARITY_SHARDS",
    "REPLICAS",
    "TOTAL_SHARDS",
    "RedundancyPolicy",
    "mode_config",
]

REPLICAS: Final = 3
DATA_SHARDS: Final = 3
PARITY_SHARDS: Final = 2
TOTAL_SHARDS: Final = DATA_SHARDS + PARITY_SHARDS
REPLICATION: Final = "replication"
ERASURE_CODING: Final = "erasure_coding"


def mode_config(mode: str) -> dict[str, Any]:
    """The contract's ``config`` object of a recommendation."""
    if mode == REPLICATION:
        return {"mode": REPLICATION, "copies": REPLICAS,
                "description": f"Store {REPLICAS} full copies"}
    return {"mode": ERASURE_CODING, "data_shards": DATA_SHARDS, "parity_shards": PARITY_SHARDS,
            "total_shards": TOTAL_SHARDS, "min_shards_for_recovery": DATA_SHARDS,
            "description": f"Store {TOTAL_SHARDS} fragments, any {DATA_SHARDS} can recover"}


@dataclass(frozen=True, kw_only=True)
class RedundancyPolicy:
    popularity_threshold: int = 1000
    chunk_size_bytes: int = 2 * 1024 * 1024

    def recommend(self, views: int, override: str | None) -> str:
        """The mode a video should be stored in."""
        if override:
            return override
        return REPLICATION if views > self.popularity_threshold else ERASURE_CODING

    def config(self) -> dict[str, Any]:
        """``GET /redundancy/config``."""
        return {"popularity_threshold": self.popularity_threshold,
                "replication_factor": REPLICAS, "erasure_data_shards": DATA_SHARDS,
                "erasure_parity_shards": PARITY_SHARDS, "erasure_total_shards": TOTAL_SHARDS}

    def efficiency(self) -> dict[str, Any]:
        """``GET /redundancy/efficiency``: the two modes compared for one chunk."""
        ec_factor = TOTAL_SHARDS / DATA_SHARDS
        savings = (1 - ec_factor / REPLICAS) * 100
        chunk_mb = self.chunk_size_bytes / (1024 * 1024)
        repl_mb, ec_mb = chunk_mb * REPLICAS, chunk_mb * ec_factor
        tolerated = min(REPLICAS - 1, PARITY_SHARDS)
        return {
            "efficiency": {
                "replication_overhead_factor": REPLICAS,
                "erasure_coding_overhead_factor": ec_factor,
                "storage_savings_percent": savings,
                "description": f"Erasure coding saves {savings:.1f}% storage vs replication"},
            "mode_comparison": {
                "replication": {"mode": REPLICATION, "storage_per_chunk_mb": repl_mb,
                                "nodes_required": REPLICAS, "failures_tolerated": REPLICAS - 1,
                                "read_performance": "fast",
                                "use_case": "Popular videos with many concurrent viewers"},
                "erasure_coding": {"mode": ERASURE_CODING, "storage_per_chunk_mb": ec_mb,
                                   "nodes_required": TOTAL_SHARDS,
                                   "failures_tolerated": tolerated,
                                   "read_performance": "moderate (requires reconstruction)",
                                   "use_case": "Long-tail videos watched rarely"},
                "savings": {"storage_saved_mb": repl_mb - ec_mb, "savings_percent": savings}}}
