"""Receiving an upload: a ``multipart/form-data`` body streamed to a file as it arrives.

The form has a ``title`` text part and a ``video`` file part. The video's
bytes go to disk in batches of :data:`WRITE_BATCH` (never the whole file in
memory); the upload limit is checked as they arrive, so an oversized body
is refused with a 413 before it is all read. The sans-IO parsing is
:class:`protocol.multipart.MultipartParser`'s; this module only decides
what each part means and where its bytes go.

Problems the client can fix are answered as the original (FastAPI) service
did: a missing or bad field is a 422 with a problem list, anything else a
400 (or the 413).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from nodes.net.http_server import Body
from protocol.errors import ProtocolError
from protocol.multipart import Done, MultipartParser, PartData, PartEnd, PartStart
from protocol.validate import ValidationError

__all__ = ["MAX_TITLE", "WRITE_BATCH", "Arrival", "Received", "receive_upload"]

MAX_TITLE: Final = 255
#: Bytes of video gathered before one write to disk (and made visible to a reader
#: of the arriving file: FFmpeg cutting it as it arrives).
WRITE_BATCH: Final = 256 * 1024
#: Seconds a slow upload's bytes may wait in memory before a reader of the
#: arriving file sees them.
FLUSH_SECONDS: Final = 0.2
#: What the multipart framing may add to the video's own bytes.
FORM_OVERHEAD: Final = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class Received:
    """A complete, checked upload form (its video is in the file)."""

    title: str
    filename: str
    size: int


class Arrival:
    """How far an upload's video has arrived on disk, for a reader that follows it.

    The receiver calls :meth:`wrote` after each write, then :meth:`ended` or
    :meth:`failed`; a reader waits with :meth:`wait_past` and reads up to
    :attr:`written`. ``title`` is the form's title once its part ended (a
    form that sends it before the video can be processed as it arrives).
    """

    def __init__(self, expected: int | None = None) -> None:
        self.expected = expected  # the video's size, if the request said (about)
        self.written = 0
        self.title: str | None = None
        self.filename: str | None = None
        self.early_key: str | None = None  # the idempotency key of a video registered early
        self.done = False
        self.error: str | None = None
        self._changed = trio.Event()

    def wrote(self, n: int) -> None:
        self.written += n
        self._notify()

    def ended(self) -> None:
        self.done = True
        self._notify()

    def failed(self, why: str) -> None:
        if not self.done:
            self.error = why
            self._notify()

    @property
    def settled(self) -> bool:
        return self.done or self.error is not None

    async def wait_past(self, offset: int) -> None:
        """Return once more than ``offset`` bytes are written, or the upload settled."""
        while self.written <= offset and not self.settled:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


async def receive_upload(body: Body, boundary: bytes, path: Path, *, limit: int,
                         arrival: Arrival | None = None) -> Received:
    """Stream the form's video part to ``path``; returns the form's fields.

    ``arrival`` (if given) learns of every write and of the title; this function
    does not end or fail it (its caller does, knowing what the upload became).

    Raises:
        ProtocolError: 413 past ``limit`` bytes of video, 400 for a malformed
            body or an empty video; ValidationError (422) for a missing or
            bad field.
    """
    parser = MultipartParser(boundary)
    form = _Form(limit)
    pending: list[bytes] = []
    pending_bytes = 0

    async def flush() -> None:
        nonlocal pending, pending_bytes
        await f.write(b"".join(pending))
        await f.flush()
        if arrival is not None:
            arrival.wrote(pending_bytes)
        pending, pending_bytes = [], 0

    flushed = trio.current_time()
    async with await trio.open_file(path, "wb") as f:
        async for piece in body.chunks(limit + FORM_OVERHEAD):
            for event in parser.feed(piece):
                if isinstance(event, Done):
                    break
                data = form.feed(event)
                if data:
                    pending.append(data)
                    pending_bytes += len(data)
                if arrival is not None and arrival.title is None and form.title_ok():
                    arrival.title = form.title
                if arrival is not None and data:
                    arrival.filename = form.filename
            if pending_bytes >= WRITE_BATCH or (
                    arrival is not None and pending
                    and trio.current_time() - flushed >= FLUSH_SECONDS):
                await flush()
                flushed = trio.current_time()
        parser.close()
        if pending:
            await flush()
    return form.result()


class _Form:
    """What the parts seen so far say; sans-IO."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.title: str | None = None
        self.filename: str | None = None
        self.size = 0
        self._part: str | None = None
        self._text = bytearray()

    def feed(self, event: PartStart | PartData | PartEnd) -> bytes | None:
        """Take one parser event; returns video bytes to write, if it carries some."""
        if isinstance(event, PartStart):
            self._start(event)
        elif isinstance(event, PartData):
            if self._part == "video":
                self.size += len(event.data)
                if self.size > self.limit:
                    raise ProtocolError(f"upload larger than the limit of {self.limit} bytes", 413)
                return event.data
            if self._part == "title":
                self._text += event.data
                if len(self._text) > 4 * MAX_TITLE:
                    raise _invalid("title", "title is too long")
        elif isinstance(event, PartEnd):
            if self._part == "title":
                self.title = self._text.decode("utf-8", "replace").strip()
            self._part = None
        return None

    def _start(self, part: PartStart) -> None:
        self._part = part.name
        self._text.clear()
        if part.name == "video":
            if self.filename is not None:
                raise ProtocolError("more than one video part", 400)
            if not part.filename:
                raise ProtocolError("No filename provided", 400)
            self.filename = part.filename

    def title_ok(self) -> bool:
        """The title part has ended with a title :meth:`result` would take."""
        return bool(self.title) and len(self.title or "") <= MAX_TITLE

    def result(self) -> Received:
        """The form, once the body ended.

        Raises:
            ValidationError: no video part, no title, or a title too long.
            ProtocolError: the video is empty (400).
        """
        if self.filename is None:
            raise _invalid("video", "Field required: a 'video' file part")
        if not self.title:
            raise _invalid("title", "Field required: a non-empty 'title' part")
        if len(self.title) > MAX_TITLE:
            raise _invalid("title", f"title longer than {MAX_TITLE} characters")
        if self.size == 0:
            raise ProtocolError("the video file is empty", 400)
        return Received(title=self.title, filename=self.filename, size=self.size)


def _invalid(field: str, msg: str) -> ValidationError:
    return ValidationError([{"type": "missing", "loc": ["body", field], "msg": msg, "input": None}])
