"""``vstack-put``: upload a video with progress bars, then wait until it is stored.

The file is streamed (never read whole) as a multipart body to the uploader,
with a progress bar for the bytes sent; then the upload's status is polled
with a second bar for processing. Prints the video id and how to play it;
exits non-zero with the reason on failure. ``--json`` prints the final status
object instead.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import h11
import trio

from nodes.net.http_client import request

__all__ = ["main"]


class PutError(Exception):
    pass


async def _send_multipart(url: str, path: Path, title: str, on_bytes: Any) -> dict[str, Any]:
    boundary = f"vstack-{uuid.uuid4().hex}"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n{title}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; "
            f"filename=\"{path.name.replace(chr(34), '')}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = (await trio.Path(path).stat()).st_size
    parts = urlsplit(url)
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(parts.hostname or "localhost", parts.port or 80)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method="POST", target="/upload", headers=[
            ("Host", parts.netloc), ("Connection", "close"),
            ("Content-Type", f"multipart/form-data; boundary={boundary}"),
            ("Content-Length", str(len(head) + size + len(tail)))])) or b"")
        await stream.send_all(conn.send(h11.Data(data=head)) or b"")
        async with await trio.open_file(path, "rb") as f:
            while chunk := await f.read(256 * 1024):
                await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
                on_bytes(len(chunk))
        await stream.send_all((conn.send(h11.Data(data=tail)) or b"") +
                              (conn.send(h11.EndOfMessage()) or b""))
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    try:
        answer: dict[str, Any] = json.loads(body)
    except ValueError:
        raise PutError(f"the uploader answered {status}: {body[:200]!r}") from None
    if status != 200:
        raise PutError(f"the uploader refused the file ({status}): {answer.get('error') or answer}")
    return answer


async def _put(url: str, path: Path, title: str, as_json: bool, poll: float) -> dict[str, Any]:
    size = (await trio.Path(path).stat()).st_size
    quiet = as_json or (not sys.stderr.isatty() and os.environ.get("VSTACK_PROGRESS") != "1")
    bar: Any
    with click.progressbar(length=size, label="uploading ", file=sys.stderr, show_eta=True,
                           show_percent=True, hidden=quiet) as bar:
        answer = await _send_multipart(url, path, title, bar.update)
    session = answer["upload_session_id"]
    if not as_json:
        click.echo(f"video id {answer['video_id']} (session {session})", err=True)
    last = 0
    with click.progressbar(length=100, label="processing", file=sys.stderr, hidden=quiet,
                           show_percent=True) as bar:
        while True:
            res = await request("GET", f"{url}/upload/status/{session}")
            if res.status != 200:
                raise PutError(f"status check failed ({res.status}): {res.body[:200]!r}")
            state = res.json()
            bar.label = f"{state['status']:<16}"
            bar.update(max(0, int(state.get("progress", 0)) - last))
            last = max(last, int(state.get("progress", 0)))
            if state["status"] in ("completed", "failed"):
                return dict(state)
            await trio.sleep(poll)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--title", "-t", default=None, help="Title of the video [default: the file name].")
@click.option("--uploader", envvar="UPLOADER_SERVICE_URL", default="http://localhost:8084",
              show_default=True, help="Uploader URL [env UPLOADER_SERVICE_URL].")
@click.option("--metadata", envvar="METADATA_SERVICE_URL", default="http://localhost:8080",
              show_default=True, help="Metadata URL, for the manifest link [env METADATA_SERVICE_URL].")
@click.option("--json", "as_json", is_flag=True, help="Print the final status object as JSON.")
@click.option("--poll", default=0.5, show_default=True, type=click.FloatRange(0.05),
              help="Seconds between status checks.")
def main(file: Path, title: str | None, uploader: str, metadata: str, as_json: bool,
         poll: float) -> None:
    """Upload FILE (MP4, AVI, MOV, MKV, WebM, FLV) to V-Stack and wait until it is stored."""
    try:
        state = trio.run(_put, uploader.rstrip("/"), file, title or file.stem, as_json, poll)
    except (PutError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(state, indent=2))
    if state["status"] != "completed":
        if not as_json:
            click.echo(f"upload failed: {state.get('error')}", err=True)
        sys.exit(1)
    if not as_json:
        base = metadata.split(",")[0].rstrip("/")
        click.echo(f"stored: {state['total_chunks']} chunks of video {state['video_id']}")
        click.echo(f"manifest: {base}{state['manifest_url']}")
        click.echo(f"play:     vstack-play {state['video_id']} | ffplay -")


if __name__ == "__main__":
    main()
