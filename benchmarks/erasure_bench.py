"""Erasure coding benchmark: encode and decode of a 2 MiB chunk, beside bare zfec.

Run: ``.venv/bin/python -m benchmarks.erasure_bench`` (``--quick`` for a short run).

One core, no I/O. Each figure is MB/s of chunk bytes through
:mod:`vstack.erasure`, beside bare ``zfec`` (k=3, m=5) on the same buffers in
the same run. The two are called in turn, call by call, and the median call
of each is reported, so CPU frequency, caches and busy neighbours weigh on
both alike:

* encode: our ``encode(chunk)`` (cut, pad, trailer, code, a SHA-256 per
  shard) beside ``zfec.Encoder.encode`` on the three data blocks already cut
  and padded, plus ``hashlib.sha256`` of the five blocks (like for like);
  and beside zfec alone, to show what the five checksums cost.
* decode from a worst-case subset: data shard 0 and both parity shards, so
  zfec rebuilds two data blocks (shard 2, with the trailer, among them).
  Without checksums beside ``zfec.Decoder.decode`` on the same three
  buffers; with checksums beside the same plus ``hashlib.sha256`` of the
  three. Ours also joins the chunk into one ``bytes`` of its exact length,
  which the bare call does not.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import zfec

from vstack import erasure

from .harness import Report, Row

CHUNK = 2 * 1024 * 1024
WORST = (0, 3, 4)  # both parity shards: two data blocks rebuilt


def paired(ours: Callable[[], object], ref: Callable[[], object],
           seconds: float) -> tuple[list[float], list[float]]:
    """Seconds per call of each, called in turn (ours, ref, ours, ...) for ``seconds``.

    Taking turns call by call puts both under the same CPU frequency, caches
    and neighbours; the median call then ignores the ones a neighbour stole.
    """
    ours(), ref()  # warm up
    times: tuple[list[float], list[float]] = ([], [])
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        for fn, out in ((ours, times[0]), (ref, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return times


def mbps(call_seconds: list[float]) -> float:
    return CHUNK / statistics.median(call_seconds) / 1e6


def cases(data: bytes) -> dict[str, Callable[[], object]]:
    shards = erasure.encode(data)
    # The same buffers for both: the data blocks as our module cuts them, and the shards.
    blocks = tuple(bytes(s.data) for s in shards[:3])
    given = {i: bytes(shards[i].data) for i in WORST}
    sums = {i: shards[i].sha256 for i in WORST}
    subset = tuple(given[i] for i in WORST)
    enc, dec = zfec.Encoder(3, 5), zfec.Decoder(3, 5)
    assert b"".join(enc.encode(blocks)[3:]) == b"".join(bytes(s.data) for s in shards[3:])
    assert erasure.decode(given, checksums=sums) == data

    def zfec_encode_sha256() -> list[str]:
        return [hashlib.sha256(b).hexdigest() for b in enc.encode(blocks)]

    def zfec_decode_sha256() -> object:
        for b in subset:
            hashlib.sha256(b).hexdigest()
        return dec.decode(subset, WORST)

    return {
        "zfec encode": lambda: enc.encode(blocks),
        "zfec encode + sha256": zfec_encode_sha256,
        "ours encode": lambda: erasure.encode(data),
        "zfec decode": lambda: dec.decode(subset, WORST),
        "ours decode": lambda: erasure.decode(given),
        "zfec decode + sha256": zfec_decode_sha256,
        "ours decode + checksums": lambda: erasure.decode(given, checksums=sums),
    }


def spread(call_seconds: list[float]) -> list[float]:
    """MB/s of the slowest and the fastest tenth of the calls (p10, p90)."""
    deciles = statistics.quantiles(call_seconds, n=10)
    return [CHUNK / deciles[8] / 1e6, CHUNK / deciles[0] / 1e6]


def compare(report: Report, fns: dict[str, Callable[[], object]], seconds: float, name: str,
            ours: str, ref: str, ref_name: str, target: float | None, **extra: Any) -> None:
    mine, theirs = paired(fns[ours], fns[ref], seconds)
    report.add(Row(name, mbps(mine), "MB/s", ref_name, mbps(theirs), target=target,
                   extra={"calls": len(mine), "p10_p90_mbps": spread(mine),
                          "reference_p10_p90_mbps": spread(theirs), **extra}))


def bench(report: Report, seconds: float) -> None:
    print(f"\n2 MiB chunk, k=3 m=5, ours and the reference called in turn for {seconds:.0f} s "
          f"per figure, median call", flush=True)
    fns = cases(os.urandom(CHUNK))
    compare(report, fns, seconds, "encode (5 shards + SHA-256 each)", "ours encode",
            "zfec encode + sha256", "bare zfec + hashlib, same buffers", 0.9)
    compare(report, fns, seconds, "encode, beside zfec without checksums", "ours encode",
            "zfec encode", "bare zfec encode, same buffers", None,
            note="ours also computes 5 SHA-256 (5/3 of the chunk), which bare zfec does not")
    compare(report, fns, seconds, f"decode {WORST}, no checksums", "ours decode", "zfec decode",
            "bare zfec decode, same buffers", 0.9, subset=list(WORST))
    compare(report, fns, seconds, f"decode {WORST}, checksums checked",
            "ours decode + checksums", "zfec decode + sha256",
            "bare zfec + hashlib, same buffers", 0.9, subset=list(WORST))
    compare(report, fns, seconds, f"decode {WORST} + checksums, beside zfec",
            "ours decode + checksums", "zfec decode", "bare zfec decode, same buffers", None,
            subset=list(WORST),
            note="ours also checks 3 SHA-256 (the chunk's size), which bare zfec does not")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few seconds)")
    parser.add_argument("--seconds", type=float, default=None, help="per figure")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 8.0)
    report = Report("erasure")
    print(f"{'figure':<46} {'value':>10} {'unit':<8} | {'reference (same run)':<34} {'value':>10} "
          f"| ratio")
    bench(report, seconds)
    report.write()


if __name__ == "__main__":
    main()
