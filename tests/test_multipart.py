"""The streaming multipart parser: any split of the bytes, bounded memory, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.multipart import Done, MultipartParser, PartData, PartEnd, PartStart, parse_boundary


def body(boundary: bytes, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b"preamble to ignore\r\n"
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disp.encode()
        out += b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\nepilogue"


def parse(raw: bytes, boundary: bytes, step: int) -> list[tuple[str, str | None, bytes]]:
    p = MultipartParser(boundary)
    got: list[tuple[str, str | None, bytes]] = []
    current: list[bytes] = []
    name: tuple[str, str | None] = ("", None)
    finished = False
    for i in range(0, len(raw), step):
        for ev in p.feed(raw[i : i + step]):
            if isinstance(ev, PartStart):
                name, current = (ev.name, ev.filename), []
            elif isinstance(ev, PartData):
                assert len(ev.data) <= step + len(boundary) + 4
                current.append(ev.data)
            elif isinstance(ev, PartEnd):
                got.append((*name, b"".join(current)))
            elif isinstance(ev, Done):
                finished = True
    p.close()
    assert finished
    return got


@settings(max_examples=200)
@given(
    data=st.binary(max_size=3000),
    title=st.text(alphabet="abc xyz", max_size=30),
    step=st.integers(1, 400),
)
def test_round_trip_in_any_pieces(data: bytes, title: str, step: int) -> None:
    boundary = b"----vstackBoundary7MA4YWxk"
    parts = [("title", None, title.encode()), ("video", "clip.mp4", data)]
    assert parse(body(boundary, parts), boundary, step) == parts


def test_data_that_looks_like_a_boundary() -> None:
    boundary = b"XyZ"
    tricky = b"\r\n--XyZ is not alone\r\n--Xy" + b"\r\n--XyZ"[:-1]
    parts: list[tuple[str, str | None, bytes]] = [
        ("video", "v.bin", tricky.replace(b"\r\n--XyZ", b"\r\n--XyX"))]
    assert parse(body(boundary, parts), boundary, 3) == parts


def test_boundary_from_content_type() -> None:
    assert parse_boundary('multipart/form-data; boundary="a b"') == b"a b"
    assert parse_boundary("multipart/form-data; charset=utf-8; boundary=xyz") == b"xyz"
    for bad in (None, "application/json", "multipart/form-data"):
        with pytest.raises(ProtocolError):
            parse_boundary(bad)


@pytest.mark.parametrize("raw", [
    b"--B\r\nContent-Type: text/plain\r\n\r\nno disposition\r\n--B--",
    b"--B\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--B--",
    b"--B\r\nX" + b"y" * 20000,
])
def test_malformed_bodies_are_refused(raw: bytes) -> None:
    def run() -> None:
        p = MultipartParser(b"B")
        p.feed(raw)
        p.close()

    with pytest.raises(ProtocolError):
        run()


def test_truncated_body_is_an_error() -> None:
    p = MultipartParser(b"B")
    p.feed(b'--B\r\nContent-Disposition: form-data; name="video"; filename="x"\r\n\r\nabc')
    with pytest.raises(ProtocolError):
        p.close()
