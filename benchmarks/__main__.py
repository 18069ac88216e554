"""The benchmark suite: ``python -m benchmarks [--quick | --smoke] [--only NAME ...]``.

Runs each benchmark in its own process (each starts the cluster it needs on
127.0.0.1 and measures its reference in the same run), bounded in time, then
writes ``report.json`` and ``report.md`` with a chart per figure into the
results directory (``--out``; default ``benchmarks/results``). Matplotlib
comes with the ``bench`` extra (``pip install -e .[bench]``).

=================  ==========================================================
``client``         the guide's list: startup latency, rebuffering, failover
                   time, hedging cost, smart client against ``--naive`` under
                   each emulator scenario
``storage``        GET/PUT throughput and latency against nginx and raw disk
``metadata``       consensus decisions against SQLite alone
``erasure``        encode/decode against zfec alone
``redundancy``     repair against a plain copy, storage overhead
``ingest``         upload to stored against FFmpeg and fsync alone
=================  ==========================================================

``--smoke`` runs only the erasure benchmark, for a fraction of a second per
figure, and renders the report: what CI runs so the suite cannot rot.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .harness import RESULTS, ROOT
from .report import write_report

SUITE = ["client", "storage", "metadata", "erasure", "redundancy", "ingest"]
#: The longest one benchmark may run, in seconds (full mode; --quick is well under).
LIMIT = 30 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="each benchmark's short mode")
    mode.add_argument("--smoke", action="store_true", help="a few seconds in all (CI)")
    parser.add_argument("--only", choices=SUITE, action="append", help="run these only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args()
    names = ["erasure"] if args.smoke else args.only or SUITE
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VSTACK_BENCH_RESULTS": str(args.out.resolve())}
    failures: dict[str, str] = {}
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}_bench"]
        if args.smoke:
            cmd += ["--quick", "--seconds", "0.2"]
        elif args.quick:
            cmd.append("--quick")
        (args.out / f"{name}.json").unlink(missing_ok=True)  # never report an old run
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, timeout=LIMIT, check=False)
        except subprocess.TimeoutExpired:
            failures[name] = f"stopped after {LIMIT} s"
            continue
        if done.returncode != 0:
            failures[name] = f"exited with status {done.returncode}"
        print(f"== {name}: {time.monotonic() - started:.0f} s", flush=True)
    report_json, report_md = write_report(args.out, names, failures)
    print(f"\nwrote {report_json} and {report_md}")
    if failures:
        sys.exit(f"failed: {failures}")


if __name__ == "__main__":
    main()
