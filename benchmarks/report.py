"""The suite's report: every benchmark's JSON rows as one JSON file and one Markdown page,
with a chart per figure (matplotlib) of the figure beside its same-run reference."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

__all__ = ["write_report"]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _chart(row: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    names = [row["name"], row["reference_name"]]
    values = [row["value"], row["reference"]]
    fig, ax = plt.subplots(figsize=(6.4, 2.2), dpi=100)
    colors = ["#3b82f6", "#9ca3af"]
    bars = ax.barh([_wrap(n) for n in names], values, color=colors)
    ax.invert_yaxis()
    ax.set_xlabel(row["unit"])
    for bar, value in zip(bars, values, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.3g}",
                va="center", fontsize=8)
    ratio = row.get("ratio")
    target = row.get("target")
    title = f"ratio {ratio:.2f}x" if isinstance(ratio, float) and math.isfinite(ratio) else ""
    if target is not None:
        title += f" (target >= {target:.2f}x: {'met' if row.get('meets_target') else 'MISSED'})"
    ax.set_title(title, fontsize=9, loc="left")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _wrap(text: str, width: int = 38) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:3])


def write_report(results: Path, names: list[str], failures: dict[str, str]) -> tuple[Path, Path]:
    """``results/report.json`` and ``results/report.md`` (charts in ``results/charts/``) from
    ``results/<name>.json`` of each benchmark run; returns both paths."""
    charts = results / "charts"
    charts.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {"benchmarks": {}, "failures": failures}
    md = ["# V-Stack benchmark report", "",
          "Every figure beside a reference measured in the same run on the same machine, "
          "as a ratio (higher is better, whichever way the figure goes).", ""]
    for name in names:
        path = results / f"{name}.json"
        if not path.exists():
            md += [f"## {name}", "", f"Not run: {failures.get(name, 'no result')}", ""]
            continue
        doc = json.loads(path.read_text())
        merged["benchmarks"][name] = doc
        md += [f"## {name}", "", f"{doc['duration_sec']:.0f} s on {doc['machine']['cpus']} CPUs "
               f"({doc['machine']['platform']}).", "",
               "| figure | value | reference (same run) | ratio | target |",
               "|---|---|---|---|---|"]
        images = []
        for i, row in enumerate(doc["rows"]):
            ratio = row.get("ratio")
            shown = f"{ratio:.2f}x" if isinstance(ratio, float) and math.isfinite(ratio) else "-"
            target = "" if row.get("target") is None else \
                f">= {row['target']:.2f}x {'met' if row.get('meets_target') else 'MISSED'}"
            md.append(f"| {row['name']} | {row['value']:.4g} {row['unit']} | "
                      f"{row['reference_name']}: {row['reference']:.4g} | {shown} | {target} |")
            image = charts / f"{name}-{i:02d}-{_slug(row['name'])}.png"
            _chart(row, image)
            images.append(f"![{row['name']}](charts/{image.name})")
        md += ["", *images, ""]
    report_json = results / "report.json"
    report_json.write_text(json.dumps(merged, indent=2))
    report_md = results / "report.md"
    report_md.write_text("\n".join(md) + "\n")
    return report_json, report_md
