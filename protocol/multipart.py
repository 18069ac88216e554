"""A streaming, sans-IO parser for ``multipart/form-data`` request bodies.

Feed body bytes as they arrive; get back events: :class:`PartStart` (with
the part's name, filename and content type), :class:`PartData` pieces, and
:class:`PartEnd`; :class:`Done` after the closing delimiter. A part's data
is never held whole: an upload of any size needs only a small, bounded
buffer (the delimiter search keeps at most ``len(delimiter)`` bytes back).
Malformed input raises :class:`~protocol.errors.RemoteProtocolError` (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import RemoteProtocolError

__all__ = ["Done", "MultipartParser", "PartData", "PartEnd", "PartStart", "parse_boundary"]

MAX_PART_HEADERS: Final = 16 * 1024
_BOUNDARY_RE: Final = re.compile(r'boundary=(?:"([^"]{1,70})"|([^;\s]{1,70}))', re.I)
_PARAM_RE: Final = re.compile(r';\s*([A-Za-z0-9_*-]+)=(?:"((?:[^"\\]|\\.)*)"|([^;]*))')


@dataclass(frozen=True, kw_only=True, slots=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


@dataclass(frozen=True, slots=True)
class Done:
    pass


Event = PartStart | PartData | PartEnd | Done


def parse_boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, or a 400."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise RemoteProtocolError("Content-Type must be multipart/form-data", 400)
    m = _BOUNDARY_RE.search(content_type)
    if m is None:
        raise RemoteProtocolError("multipart/form-data without a boundary", 400)
    return (m.group(1) or m.group(2)).encode("latin-1")


class MultipartParser:
    def __init__(self, boundary: bytes) -> None:
        if not 1 <= len(boundary) <= 70:
            raise RemoteProtocolError("bad multipart boundary", 400)
        self._first = b"--" + boundary
        self._delim = b"\r\n--" + boundary
        self._buf = bytearray()
        self._state = "preamble"  # preamble -> headers -> body -> after -> ... -> done
        self.parts = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> list[Event]:
        """Parse more of the body; returns the events it completes."""
        if self._state == "done":
            return []  # the epilogue is ignored
        self._buf += data
        events: list[Event] = []
        while True:
            if self._state == "preamble":
                i = self._buf.find(self._first)
                if i < 0:
                    keep = len(self._first) - 1
                    if len(self._buf) > MAX_PART_HEADERS:
                        raise RemoteProtocolError("multipart body has no opening boundary", 400)
                    del self._buf[: max(0, len(self._buf) - keep)]
                    return events
                del self._buf[: i + len(self._first)]
                self._state = "after"
            elif self._state == "after":
                if len(self._buf) < 2:
                    return events
                if self._buf[:2] == b"--":
                    self._state = "done"
                    self._buf.clear()
                    events.append(Done())
                    return events
                j = self._buf.find(b"\r\n")
                if j < 0:
                    if len(self._buf) > 256:
                        raise RemoteProtocolError("malformed multipart boundary line", 400)
                    return events
                if self._buf[:j].strip(b" \t"):
                    raise RemoteProtocolError("malformed multipart boundary line", 400)
                del self._buf[: j + 2]
                self._state = "headers"
            elif self._state == "headers":
                j = self._buf.find(b"\r\n\r\n")
                if j < 0:
                    if len(self._buf) > MAX_PART_HEADERS:
                        raise RemoteProtocolError("multipart part headers too large", 400)
                    return events
                events.append(self._part_start(bytes(self._buf[:j])))
                del self._buf[: j + 4]
                self._state = "body"
            elif self._state == "body":
                i = self._buf.find(self._delim)
                if i < 0:
                    safe = len(self._buf) - (len(self._delim) - 1)
                    if safe > 0:
                        events.append(PartData(bytes(self._buf[:safe])))
                        del self._buf[:safe]
                    return events
                if i:
                    events.append(PartData(bytes(self._buf[:i])))
                events.append(PartEnd())
                del self._buf[: i + len(self._delim)]
                self._state = "after"

    def close(self) -> None:
        """The body ended: raises unless the closing delimiter was seen."""
        if self._state != "done":
            raise RemoteProtocolError("multipart body ended before its closing boundary", 400)

    def _part_start(self, raw: bytes) -> PartStart:
        self.parts += 1
        if self.parts > 64:
            raise RemoteProtocolError("too many multipart parts", 400)
        headers: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise RemoteProtocolError("malformed multipart part header", 400)
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        if not disposition.lower().startswith("form-data"):
            raise RemoteProtocolError("multipart part without Content-Disposition: form-data", 400)
        params = {}
        for m in _PARAM_RE.finditer(disposition):
            quoted, plain = m.group(2), m.group(3)
            params[m.group(1).lower()] = quoted if quoted is not None else (plain or "").strip()
        if "name" not in params:
            raise RemoteProtocolError("multipart part without a name", 400)
        return PartStart(name=params["name"], filename=params.get("filename"),
                         content_type=headers.get("content-type"), headers=headers)
