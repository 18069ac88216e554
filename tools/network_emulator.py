"""``python -m tools.network_emulator``: drive a running ``vstack-node netem``.

``show`` prints every proxy's settings and counters; ``set PORT ...`` changes
one proxy's faults (``set all ...``: every proxy); ``clear PORT|all`` puts
them back to no faults; ``scenarios`` runs the usage guide's presets in
sequence (normal, high latency, low bandwidth, packet loss, node failure,
recovery) against a running cluster whose manifests point at the proxies,
plays a video back under each, and reports what the playback saw: time to
first byte, total time, throughput, errors, and what the proxies did
(resets, stalls, refused connections). Every figure is measured.

The control API needs the cluster secret to change faults when one is set
(``CLUSTER_SECRET``, or ``DATA_DIR/secrets`` of ``vstack-node all``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import trio

from nodes.client.fetcher import stream_video
from nodes.net.http_client import HttpClient, HttpResult
from nodes.net.metadata_client import MetadataClient
from protocol.errors import VStackError
from tools.credentials import DEFAULT_DATA_DIR, api_bearer, read_secret
from tools.put_cli import send_multipart
from vstack.netem import SCENARIOS, FaultSettings, Scenario

__all__ = ["main"]


class EmulatorError(click.ClickException):
    pass


@dataclass
class Control:
    """The emulator's control API."""

    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with HttpClient(headers=self.headers, max_idle_per_host=0) as http:
            try:
                with trio.fail_after(15):
                    res: HttpResult = await http.request(method, self.url + path, json_body=body)
            except (VStackError, trio.TooSlowError) as exc:
                raise EmulatorError(f"emulator at {self.url}: {exc or 'timed out'}") from None
        if res.status >= 400:
            raise EmulatorError(f"{method} {path}: {res.status} {res.error_detail()}")
        return res.json()

    async def proxies(self) -> list[dict[str, Any]]:
        answer = await self.call("GET", "/proxies")
        return sorted(answer["proxies"], key=lambda p: p["listen_port"])

    async def ports(self, which: str) -> list[int]:
        ports = [p["listen_port"] for p in await self.proxies()]
        if which == "all":
            return ports
        if not which.isdigit() or int(which) not in ports:
            raise EmulatorError(f"no proxy on port {which}; proxies: {ports}")
        return [int(which)]

    async def apply(self, ports: list[int], body: dict[str, Any]) -> None:
        for port in ports:
            await self.call("PUT", f"/proxies/{port}", body)


def _control(url: str, data_dir: Path) -> Control:
    secret = read_secret("CLUSTER_SECRET", data_dir)
    headers = [("Authorization", "Bearer " + secret.decode("latin-1"))] if secret else []
    return Control(url.rstrip("/"), headers)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--control", envvar="NETEM_URL", default="http://127.0.0.1:8089",
              help="The emulator's control API [env NETEM_URL].")
@click.option("--data-dir", envvar="DATA_DIR", default=DEFAULT_DATA_DIR,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where `vstack-node all` keeps its secrets, if CLUSTER_SECRET is not set "
              "[env DATA_DIR].")
@click.pass_context
def main(ctx: click.Context, control: str, data_dir: Path) -> None:
    """Set and show network faults, and run the usage guide's scenarios."""
    ctx.obj = _control(control, data_dir)


def _table(proxies: list[dict[str, Any]]) -> str:
    lines = [f"{'port':>6} {'target':<22} {'mode':<9} {'lat ms':>7} {'jit ms':>6} "
             f"{'bw B/s':>10} {'reset':>6} {'stall':>6} {'conns':>6} {'up B':>11} "
             f"{'down B':>11} {'resets':>6} {'stalls':>6}"]
    for p in proxies:
        s, c = p["settings"], p["counters"]
        lines.append(
            f"{p['listen_port']:>6} {p['target']:<22} {s['mode']:<9} {s['latency_ms']:>7g} "
            f"{s['jitter_ms']:>6g} {s['bandwidth_bps'] or '-':>10} {s['reset_rate']:>6g} "
            f"{s['stall_rate']:>6g} {c['connections']:>6} {c['bytes_up']:>11} "
            f"{c['bytes_down']:>11} {c['resets']:>6} {c['stalls']:>6}")
    return "\n".join(lines)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_obj
