"""The binary frame codec: round trips, limits, damage, and fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.frames import (
    FLAG_RESPONSE,
    HEADER,
    LARGE_PAYLOAD,
    NEED_DATA,
    ChecksumMismatch,
    ChunkInfo,
    Frame,
    FrameConnection,
    Opcode,
    crc32c,
    decode_range,
    encode_range,
    response,
)


class ConnectionPair:
    """A client and a server codec joined in memory (as h11's tests do)."""

    def __init__(self, max_payload: int = 1 << 20) -> None:
        self.client = FrameConnection(max_payload=max_payload)
        self.server = FrameConnection(max_payload=max_payload)

    def send(self, frame: Frame, *, to_server: bool = True, step: int | None = None) -> list[Frame]:
        src, dst = (self.client, self.server) if to_server else (self.server, self.client)
        data = src.send(frame)
        got: list[Frame] = []
        pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
        for piece in pieces:
            dst.receive_data(piece)
            while (ev := dst.next_event()) is not NEED_DATA:
                assert isinstance(ev, Frame)
                got.append(ev)
        return got


frames = st.builds(
    Frame,
    opcode=st.sampled_from(list(Opcode)),
    request_id=st.integers(0, 2**32 - 1),
    key=st.binary(max_size=255),
    payload=st.binary(max_size=4096),
    status=st.integers(0, 65535),
    flags=st.sampled_from([0, FLAG_RESPONSE]),
)


@given(frame=frames, step=st.one_of(st.none(), st.integers(1, 50)))
def test_round_trip_in_any_pieces(frame: Frame, step: int | None) -> None:
    pair = ConnectionPair()
    [got] = pair.send(frame, step=step)
    assert got == frame
    assert got.crc == crc32c(frame.payload)


def test_pipelined_frames_come_out_in_order() -> None:
    pair = ConnectionPair()
    sent = [Frame(opcode=Opcode.GET, request_id=i, key=f"c-{i}".encode()) for i in range(50)]
    wire = b"".join(pair.client.send(f) for f in sent)
    pair.server.receive_data(wire)
    got = []
    while (ev := pair.server.next_event()) is not NEED_DATA:
        got.append(ev)
    assert got == sent


def test_header_layout_is_as_documented() -> None:
    conn = FrameConnection()
    data = conn.send(Frame(opcode=Opcode.PUT, request_id=7, key=b"abc", payload=b"hello"))
    assert HEADER.size == 24
    magic, ver, op, flags, status, rid, klen, plen, crc = HEADER.unpack(data[:24])
    assert (magic, ver, op, flags, status, rid, klen, plen) == (b"VS", 1, 2, 0, 0, 7, 3, 5)
    assert crc == crc32c(b"hello")
    assert data[24:27] == b"abc"
    assert data[27:] == b"hello"
    # CRC32C test vector from RFC 3720.
    assert crc32c(b"123456789") == 0xE3069283


def test_payload_limit_is_checked_before_buffering() -> None:
    conn = FrameConnection(max_payload=1000)
    header = HEADER.pack(b"VS", 1, Opcode.PUT, 0, 0, 1, 0, 10**9, 0)
    conn.receive_data(header)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.status == 413
    conn.receive_data(b"\0" * 1_000_000)  # the peer keeps sending: nothing is kept
    assert conn.buffered <= HEADER.size
    with pytest.raises(RemoteProtocolError):  # the connection stays poisoned
        conn.next_event()


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (HEADER.pack(b"XX", 1, 1, 0, 0, 1, 0, 0, 0), 400),
        (HEADER.pack(b"VS", 9, 1, 0, 0, 1, 0, 0, 0), 505),
        (HEADER.pack(b"VS", 1, 99, 0, 0, 1, 0, 0, 0), 400),
        (HEADER.pack(b"VS", 1, 1, 0x80, 0, 1, 0, 0, 0), 400),
        (HEADER.pack(b"VS", 1, 1, 0, 0, 1, 256, 0, 0), 400),
    ],
)
def test_malformed_headers_are_refused(header: bytes, status: int) -> None:
    conn = FrameConnection()
    conn.receive_data(header)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.status == status


def test_damaged_payload_is_reported_and_the_connection_goes_on() -> None:
    conn = FrameConnection()
    good = FrameConnection().send(Frame(opcode=Opcode.PUT, request_id=1, key=b"k", payload=b"data"))
    bad = bytearray(good)
    bad[-1] ^= 0x01
    conn.receive_data(bytes(bad) + good)
    with pytest.raises(ChecksumMismatch) as info:
        conn.next_event()
    assert info.value.frame.request_id == 1
    ev = conn.next_event()
    assert isinstance(ev, Frame)
    assert ev.payload == b"data"


def test_eof_in_the_middle_of_a_frame_is_an_error() -> None:
    conn = FrameConnection()
    data = conn.send(Frame(opcode=Opcode.PING, request_id=1, payload=b"x" * 10))
    conn.receive_data(data[:-3])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_send_header_lets_the_payload_be_streamed() -> None:
    conn = FrameConnection()
    payload = bytes(range(256)) * 10
    req = Frame(opcode=Opcode.GET, request_id=3, key=b"c")
    wire = conn.send_header(response(req, 200), len(payload), crc32c(payload)) + payload
    other = FrameConnection()
    other.receive_data(wire)
    ev = other.next_event()
    assert isinstance(ev, Frame)
    assert ev.is_response
    assert ev.status == 200
    assert ev.payload == payload


