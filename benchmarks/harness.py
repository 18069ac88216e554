"""Shared benchmark plumbing: results table, JSON output, child processes.

Every benchmark reports a figure *and* a reference measured in the same run
on the same machine, and their ratio; :class:`Report` prints them as a table
and writes them as JSON (``benchmarks/results/<name>.json``), so runs can be
compared over time.

Child processes are started with :mod:`tools.launch`, which the tests use
too; ``free_port``, ``wait_port`` and ``ROOT`` are re-exported from there.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.launch import ROOT, ServiceProcess, free_port, wait_port

__all__ = ["RESULTS", "ROOT", "Report", "Row", "free_port", "percentile", "start_node", "wait_port"]

#: Where results go (``VSTACK_BENCH_RESULTS`` moves them, e.g. for ``python -m benchmarks --out``).
RESULTS = Path(os.environ.get("VSTACK_BENCH_RESULTS") or ROOT / "benchmarks" / "results")


@dataclass
class Row:
    name: str
    value: float
    unit: str
    reference_name: str
    reference: float
    higher_is_better: bool = True
    target: float | None = None  # on the ratio
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if not self.reference:
            return float("nan")
        return self.value / self.reference if self.higher_is_better else self.reference / self.value

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


class Report:
    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[Row] = []
        self.started = time.time()

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        mark = {True: "ok", False: "MISS", None: ""}[row.meets_target]
        target = f">= {row.target:.2f}x" if row.target is not None else ""
        print(f"  {row.name:<44} {row.value:>10.3f} {row.unit:<8} | {row.reference_name:<34} "
              f"{row.reference:>10.3f} | {row.ratio:6.2f}x {target:>8} {mark}", flush=True)
        return row

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        doc = {
            "benchmark": self.name,
            "started": self.started,
            "duration_sec": time.time() - self.started,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": sys.version.split()[0]},
            "rows": [{**asdict(r), "ratio": r.ratio, "meets_target": r.meets_target}
                     for r in self.rows],
        }
        path.write_text(json.dumps(doc, indent=2))
        print(f"\nwrote {path}")
        return path


def start_node(data_dir: Path, **env: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """A ``vstack-node storage`` child process; returns (process, http port, binary port)."""
    http, binary = free_port(), free_port()
    node = ServiceProcess(
        "storage",
        {"PORT": str(http), "BINARY_PORT": str(binary), "HOST": "127.0.0.1",
         "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", "SCRUB_RATE": "0", **env},
        ports=(http, binary),
    )
    node.start(timeout=30)
    assert node.proc is not None
    return node.proc, http, binary


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]