def show(ctl: Control, as_json: bool) -> None:
    """Every proxy: its target, faults and counters."""
    proxies = trio.run(ctl.proxies)
    click.echo(json.dumps(proxies, indent=2) if as_json else _table(proxies))


@main.command(name="set")
@click.argument("port")
@click.option("--latency-ms", type=float, default=None, help="Added delay each way.")
@click.option("--jitter-ms", type=float, default=None, help="Uniform +/- around the latency.")
@click.option("--bandwidth-bps", type=int, default=None,
              help="Cap in bytes/s per connection and direction (0: none).")
@click.option("--reset-rate", type=float, default=None, help="Probability of a reset per chunk.")
@click.option("--stall-rate", type=float, default=None, help="Probability of a stall per chunk.")
@click.option("--stall-ms", type=float, default=None, help="How long a stall lasts.")
@click.option("--mode", type=click.Choice(["normal", "refuse", "blackhole"]), default=None)
@click.pass_obj
def set_faults(ctl: Control, /, port: str, **values: Any) -> None:
    """Change the faults of the proxy on PORT (or `all`); options not given stay as they are."""
    body = {k: v for k, v in values.items() if v is not None}
    if not body:
        raise click.UsageError("give at least one setting, e.g. --latency-ms 200")

    async def run() -> list[dict[str, Any]]:
        await ctl.apply(await ctl.ports(port), body)
        return await ctl.proxies()

    click.echo(_table(trio.run(run)))


@main.command()
@click.argument("port")
@click.pass_obj
def clear(ctl: Control, port: str) -> None:
    """Remove every fault from the proxy on PORT (or `all`): recovery."""

    async def run() -> list[dict[str, Any]]:
        await ctl.apply(await ctl.ports(port), FaultSettings().to_json())
        return await ctl.proxies()

    click.echo(_table(trio.run(run)))


# -- scenarios ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one playback saw under one scenario."""

    scenario: str
    ok: bool = False
    bytes: int = 0
    first_byte_s: float | None = None
    total_s: float = 0.0
    error: str = ""
    proxies: dict[str, int] = field(default_factory=dict)  # counter changes, all proxies

    @property
    def throughput(self) -> float:
        return self.bytes / self.total_s if self.total_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "ok": self.ok, "bytes": self.bytes,
                "time_to_first_byte_s": self.first_byte_s, "total_s": round(self.total_s, 3),
                "throughput_bytes_per_s": round(self.throughput), "error": self.error,
                "proxies": self.proxies}


async def play_once(out: Outcome, metadata_urls: tuple[str, ...], video_id: str,
                    headers: list[tuple[str, str]]) -> None:
    """Stream ``video_id`` once through the proxies into ``out`` (wall-clock time).

    The caller sets the deadline; ``out`` holds what was seen until then.
    """
    start = time.perf_counter()

    async def sink(data: bytes) -> None:
        if out.first_byte_s is None and data:
            out.first_byte_s = time.perf_counter() - start
        out.bytes += len(data)

    client = MetadataClient(metadata_urls, headers=headers)
    try:
        await stream_video(client, video_id, sink)
        out.ok = True
    except VStackError as exc:
        out.error = str(exc)[:200]
    finally:
        out.total_s = time.perf_counter() - start
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await client.aclose()


_COUNTERS = ("connections", "refused", "resets", "stalls", "bytes_down")


async def run_scenario(ctl: Control, scenario: Scenario, play: Any) -> Outcome:
    """Apply ``scenario`` to every proxy (the first one by port for a node failure), play."""
    before = await ctl.proxies()
    for index, proxy in enumerate(before):
        await ctl.apply([proxy["listen_port"]], scenario.for_proxy(index).to_json())
    outcome: Outcome = await play(scenario.name)
    after = await ctl.proxies()
    outcome.proxies = {k: sum(p["counters"][k] for p in after) - sum(
        p["counters"][k] for p in before) for k in _COUNTERS}
    return outcome


