"""A short seeded chaos round (tools/chaos.py): SIGKILLed nodes and metadata replicas,
emulator faults and flipped bytes while uploads and playbacks run; then every
acknowledged upload reads back as exactly the chunks a fault-free upload of the same
clip gave, every playback finished, replicas agree by themselves. Rebuffering under
faults at 4x is counted and reported, not required to be zero here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.chaos import run_round


@pytest.mark.slow
async def test_a_seeded_chaos_round_keeps_every_invariant(tmp_path: Path) -> None:
    report = await run_round(seed=7, seconds=12, work=tmp_path, converge=120)
    summary = report.to_json()
    assert report.invariants_hold, summary
    assert len(report.uploads_acknowledged) >= 5, summary
    assert report.playbacks >= 5, summary
    assert sum(report.faults.values()) >= 5, summary
    assert report.reference  # the clip was cut into chunks to compare against
