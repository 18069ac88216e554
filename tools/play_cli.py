"""``vstack-play``: write a stored video to stdout (or a file), for any player.

``vstack-play VIDEO_ID | ffplay -`` plays it; ``-o out.ts`` saves it. Every
chunk is checked against its SHA-256 and fetched from another replica if a
copy is missing or damaged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import trio

from nodes.client.fetcher import FetchFailed, stream_video
from nodes.net.metadata_client import MetadataClient, MetadataUnavailable

__all__ = ["main"]


async def _play(metadata_urls: tuple[str, ...], video_id: str, out: Path | None) -> int:
    client = MetadataClient(metadata_urls)
    try:
        if out is None:
            stdout = trio.wrap_file(sys.stdout.buffer)

            async def sink(data: bytes) -> None:
                await stdout.write(data)
                await stdout.flush()

            return await stream_video(client, video_id, sink)
        async with await trio.open_file(out, "wb") as f:
            return await stream_video(client, video_id, f.write)  # type: ignore[arg-type]
    finally:
        await client.aclose()


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
    try:
        n = trio.run(_play, urls, video_id, output)
    except (FetchFailed, MetadataUnavailable, BrokenPipeError) as exc:
        raise click.ClickException(str(exc)) from None
    if output is not None:
        click.echo(f"wrote {n} bytes to {output}", err=True)


if __name__ == "__main__":
    main()
