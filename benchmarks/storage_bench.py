"""Storage node benchmark: GET and PUT of 2 MiB chunks, index memory and restart.

Run: ``.venv/bin/python -m benchmarks.storage_bench`` (``--quick`` for a short run).

* GET, binary protocol and HTTP, 1 and 8 connections, against nginx serving
  the same bytes from plain files (nginx is installed with apt if missing;
  one worker, ``sendfile on``, like our single-process node). The load
  generator is the same lean client for both (blocking sockets, one thread
  per connection, ``recv_into`` a reused buffer, no checksum work). Beside
  each: the server's CPU time per response, node against nginx, read from
  ``/proc`` (the client shares the cores, so it is where the time goes).
* PUT over the binary protocol, 1 and 8 connections, against a loop of raw
  append + fsync of the same bytes to a plain file.
* Index memory per chunk and restart time at 100k and 1M chunks, against a
  plain dict holding the same keys and locations (memory) and a raw read of
  the checkpoint file (restart).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from protocol.frames import HEADER, MAGIC, VERSION, Opcode, crc32c

from .harness import Report, Row, free_port, percentile, start_node, wait_port

CHUNK = 2 * 1024 * 1024


# -- load generators (blocking sockets, one thread per connection) ----------------


class Result:
    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.errors = 0

    def add(self, nbytes: int, requests: int, latencies: list[float]) -> None:
        """One worker's totals (workers are threads)."""
        with self.lock:
            self.bytes += nbytes
            self.requests += requests
            self.latencies += latencies


def _recv_exact_into(sock: socket.socket, view: memoryview, n: int) -> None:
    got = 0
    while got < n:
        k = sock.recv_into(view[got:n], n - got)
        if not k:
            raise ConnectionError("closed")
        got += k


