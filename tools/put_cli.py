"""``vstack-put``: upload a video with progress bars, then wait until it is stored.

The file is streamed (never read whole) as a multipart body to the uploader
through the pooled :class:`~nodes.net.http_client.HttpClient` (a
:class:`~nodes.net.http_client.StreamBody`, its progress reported by
``on_sent``), with a progress bar for the bytes sent; then the upload's
status is polled on the same connection pool, with a second bar for
processing. Prints the video id and how to play it; exits non-zero with the
reason, in one line, on failure. ``--json`` prints the final status object
instead.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import click
import trio

from nodes.net.errors import deadline
from nodes.net.http_client import HttpClient, HttpResult, StreamBody
from protocol.errors import VStackError
from tools.credentials import DEFAULT_DATA_DIR, api_bearer

__all__ = ["PutError", "main", "send_multipart"]

#: Bytes read from the file per piece sent.
PIECE: Final = 256 * 1024
#: How long one status check may take.
STATUS_SECONDS: Final = 30.0

OnSent = Callable[[int], Awaitable[None] | None]


class PutError(VStackError):
    """The upload was refused or could not be followed; the message says why."""


def _form(path: Path, title: str) -> tuple[bytes, bytes, str]:
    """The multipart head (title part, video part headers), tail and Content-Type."""
    boundary = f"vstack-{uuid.uuid4().hex}"
    filename = path.name.replace('"', "")
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n{title}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail, f"multipart/form-data; boundary={boundary}"


async def _pieces(path: Path, size: int, head: bytes, tail: bytes,
                  read: Callable[[int], Awaitable[bytes]]) -> AsyncIterator[bytes]:
    """``head``, the file's ``size`` bytes, ``tail``; a file that changes size is a PutError."""
    yield head
    left = size
    while left:
        try:
            piece = await read(min(PIECE, left))
        except OSError as exc:
            raise PutError(f"reading {path} failed: {exc.strerror or exc}") from None
        if not piece:
            raise PutError(f"{path} shrank while it was being uploaded")
        left -= len(piece)
        yield piece
    yield tail


async def send_multipart(url: str, path: Path, title: str, on_sent: OnSent | None = None, *,
                         http: HttpClient | None = None) -> dict[str, Any]:
    """``POST {url}/upload`` the file; returns the uploader's answer.

    Args:
        on_sent: called with the size of each piece of the body as it is sent.
        http: the connection pool to use (default: a new one, closed after).

    Raises:
        PutError: the uploader refused the file (its reason) or answered nonsense.
        TransportError: the uploader could not be reached, or the connection broke.
        OSError: the file could not be opened.
    """
    if http is None:
        async with HttpClient(max_idle_per_host=0) as own:
            return await send_multipart(url, path, title, on_sent, http=own)
    head, tail, content_type = _form(path, title)
    async with await trio.open_file(path, "rb") as f:  # before sending: an OSError is ours
        size = (await trio.Path(path).stat()).st_size
        body = StreamBody(_pieces(path, size, head, tail, f.read), len(head) + size + len(tail))
        res = await http.request("POST", f"{url}/upload", body=body, on_sent=on_sent,
                                 headers=[("Content-Type", content_type)])
    return _answer(res)


def _answer(res: HttpResult) -> dict[str, Any]:
    """The uploader's answer to the upload, checked."""
    try:
        answer = json.loads(res.body)
    except (ValueError, UnicodeDecodeError):
        raise PutError(f"the uploader answered {res.status}: {res.body[:200]!r}") from None
    if not isinstance(answer, dict):
        raise PutError(f"the uploader answered {res.status}: {res.body[:200]!r}")
    if res.status != 200:
        raise PutError(f"the uploader refused the file ({res.status}): "
                       f"{answer.get('error') or answer}")
    if not isinstance(answer.get("upload_session_id"), str):
        raise PutError(f"the uploader's answer has no upload_session_id: {answer}")
    return answer


async def _status(http: HttpClient, url: str, session: str) -> dict[str, Any]:
    """The session's status object, checked."""
    with deadline(STATUS_SECONDS, "upload status"):
        res = await http.request("GET", f"{url}/upload/status/{session}")
    if res.status != 200:
        raise PutError(f"status check failed ({res.status}): {res.error_detail()}")
    state = res.json()
    if not isinstance(state, dict) or not isinstance(state.get("status"), str):
        raise PutError(f"the uploader's status answer is malformed: {res.body[:200]!r}")
    return state


async def _put(url: str, path: Path, title: str, as_json: bool, poll: float,
               auth: list[tuple[str, str]]) -> dict[str, Any]:
    quiet = as_json or (not sys.stderr.isatty() and os.environ.get("VSTACK_PROGRESS") != "1")
    size = (await trio.Path(path).stat()).st_size
    bar: Any
    async with HttpClient(headers=auth) as http:
        with click.progressbar(length=size, label="uploading ", file=sys.stderr, show_eta=True,
                               show_percent=True, hidden=quiet) as bar:
            answer = await send_multipart(url, path, title, bar.update, http=http)
        session = answer["upload_session_id"]
        if not as_json:
            click.echo(f"video id {answer.get('video_id')} (session {session})", err=True)
        last = 0
        with click.progressbar(length=100, label="processing", file=sys.stderr, hidden=quiet,
                               show_percent=True) as bar:
            while True:
                state = await _status(http, url, session)
                progress = int(state.get("progress") or 0)
                bar.label = f"{state['status']:<16}"
                bar.update(max(0, progress - last))
                last = max(last, progress)
                if state["status"] in ("completed", "failed"):
                    return state
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
@click.option("--data-dir", envvar="DATA_DIR", default=DEFAULT_DATA_DIR, show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where `vstack-node all` keeps its secrets, if API_TOKEN is not set [env DATA_DIR].")
def main(file: Path, title: str | None, uploader: str, metadata: str, as_json: bool,
         poll: float, data_dir: Path) -> None:
    """Upload FILE (MP4, AVI, MOV, MKV, WebM, FLV) to V-Stack and wait until it is stored.

    Sends API_TOKEN (else CLUSTER_SECRET; from the environment, else from
    DATA_DIR/secrets) as the bearer token when one is set.
    """
    try:
        state = trio.run(_put, uploader.rstrip("/"), file, title or file.stem, as_json, poll,
                         api_bearer(data_dir))
    except VStackError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or file}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(state, indent=2))
    if state["status"] != "completed":
        if not as_json:
            click.echo(f"upload failed: {state.get('error')}", err=True)
        sys.exit(1)
    if not as_json:
        base = metadata.split(",")[0].rstrip("/")
        click.echo(f"stored: {state.get('total_chunks')} chunks of video {state.get('video_id')}")
        click.echo(f"manifest: {base}{state.get('manifest_url')}")
        vid = state.get("video_id")
        here = Path(sys.argv[0]).resolve().with_name("vstack-play")
        play = str(here) if here.exists() else "vstack-play"
        client = os.environ.get("CLIENT_SERVICE_URL", "http://localhost:8086").rstrip("/")
        click.echo(f"play:     {play} {vid} -o {vid}.ts")
        click.echo(f"HLS:      {client}/hls/{vid}.m3u8  (ffplay, VLC, mpv, Safari)")


if __name__ == "__main__":
    main()