async def _upload(uploader: str, path: Path, headers: list[tuple[str, str]]) -> str:
    """Upload ``path`` and wait until it is stored; its video id."""
    async with HttpClient(headers=headers) as http:
        answer = await send_multipart(uploader, path, path.stem, http=http)
        session = answer["upload_session_id"]
        with trio.fail_after(600):  # processing a long video takes a while
            while True:
                state = (await http.request("GET", f"{uploader}/upload/status/{session}")).json()
                if state.get("status") == "completed":
                    return str(answer["video_id"])
                if state.get("status") == "failed":
                    raise EmulatorError(f"upload failed: {state.get('error')}")
                await trio.sleep(0.5)


def _report(outcomes: list[Outcome]) -> str:
    lines = [f"{'scenario':<14} {'result':<6} {'first byte':>10} {'total':>8} {'MB/s':>7} "
             f"{'resets':>6} {'stalls':>6} {'refused':>7}  error"]
    for o in outcomes:
        ttfb = f"{o.first_byte_s:.3f}s" if o.first_byte_s is not None else "-"
        lines.append(
            f"{o.scenario:<14} {'ok' if o.ok else 'FAIL':<6} {ttfb:>10} {o.total_s:>7.2f}s "
            f"{o.throughput / 1e6:>7.2f} {o.proxies.get('resets', 0):>6} "
            f"{o.proxies.get('stalls', 0):>6} {o.proxies.get('refused', 0):>7}  {o.error}")
    return "\n".join(lines)


@main.command()
@click.option("--metadata", envvar="METADATA_SERVICE_URL", default="http://localhost:8080",
              help="Metadata replica URL(s), comma-separated [env METADATA_SERVICE_URL].")
@click.option("--video", "video_id", default=None, help="The video to play under each scenario.")
@click.option("--uploader", envvar="UPLOADER_SERVICE_URL", default="http://localhost:8084",
              help="Uploader URL, to upload --file first [env UPLOADER_SERVICE_URL].")
@click.option("--file", "upload_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Upload this video first and play it (instead of --video).")
@click.option("--timeout", default=120.0, type=click.FloatRange(1.0),
              help="Seconds one playback may take before it counts as failed.")
@click.option("--only", multiple=True, type=click.Choice([s.name for s in SCENARIOS]),
              help="Run only these scenarios (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
@click.pass_obj
def scenarios(ctl: Control, metadata: str, video_id: str | None, uploader: str,
              upload_file: Path | None, timeout: float, only: tuple[str, ...],
              as_json: bool) -> None:
    """Run the guide's scenarios in sequence and report what a playback saw in each.

    The cluster's manifests must name the proxies, not the nodes (start the
    nodes with NODE_URL set to their proxy's URL, or map names with
    NODE_ALIASES), or the playback bypasses the emulator. Faults are cleared
    at the end.
    """
    if (video_id is None) == (upload_file is None):
        raise click.UsageError("give --video ID or --file PATH")
    urls = tuple(u.strip().rstrip("/") for u in metadata.split(",") if u.strip())
    headers = api_bearer(ctl_data_dir())
    chosen = [s for s in SCENARIOS if not only or s.name in only]

    async def run() -> list[Outcome]:
        video = video_id
        if video is None:
            assert upload_file is not None
            video = await _upload(uploader.rstrip("/"), upload_file, headers)

        async def play(name: str) -> Outcome:
            out = Outcome(scenario=name)
            with trio.move_on_after(timeout) as scope:
                await play_once(out, urls, str(video), headers)
            if scope.cancelled_caught:
                out.error = f"not finished within {timeout:g} s"
            return out

        outcomes = []
        try:
            for scenario in chosen:
                click.echo(f"scenario: {scenario.name} ...", err=True)
                outcomes.append(await run_scenario(ctl, scenario, play))
        finally:
            with trio.move_on_after(15) as scope:
                scope.shield = True
                await ctl.apply(await ctl.ports("all"), FaultSettings().to_json())
        return outcomes

    outcomes = trio.run(run)
    click.echo(json.dumps([o.to_json() for o in outcomes], indent=2) if as_json
               else _report(outcomes))
    sys.exit(0 if all(o.ok or o.scenario == "node failure" for o in outcomes) else 1)


def ctl_data_dir() -> Path:
    """``DATA_DIR`` of ``vstack-node all`` (for the user's API token), as the other CLIs read it."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    return Path(root.params.get("data_dir") or DEFAULT_DATA_DIR)


if __name__ == "__main__":
    main()
