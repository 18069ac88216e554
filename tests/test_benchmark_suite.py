"""``python -m benchmarks --smoke``: the suite runs, and its report has a chart per figure.

What CI runs so the suite cannot rot; the figures themselves are measured by
the benchmarks, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_the_suite_writes_a_report_with_a_chart_per_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    rows = report["benchmarks"]["erasure"]["rows"]
    assert rows
    assert all(row["reference"] > 0 and row["ratio"] > 0 for row in rows)
    page = (out / "report.md").read_text()
    charts = sorted((out / "charts").glob("erasure-*.png"))
    assert len(charts) == len(rows)
    for chart in charts:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(charts/{chart.name})" in page
    assert "| figure | value | reference (same run) | ratio | target |" in page
