"""``vstack-play``: play a stored video with the smart client.

``vstack-play VIDEO_ID | ffplay -`` plays it in any player reading stdin;
``-o out.ts`` saves it; with stdout on a terminal it plays without output,
for the live status. The playback runs in real time on the manifest's chunk
durations (``--speed N``: N times faster; ``--speed 0``: as fast as the
network allows), with the smart client's buffer, scoring, hedging and
failover (``--naive``: plain round robin, for comparisons). Every chunk is
checked against its SHA-256 before it is played.

The live status (the guide's "SMART CLIENT STATUS") is drawn on stderr
when stderr is a terminal; ``--json`` prints the final statistics;
``--dashboard`` serves this playback's live dashboard (port 8888).

Failures end with one line on stderr and exit status 1: no such video, a
video not finished uploading (``--allow-incomplete`` plays what is stored),
a chunk no copy of which could be fetched, the metadata service
unreachable. A player that quits before the end (stdout becomes a broken
pipe) is not a failure: the command stops quietly with status 0.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
import trio

from nodes.client.client import SmartClient, open_smart_client
from nodes.client.service import serve_client_http
from nodes.client.session import Playback
from protocol.errors import VStackError
from tools.client_options import client_options, client_settings
from tools.credentials import DEFAULT_DATA_DIR, api_bearer
from vstack.settings import ClientSettings

__all__ = ["main", "render_status"]


def render_status(status: dict[str, Any]) -> str:
    """The guide's status block for a status object (``SmartClient.status()``)."""
    buf = status.get("buffer") or {}
    stats = status.get("buffer_stats") or {}
    sched = status.get("scheduler_stats") or {}
    startup = status.get("startup_latency")
    lines = [
        "V-STACK SMART CLIENT STATUS",
        "=" * 60,
        f"Video ID: {status.get('video_id')}",
        f"Startup Latency: {'-' if startup is None else f'{startup:.2f}s'}",
        "",
        f"Buffer Status: {str(buf.get('state', '-')).upper()}",
        f"  Level: {buf.get('buffer_level_sec', 0):.1f}s / {buf.get('target_buffer_sec', 0):.0f}s",
        f"  Health: {buf.get('buffer_health_percent', 0):.0f}%",
        f"  Position: Chunk {buf.get('current_position', 0)}",
        "",
        "Playback Statistics:",
        f"  Chunks Played: {stats.get('total_chunks_played', 0)} of {stats.get('total_chunks', 0)}",
        f"  Rebuffering Events: {stats.get('rebuffering_events', 0)}",
        "",
        "Download Statistics:",
        f"  Total Downloads: {sched.get('total_downloads', 0)}",
        f"  Success Rate: {100 * sched.get('success_rate', 1.0):.1f}%",
        f"  Failovers: {sched.get('failover_count', 0)}",
        f"  Hedged Requests: {sched.get('hedged_requests', 0)}",
        "",
        "Storage Node Scores:",
        *(f"  {url}: {score:.1f}" for url, score in (status.get("node_scores") or {}).items()),
        "=" * 60,
    ]
    return "\n".join(lines)


Sink = Callable[[bytes], Awaitable[object]]


async def _show_status(client: SmartClient, play: Playback) -> None:
    """Redraw the status on stderr (a terminal) every second."""
    while True:
        text = render_status(client.status())
        sys.stderr.write("\x1b[H\x1b[2J" + text + "\n")
        sys.stderr.flush()
        await trio.sleep(1)