def http_get_worker(port: int, paths: list[bytes], stop: float, res: Result, offset: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(8 * 1024 * 1024)
    view = memoryview(buf)
    i, lat, total, count = offset, [], 0, 0
    while time.perf_counter() < stop:
        path = paths[i % len(paths)]
        i += 1
        t0 = time.perf_counter()
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            head += data
        header, rest = head.split(b"\r\n\r\n", 1)
        if not header.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(header[:200])
        length = 0
        for line in header.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        remaining = length - len(rest)
        while remaining:
            k = sock.recv_into(view, min(remaining, len(buf)))
            if not k:
                raise ConnectionError("closed")
            remaining -= k
        lat.append(time.perf_counter() - t0)
        total += length
        count += 1
    sock.close()
    res.add(total, count, lat)


def binary_get_worker(port: int, keys: list[bytes], stop: float, res: Result, offset: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(8 * 1024 * 1024)
    view = memoryview(buf)
    hdr = bytearray(HEADER.size)
    hview = memoryview(hdr)
    i, lat, total, count, rid = offset, [], 0, 0, 0
    while time.perf_counter() < stop:
        key = keys[i % len(keys)]
        i += 1
        rid += 1
        t0 = time.perf_counter()
        sock.sendall(HEADER.pack(MAGIC, VERSION, Opcode.GET, 0, 0, rid, len(key), 0, 0) + key)
        _recv_exact_into(sock, hview, HEADER.size)
        _m, _v, _op, _fl, status, _rid, klen, plen, _crc = HEADER.unpack(hdr)
        if status != 200:
            raise RuntimeError(f"status {status}")
        _recv_exact_into(sock, view, klen + plen)
        lat.append(time.perf_counter() - t0)
        total += plen
        count += 1
    sock.close()
    res.add(total, count, lat)


def run_load(worker: Callable[..., None], port: int, targets: list[bytes], conns: int,
             seconds: float) -> Result:
    res = Result()
    stop = time.perf_counter() + seconds
    threads = [threading.Thread(target=worker, args=(port, targets, stop, res, i * 7))
               for i in range(conns)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
    return res


def _children(pid: int) -> list[int]:
    """The running children of ``pid``, whichever of its threads started them."""
    kids: list[int] = []
    tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if tasks:
        for children in tasks:
            with contextlib.suppress(OSError):
                kids += [int(p) for p in children.read_text().split()]
        return kids
    for stat in Path("/proc").glob("[0-9]*/stat"):  # no children files: ask each process
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of process ``pid`` and of its
    children, running (nginx's workers) or exited (FFmpeg), from ``/proc``."""
    pids = [pid, *_children(pid)]
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, and those of its children that exited and were waited for
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def run_load_cpu(worker: Callable[..., None], port: int, targets: list[bytes], conns: int,
                 seconds: float, server: int) -> tuple[Result, float]:
    """:func:`run_load`, and the server's CPU time per request (microseconds)."""
    before = cpu_seconds(server)
    res = run_load(worker, port, targets, conns, seconds)
    return res, (cpu_seconds(server) - before) / max(1, res.requests) * 1e6


def gbps(res: Result) -> float:
    elapsed: float = res.elapsed  # type: ignore[attr-defined]
    return res.bytes / elapsed / 1e9


# -- nginx ------------------------------------------------------------------------


def ensure_nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path:
        return path
    print("nginx not found: installing it with apt-get (reference server)", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
                   check=True)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(root: Path, work: Path, workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    conf = work / "nginx.conf"
    conf.write_text(f"""
{user}
worker_processes {workers};
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
    proc = subprocess.Popen([ensure_nginx(), "-c", str(conf), "-p", str(work)])
    wait_port(port)
    return proc, port


# -- benchmarks -------------------------------------------------------------------


def bench_get(report: Report, work: Path, seconds: float, chunks: int) -> None:
    print(f"\nGET of {chunks} x 2 MiB chunks, {seconds:.0f} s per run", flush=True)
    files = work / "nginx-root" / "chunks"
    files.mkdir(parents=True)
    proc, http, binary = start_node(work / "node-get")
    ngx, ngx_port = start_nginx(work / "nginx-root", _mk(work / "nginx-work"))
    try:
        keys = []
        for i in range(chunks):
            key = f"bench-chunk-{i:03d}".encode()
            data = os.urandom(CHUNK)
            (files / key.decode()).write_bytes(data)
            _binary_put(binary, key, data)
            keys.append(key)
        node_paths = [b"/chunk/" + k for k in keys]
        ngx_paths = [b"/chunks/" + k for k in keys]
        # Warm up: page cache for both; the node checks each chunk once, then serves zero-copy.
        run_load(http_get_worker, http, node_paths, 1, 0.5 + chunks * 0.01)
        run_load(http_get_worker, ngx_port, ngx_paths, 1, 0.5)
        for conns in (1, 8):
            ref, ref_cpu = run_load_cpu(http_get_worker, ngx_port, ngx_paths, conns, seconds,
                                        ngx.pid)
            bin_, bin_cpu = run_load_cpu(binary_get_worker, binary, keys, conns, seconds, proc.pid)
            htt, htt_cpu = run_load_cpu(http_get_worker, http, node_paths, conns, seconds,
                                        proc.pid)
            # Where the time goes: the server's CPU per response (the load
            # generator shares the machine's cores, so it is taken from the client).
            report.add(Row(f"GET server CPU per response, binary, {conns} conn (us)", bin_cpu,
                           "us", "nginx (1 worker), same client", ref_cpu,
                           higher_is_better=False, extra={"http_us": htt_cpu}))
            lat = {"p50_ms": percentile(bin_.latencies, 50) * 1e3,
                   "p99_ms": percentile(bin_.latencies, 99) * 1e3}
            report.add(Row(f"GET binary, {conns} conn (GB/s)", gbps(bin_), "GB/s",
                           "nginx (1 worker) sendfile, same files", gbps(ref),
                           target=1.3 if conns == 8 else None, extra=lat))
            report.add(Row(f"GET HTTP, {conns} conn (GB/s)", gbps(htt), "GB/s",
                           "nginx (1 worker) sendfile, same files", gbps(ref),
                           target=0.95 if conns == 8 else None,
                           extra={"p50_ms": percentile(htt.latencies, 50) * 1e3,
                                  "p99_ms": percentile(htt.latencies, 99) * 1e3}))
            report.add(Row(f"GET binary against HTTP, {conns} conn (GB/s)", gbps(bin_), "GB/s",
                           "our HTTP GET, same run", gbps(htt), target=1.0))
            if conns == 1:
                report.add(Row("GET binary, 1 conn p99 latency (ms)",
                               percentile(bin_.latencies, 99) * 1e3, "ms",
                               "nginx p99, same client", percentile(ref.latencies, 99) * 1e3,
                               higher_is_better=False, target=1.0))
                report.add(Row("GET HTTP, 1 conn p99 latency (ms)",
                               percentile(htt.latencies, 99) * 1e3, "ms",
                               "nginx p99, same client", percentile(ref.latencies, 99) * 1e3,
                               higher_is_better=False))
            else:
                best = _nginx_best(work, ngx_paths, seconds, gbps(ref))
                report.add(Row("GET binary, 8 conn, against nginx's best worker count (GB/s)",
                               gbps(bin_), "GB/s", f"nginx, {best[0]} workers", best[1],
                               target=1.0))
    finally:
        for p in (proc, ngx):
            p.terminate()
            p.wait(10)


def _nginx_best(work: Path, paths: list[bytes], seconds: float, one: float) -> tuple[int, float]:
    """nginx's best GET throughput at 8 connections over its worker counts (1 measured)."""
    best = (1, one)
    for workers in range(2, (os.cpu_count() or 1) + 1):
        ngx, port = start_nginx(work / "nginx-root", _mk(work / f"nginx-work-{workers}"), workers)
        try:
            run_load(http_get_worker, port, paths, 1, 0.3)
            res = gbps(run_load(http_get_worker, port, paths, 8, seconds))
        finally:
            ngx.terminate()
            ngx.wait(10)
        if res > best[1]:
            best = (workers, res)
    return best


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _binary_put(port: int, key: bytes, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(HEADER.pack(MAGIC, VERSION, Opcode.PUT, 0, 0, 1, len(key), len(data),
                                 crc32c(data)) + key + data)
        hdr = bytearray(HEADER.size)
        _recv_exact_into(sock, memoryview(hdr), HEADER.size)
        status = HEADER.unpack(hdr)[4]
        if status not in (200, 201):
            raise RuntimeError(f"PUT failed: {status}")


def binary_put_worker(port: int, blobs: list[bytes], stop: float, res: Result, offset: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hdr = bytearray(HEADER.size)
    crcs = [crc32c(b) for b in blobs]
    run = os.urandom(4).hex()
    i, n, lat = 0, 0, []
    while time.perf_counter() < stop:
        data = blobs[i % len(blobs)]
        key = f"put-{run}-{offset}-{i}".encode()
        t0 = time.perf_counter()
        sock.sendall(HEADER.pack(MAGIC, VERSION, Opcode.PUT, 0, 0, i + 1, len(key), len(data),
                                 crcs[i % len(blobs)]) + key)
        sock.sendall(data)
        _recv_exact_into(sock, memoryview(hdr), HEADER.size)
        status, klen, plen = HEADER.unpack(hdr)[4], HEADER.unpack(hdr)[6], HEADER.unpack(hdr)[7]
        rest = bytearray(klen + plen)
        _recv_exact_into(sock, memoryview(rest), klen + plen)
        if status != 201:
            raise RuntimeError(f"PUT status {status}")
        lat.append(time.perf_counter() - t0)
        i += 1
        n += len(data)
    sock.close()
    res.add(n, i, lat)


def raw_append_fsync(path: Path, blobs: list[bytes], seconds: float) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n, i = 0, 0
    t0 = time.perf_counter()
    stop = t0 + seconds
    try:
        while time.perf_counter() < stop:
            data = blobs[i % len(blobs)]
            os.write(fd, data)
            os.fdatasync(fd)
            n += len(data)
            i += 1
    finally:
        os.close(fd)
    return n / (time.perf_counter() - t0) / 1e9


def bench_put(report: Report, work: Path, seconds: float, rounds: int) -> None:
    """PUT against raw append+fdatasync, interleaved in rounds, medians reported.

    On thin-provisioned virtual disks, writing never-used blocks can be several
    times slower than rewriting freed ones, so the reference and the node take
    turns, each writing fresh files that are kept until the end.
    """
    print(f"\nPUT of 2 MiB chunks (acknowledged after fsync), {rounds} rounds of "
          f"{seconds:.0f} s", flush=True)
    blobs = [os.urandom(CHUNK) for _ in range(8)]
    proc, _http, binary = start_node(work / "node-put")
    runs: dict[str, list[float]] = {"raw": [], "1": [], "8": []}
    lat: dict[str, list[float]] = {"1": [], "8": []}
    try:
        for r in range(rounds):
            runs["raw"].append(raw_append_fsync(work / f"raw-append-{r}.dat", blobs, seconds))
            for conns in (1, 8):
                res = run_load(binary_put_worker, binary, blobs, conns, seconds)
                runs[str(conns)].append(gbps(res))
                lat[str(conns)] += res.latencies
    finally:
        proc.terminate()
        proc.wait(10)
    ref = statistics.median(runs["raw"])
    for label in ("1", "8"):
        report.add(Row(f"PUT binary, {label} conn (GB/s)", statistics.median(runs[label]), "GB/s",
                       "raw append+fdatasync loop", ref, target=0.8,
                       extra={"rounds": runs[label], "reference_rounds": runs["raw"],
                              "p50_ms": percentile(lat[label], 50) * 1e3,
                              "p99_ms": percentile(lat[label], 99) * 1e3}))


def bench_index(report: Report, work: Path, sizes: list[int]) -> None:
    from vstack.store import SuperblockStore

    for n in sizes:
        print(f"\nindex with {n:,} chunks", flush=True)
        root = work / f"index-{n}"
        store = SuperblockStore.open(root)
        batch = []
        t0 = time.perf_counter()
        for i in range(n):
            pw = store.reserve_put(f"{i:08x}-0000-4000-8000-000000000000-chunk-{i % 1000:03d}"
                                   .encode(), b"x")
            store.write(pw)
            store.mark_written(pw)
            batch.append(pw)
            if len(batch) == 10_000 or i == n - 1:
                b = store.sync_batch()
                assert b is not None
                store.fsync_batch(b)
                store.publish(b)
                batch.clear()
        fill = time.perf_counter() - t0
        per_chunk = store.index.nbytes / n
        store.checkpoint()
        store.close()
        # Reference: the same keys and locations in a plain dict of tuples.
        ref_n = min(n, 100_000)
        tracemalloc.start()
        d = {f"{i:08x}-0000-4000-8000-000000000000-chunk-{i % 1000:03d}".encode():
             (0, i * 512, 1, i) for i in range(ref_n)}
        ref_bytes = tracemalloc.get_traced_memory()[0] / ref_n
        tracemalloc.stop()
        del d
        report.add(Row(f"index memory, {n:,} chunks (bytes/chunk)", per_chunk, "B",
                       "dict of the same keys+locations", ref_bytes, higher_is_better=False,
                       extra={"target_bytes": 64, "fill_sec": fill}))
        subprocess.run(["sync"], check=False)
        t0 = time.perf_counter()
        store = SuperblockStore.open(root)
        restart = time.perf_counter() - t0
        assert len(store.index) == n
        store.close()
        ckpt = root / "index" / "checkpoint.npz"
        t0 = time.perf_counter()
        with open(ckpt, "rb") as f:
            while f.read(1 << 24):
                pass
        raw = time.perf_counter() - t0
        report.add(Row(f"restart, {n:,} chunks (s)", restart, "s",
                       "read the checkpoint file raw", raw, higher_is_better=False,
                       extra={"target_sec": 3.0, "checkpoint_bytes": ckpt.stat().st_size}))
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, 100k-chunk index only")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--only", choices=["get", "put", "index"], action="append")
    args = parser.parse_args()
    seconds = args.seconds or (1.5 if args.quick else 4.0)
    only = set(args.only or ["get", "put", "index"])
    report = Report("storage")
    print(f"{'figure':<46} {'value':>10} {'unit':<8} | {'reference (same run)':<34} {'value':>10} "
          f"| ratio")
    with tempfile.TemporaryDirectory(prefix="vstack-bench-") as tmp:
        work = Path(tmp)
        if "get" in only:
            bench_get(report, work, seconds, chunks=32 if args.quick else 64)
        if "put" in only:
            bench_put(report, work, seconds, rounds=2 if args.quick else 3)
        if "index" in only:
            bench_index(report, work, [100_000] if args.quick else [100_000, 1_000_000])
    report.write()


if __name__ == "__main__":
    main()
