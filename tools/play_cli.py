"""``vstack-play``: write a stored video to stdout (or a file), for any player.

``vstack-play VIDEO_ID | ffplay -`` plays it; ``-o out.ts`` saves it. Every
chunk is checked against its SHA-256 and fetched from another replica if a
copy is missing or damaged.

Failures end with one line on stderr and exit status 1: no such video, a
chunk no replica serves, the metadata service unreachable. A player that
quits before the end (stdout becomes a broken pipe) is not a failure: the
command stops quietly with status 0.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import trio

from nodes.client.fetcher import stream_video
from nodes.net.metadata_client import MetadataClient
from protocol.errors import VStackError
from tools.credentials import DEFAULT_DATA_DIR, api_bearer

__all__ = ["main"]


async def _to_stdout(client: MetadataClient, video_id: str) -> int:
    stdout = trio.wrap_file(sys.stdout.buffer)

    async def sink(data: bytes) -> None:
        await stdout.write(data)
        await stdout.flush()

    return await stream_video(client, video_id, sink)


async def _to_file(client: MetadataClient, video_id: str, out: Path) -> int:
    async with await trio.open_file(out, "wb") as f:
        return await stream_video(client, video_id, f.write)


async def _play(metadata_urls: tuple[str, ...], video_id: str, out: Path | None) -> int:
    # Reads may be closed (PUBLIC_READS=0): then the user's token opens them.
    data_dir = Path(os.environ.get("DATA_DIR", DEFAULT_DATA_DIR))
    client = MetadataClient(metadata_urls, headers=api_bearer(data_dir))
    try:
        if out is None:
            return await _to_stdout(client, video_id)
        return await _to_file(client, video_id, out)
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await client.aclose()


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("video_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of stdout.")
@click.option("--metadata", envvar="METADATA_SERVICE_URL", default="http://localhost:8080",
              show_default=True, help="Metadata replica URL(s), comma-separated "
              "[env METADATA_SERVICE_URL].")
def main(video_id: str, output: Path | None, metadata: str) -> None:
    """Stream VIDEO_ID (MPEG-TS) to stdout, e.g. `vstack-play ID | ffplay -`."""
    urls = tuple(u.strip().rstrip("/") for u in metadata.split(",") if u.strip())
    if not urls:
        raise click.UsageError("no metadata service URL")
    try:
        n = trio.run(_play, urls, video_id, output)
    except BrokenPipeError:  # the player quit before the end: nothing went wrong here
        if output is None:
            _quiet_stdout()
        sys.exit(0)
    except VStackError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or 'output'}: {exc.strerror or exc}") from None
    if output is not None:
        click.echo(f"wrote {n} bytes to {output}", err=True)


if __name__ == "__main__":
    main()