async def _play(settings: ClientSettings, video_id: str, sink: Sink, *, speed: float,
                naive: bool, allow_incomplete: bool, live: bool, dashboard: int | None,
                headers: list[tuple[str, str]], token: bytes | None) -> dict[str, Any]:
    async with open_smart_client(settings.metadata_urls, settings.policy(), headers=headers,
                                 token=token, binary=settings.transport == "auto",
                                 monitoring_interval=settings.monitoring_interval) as client, \
            trio.open_nursery() as nursery:
        failure: Exception | None = None
        try:
            play = await client.playback(video_id, speed=speed, naive=naive,
                                         allow_incomplete=allow_incomplete)
            if dashboard is not None:
                svc = await nursery.start(lambda task_status: serve_client_http(
                    client, nursery, settings, port=dashboard, task_status=task_status))
                click.echo(f"dashboard: http://127.0.0.1:{svc.port}/", err=True)
            if live:
                nursery.start_soon(_show_status, client, play)
            await play.run(sink)
        except Exception as exc:  # raised below, outside the nursery: no exception group
            failure = exc
        status = client.status()
        if live:
            sys.stderr.write("\x1b[H\x1b[2J" + render_status(status) + "\n")
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return status


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("video_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the video (MPEG-TS) to this file; default: stdout when it is not a "
              "terminal.")
@click.option("--speed", default=1.0, type=click.FloatRange(0, 1000),
              help="Play N times faster than real time; 0: as fast as the network allows.")
@click.option("--naive", is_flag=True, help="Plain round robin: no scoring, hedging or buffer "
              "policy (to compare with).")
@click.option("--json", "as_json", is_flag=True, help="Print the final statistics as JSON "
              "(on stdout with --output, else on stderr).")
@click.option("--quiet", "-q", is_flag=True, help="No live status.")
@click.option("--dashboard", "dashboard", is_flag=False, flag_value=8888, default=None,
              type=click.IntRange(0, 65535), help="Serve this playback's live dashboard on "
              "this port (8888 if none given).")
@click.option("--allow-incomplete", is_flag=True, help="Play a video still uploading (what is "
              "stored of it).")
@click.option("--metadata", envvar="METADATA_SERVICE_URL", default="http://localhost:8080",
              help="Metadata replica URL(s), comma-separated [env METADATA_SERVICE_URL].")
@client_options
def main(video_id: str, output: Path | None, speed: float, naive: bool, as_json: bool,
         quiet: bool, dashboard: int | None, allow_incomplete: bool, metadata: str,
         **opts: Any) -> None:
    """Play VIDEO_ID: `vstack-play ID | ffplay -`, `vstack-play ID -o out.ts`."""
    urls = tuple(u.strip().rstrip("/") for u in metadata.split(",") if u.strip())
    if not urls:
        raise click.UsageError("no metadata service URL")
    from vstack.settings import OPEN  # the dashboard here serves loopback only
    settings = client_settings(urls, 0, "127.0.0.1", OPEN, **opts)
    # Reads may be closed (PUBLIC_READS=0): then the user's token opens them.
    headers = api_bearer(Path(os.environ.get("DATA_DIR", DEFAULT_DATA_DIR)))
    token = headers[0][1].removeprefix("Bearer ").encode() if headers else None
    to_stdout = output is None and not sys.stdout.isatty()
    live = not quiet and sys.stderr.isatty()

    async def run() -> dict[str, Any]:
        async def discard(data: bytes) -> None:
            return None

        play = functools.partial(_play, settings, video_id, speed=speed, naive=naive,
                                 allow_incomplete=allow_incomplete, live=live,
                                 dashboard=dashboard, headers=headers, token=token)
        if output is not None:
            async with await trio.open_file(output, "wb") as f:
                return await play(f.write)
        if to_stdout:
            stdout = trio.wrap_file(sys.stdout.buffer)

            async def sink(data: bytes) -> None:
                await stdout.write(data)
                await stdout.flush()

            return await play(sink)
        return await play(discard)

    try:
        status = trio.run(run)
    except BrokenPipeError:  # the player quit before the end: nothing went wrong here
        if to_stdout:
            _quiet_stdout()
        sys.exit(0)
    except VStackError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or 'output'}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(status, indent=2), err=output is None)
    elif output is not None:
        click.echo(f"wrote {status['buffer_stats']['total_chunks_played']} chunks to {output}",
                   err=True)


if __name__ == "__main__":
    main()