def test_invalid_frames_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError):
        Frame(opcode=Opcode.PUT, request_id=-1)
    with pytest.raises(LocalProtocolError):
        Frame(opcode=Opcode.PUT, request_id=1, key=b"k" * 256)
    with pytest.raises(LocalProtocolError):
        Frame(opcode=7, request_id=1)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        FrameConnection(max_payload=0)


def test_range_and_chunk_info_payloads() -> None:
    assert decode_range(b"") is None
    assert decode_range(encode_range(5, 10)) == (5, 10)
    with pytest.raises(RemoteProtocolError):
        decode_range(b"short")
    info = ChunkInfo(size=3, crc=crc32c(b"abc"), sha256=b"\1" * 32)
    assert ChunkInfo.decode(info.encode()) == info
    with pytest.raises(RemoteProtocolError):
        ChunkInfo.decode(b"\0" * 5)


@settings(max_examples=300)
@given(data=st.binary(max_size=3000), cut=st.integers(1, 64))
def test_random_bytes_give_frames_or_protocol_errors(data: bytes, cut: int) -> None:
    conn = FrameConnection(max_payload=2048)
    try:
        for i in range(0, len(data), cut):
            conn.receive_data(data[i : i + cut])
            while (ev := conn.next_event()) is not NEED_DATA:
                assert isinstance(ev, Frame)
            # Never more than one header plus one maximal frame is held.
            assert conn.buffered <= 24 + 255 + 2048 + cut
    except ProtocolError:
        pass


@given(frame=frames, junk=st.binary(min_size=1, max_size=64))
def test_valid_frame_followed_by_junk(frame: Frame, junk: bytes) -> None:
    conn = FrameConnection()
    conn.receive_data(FrameConnection().send(frame) + junk)
    assert conn.next_event() == frame
    with contextlib.suppress(ProtocolError):
        conn.next_event()


def test_header_struct_is_network_order() -> None:
    raw = HEADER.pack(b"VS", 1, 1, 0, 0, 0x01020304, 0, 0, 0)
    assert raw[8:12] == struct.pack(">I", 0x01020304)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(LARGE_PAYLOAD - 1, 3 * LARGE_PAYLOAD), cut=st.integers(1000, 200_000),
       use_window=st.booleans())
def test_large_payloads_assemble_in_place(size: int, cut: int, use_window: bool) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    first = Frame(opcode=Opcode.PUT, request_id=1, key=b"big", payload=payload)
    second = Frame(opcode=Opcode.PING, request_id=2)
    wire = FrameConnection().send(first) + FrameConnection().send(second)
    conn = FrameConnection()
    got: list[Frame] = []
    pos = 0
    while pos < len(wire):
        window = conn.payload_window()
        if use_window and window is not None:
            n = min(len(window), cut, len(wire) - pos)
            window[:n] = wire[pos : pos + n]
            conn.payload_received(n)
        else:
            n = min(cut, len(wire) - pos)
            conn.receive_data(wire[pos : pos + n])
        pos += n
        while (ev := conn.next_event()) is not NEED_DATA:
            assert isinstance(ev, Frame)
            got.append(ev)
    assert got == [first, second]
    assert conn.buffered == 0


def test_eof_during_a_large_payload_is_an_error() -> None:
    conn = FrameConnection()
    wire = FrameConnection().send(Frame(opcode=Opcode.PUT, request_id=1, payload=b"z" * 200_000))
    conn.receive_data(wire[:100_000])
    assert conn.next_event() is NEED_DATA
    assert conn.pending_payload == len(wire) - 100_000
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@settings(max_examples=50, deadline=None)
@given(sent=st.integers(0, 3 * 1024 * 1024), promised=st.integers(LARGE_PAYLOAD, 8 * 1024 * 1024))
def test_a_payload_buffer_grows_with_what_arrives(sent: int, promised: int) -> None:
    """A header promising ``promised`` bytes costs at most twice what came (or 64 KiB)."""
    sent = min(sent, promised - 1)
    conn = FrameConnection(max_payload=8 * 1024 * 1024)
    wire = HEADER.pack(b"VS", 1, Opcode.PUT, 0, 0, 1, 1, promised, 0) + b"k" + b"p" * sent
    conn.receive_data(wire)
    assert conn.next_event() is NEED_DATA
    assert conn.incoming_payload == promised
    window = conn.payload_window()
    assert window is not None
    capacity = sent + len(window)
    assert capacity <= max(LARGE_PAYLOAD, 2 * sent)


@settings(max_examples=50, deadline=None)
@given(first=st.integers(0, 70_000), pieces=st.lists(st.integers(1, 600_000), max_size=12),
       promised=st.integers(LARGE_PAYLOAD, 8 * 1024 * 1024))
def test_an_admitted_payload_buffer_holds_at_most_four_times_what_came(
        first: int, pieces: list[int], promised: int) -> None:
    """Admitted (charged to a budget), a payload's buffer grows faster, but
    never past four times the bytes that came, until it is whole."""
    conn = FrameConnection(max_payload=8 * 1024 * 1024)
    first = min(first, promised - 1)
    conn.receive_data(HEADER.pack(b"VS", 1, Opcode.PUT, 0, 0, 1, 1, promised, 0) + b"k"
                      + b"p" * first)
    assert conn.next_event() is NEED_DATA
    conn.reserve_payload()
    sent = first
    for n in pieces:
        window = conn.payload_window()
        if window is None:
            break
        assert sent + len(window) <= max(LARGE_PAYLOAD, 4 * sent) or (
            sent + len(window) == promised and 4 * sent >= promised)
        n = min(n, len(window))
        window[:n] = b"p" * n
        conn.payload_received(n)
        sent += n
