"""The binary wire protocol of the storage nodes: a sans-IO frame codec.

Theory of operation
-------------------
Every message, request or response, is one *frame*: a fixed 24-byte header,
then ``key_length`` bytes of key (a chunk id, ASCII), then ``payload_length``
bytes of payload. The header carries the CRC32C of the payload, so a receiver
can tell a damaged payload from a good one without trusting the sender's
storage. ``protocol/README.md`` gives the byte layout as a table.

:class:`FrameConnection` has the surface of ``h11.Connection``: feed it bytes
with :meth:`~FrameConnection.receive_data`, pull :class:`Frame` events with
:meth:`~FrameConnection.next_event` (which returns :data:`NEED_DATA` until a
whole frame is buffered), and turn frames into bytes with
:meth:`~FrameConnection.send`. :meth:`~FrameConnection.send_header` encodes
only the header and key, so an I/O layer can stream the payload itself (for
example with ``os.sendfile`` straight out of a superblock file).

Limits are checked on the header *before* any payload is buffered, and the
payload's buffer grows with the bytes that actually arrive (doubling, never
the promised length at once): a header promising 8 MiB costs nothing until 8
MiB arrive, and a connection never holds more than about twice what its peer
sent, and at most ``max_payload`` (+ one header) whatever it sends.
:attr:`FrameConnection.incoming_payload` tells the I/O layer, as soon as a
header is parsed, how much its payload will need, so it can reserve that
much (or stop reading) before it reads the payload. A malformed header poisons the connection: the
I/O layer answers with an error frame and closes. A payload whose CRC32C does
not match is reported as :class:`ChecksumMismatch` *after* the frame has been
consumed: framing is intact, so the connection stays usable.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Final

import crc32c as _crc32c

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CHUNK_INFO",
    "DEFAULT_MAX_PAYLOAD",
    "FLAG_RESPONSE",
    "HEADER",
    "LARGE_PAYLOAD",
    "MAGIC",
    "MAX_KEY_LENGTH",
    "NEED_DATA",
    "RANGE",
    "VERSION",
    "ChecksumMismatch",
    "ChunkInfo",
    "Frame",
    "FrameConnection",
    "FrameHeader",
    "NeedData",
    "Opcode",
    "crc32c",
    "decode_range",
    "encode_range",
]

MAGIC: Final = b"VS"
VERSION: Final = 1
#: magic, version, opcode, flags, status, request id, key length, (pad),
#: payload length, payload CRC32C. Network byte order.
HEADER: Final = struct.Struct("!2sBBHHIH2xII")
assert HEADER.size == 24
MAX_KEY_LENGTH: Final = 255
#: The default payload limit: 8 MiB of chunk plus room for a range header.
DEFAULT_MAX_PAYLOAD: Final = 8 * 1024 * 1024 + 64
#: Absolute ceiling for any configured limit (payload_length is a u32 anyway).
HARD_MAX_PAYLOAD: Final = 1 << 30
#: Payloads at least this large are assembled in place (see ``payload_window``),
#: in a buffer that starts at this size and doubles as bytes arrive.
LARGE_PAYLOAD: Final = 64 * 1024
#: Set in every response; clear in every request.
FLAG_RESPONSE: Final = 0x0001
_KNOWN_FLAGS: Final = FLAG_RESPONSE

#: Payload of a ranged GET request: offset, length (0 = to the end).
RANGE: Final = struct.Struct("!QQ")
#: Payload of PUT and HEAD responses: size, CRC32C, SHA-256 of the chunk.
CHUNK_INFO: Final = struct.Struct("!QI32s")


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``value``."""
    return int(_crc32c.crc32c(data, value))


class Opcode(enum.IntEnum):
    PING = 1
    PUT = 2
    GET = 3
    HEAD = 4
    DELETE = 5
    STAT = 6
    AUTH = 7  # payload: a bearer token; the connection acts with its rights from then on
    # Between metadata replicas, on their peer port (see protocol/consensus.py).
    PAXOS = 16  # a batch of Paxos messages -> one reply each
    CATCH_UP = 17  # what the replica learned after a change number
    VIEWS = 18  # the replica's own view counters
    SLOT = 19  # the acceptor state of one key
    PENDING = 20  # keys of one video accepted here but not learned (for linearizable reads)
    FLOOR = 21  # the highest round the replica has seen or may use (for a replica that joins)
    HEARD = 22  # how long ago the replica itself last heard from each storage node


class NeedData:
    """Sentinel: the buffer does not hold a whole frame yet."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, kw_only=True, slots=True)
class Frame:
    """One request or response.

    ``status`` is 0 in requests and an HTTP-style code in responses; error
    responses carry a UTF-8 message as payload.
    """

    opcode: Opcode
    request_id: int
    key: bytes = b""
    payload: bytes | bytearray = b""
    status: int = 0
    flags: int = 0
    crc: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.opcode, Opcode):
            raise LocalProtocolError(f"unknown opcode {self.opcode!r}")
        if not 0 <= self.request_id < 1 << 32:
            raise LocalProtocolError("request_id must fit in 32 bits")
        if len(self.key) > MAX_KEY_LENGTH:
            raise LocalProtocolError(f"key longer than {MAX_KEY_LENGTH} bytes")
        if not 0 <= self.status < 1 << 16:
            raise LocalProtocolError("status must fit in 16 bits")
        if self.flags & ~_KNOWN_FLAGS:
            raise LocalProtocolError(f"unknown flags {self.flags:#x}")

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def message(self) -> str:
        """The error message of an error response."""
        return self.payload.decode("utf-8", "replace")


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameHeader:
    """What a frame's header says, before its key and payload are read: enough
    for an I/O layer to refuse the frame without reserving or reading more."""

    opcode: Opcode
    request_id: int
    flags: int
    payload_length: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkInfo:
    """What a node knows of a stored chunk (PUT and HEAD responses)."""

    size: int
    crc: int
    sha256: bytes

    def __post_init__(self) -> None:
        if len(self.sha256) != 32:
            raise LocalProtocolError("sha256 must be 32 bytes")

    def encode(self) -> bytes:
        return CHUNK_INFO.pack(self.size, self.crc, self.sha256)

    @classmethod
    def decode(cls, payload: bytes | bytearray) -> ChunkInfo:
        if len(payload) != CHUNK_INFO.size:
            raise RemoteProtocolError("malformed chunk info payload")
        size, crc, sha = CHUNK_INFO.unpack(payload)
        return cls(size=size, crc=crc, sha256=sha)


class ChecksumMismatch(RemoteProtocolError):
    """A whole frame arrived but its payload does not match its CRC32C.

    The frame has been consumed; the connection is still usable.
    """

    def __init__(self, frame: Frame) -> None:
        super().__init__("payload CRC32C mismatch", 400)
        self.frame = frame


def encode_range(offset: int, length: int) -> bytes:
    """The payload of a ranged GET (``length`` 0 reads to the end)."""
    if offset < 0 or length < 0:
        raise LocalProtocolError("range offset and length must be >= 0")
    return RANGE.pack(offset, length)


def decode_range(payload: bytes | bytearray) -> tuple[int, int] | None:
    """``(offset, length)`` of a GET request, or ``None`` for a whole read."""
    if not payload:
        return None
    if len(payload) != RANGE.size:
        raise RemoteProtocolError("GET payload must be empty or a 16-byte range")
    offset, length = RANGE.unpack(payload)
    return int(offset), int(length)


class FrameConnection:
    """Bytes in, frames out; frames in, bytes out. No I/O.

    Args:
        max_payload: the largest payload this side accepts; checked on the
            header, before the payload is buffered.
    """

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 < max_payload <= HARD_MAX_PAYLOAD:
            raise LocalProtocolError("max_payload out of range")
        self.max_payload = max_payload
        self._buf = bytearray()
        self._pos = 0
        self._header: tuple[int, int, int, int, int, int, int] | None = None
        self._key: bytes | None = None
        self._large: bytearray | None = None  # the payload being assembled in place
        self._fill = 0
        self._reserved = False  # the payload being received was admitted (reserve_payload)
        self._error: RemoteProtocolError | None = None
        self.their_eof = False

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed received bytes; ``b""`` means the peer closed."""
        if data:
            if self.their_eof:
                raise LocalProtocolError("received data after EOF")
            if self._error is not None:  # a poisoned connection buffers nothing more
                return
            view = memoryview(data)
            while self._large is not None and view and self._fill < self._payload_length:
                if self._fill == len(self._large):
                    self._grow()
                n = min(len(view), len(self._large) - self._fill)
                self._large[self._fill : self._fill + n] = view[:n]
                self._fill += n
                view = view[n:]
            self._buf += view
        else:
            self.their_eof = True

    def payload_window(self) -> memoryview | None:
        """The unfilled part of a large payload, for ``recv_into``; else ``None``.

        Large payloads (at least :data:`LARGE_PAYLOAD` bytes) are assembled in
        one buffer of their exact size; an I/O layer that receives straight
        into this window (then calls :meth:`payload_received`) saves every
        intermediate copy.
        """
        if self._large is None or self._fill == self._payload_length:
            return None
        if self._fill == len(self._large):
            self._grow()
        return memoryview(self._large)[self._fill :]

    @property
    def _payload_length(self) -> int:
        return 0 if self._header is None else self._header[5]

    def _grow(self) -> None:
        """Double the payload buffer (at most to the payload's length): memory
        follows the bytes received, never the length a header promised. A
        payload :meth:`reserve_payload` admitted grows fourfold, and takes its
        whole size once a quarter of it has arrived (no more copies)."""
        assert self._large is not None
        # Admitted, it may take four times what came (what a quarter allows);
        # else twice.
        size = max(LARGE_PAYLOAD, (4 if self._reserved else 2) * len(self._large))
        if self._reserved and self._fill * 4 >= self._payload_length:
            size = self._payload_length
        self._grow_to(min(self._payload_length, size))

    def _grow_to(self, size: int) -> None:
        assert self._large is not None
        old = self._large
        self._large = bytearray(size)
        self._large[: self._fill] = memoryview(old)[: self._fill]

    def reserve_payload(self) -> None:
        """Say the payload being received was admitted (its length is charged to
        a budget): its buffer then grows fourfold, not twofold, and once a
        quarter of it has arrived, to its whole size in one step (each growth
        copies what arrived and zero-fills the rest, so fewer is faster).
        Memory still follows the bytes that came: at most four times them
        (five for the moment a growth copies them)."""
        self._reserved = True

    def payload_received(self, n: int) -> None:
        """``n`` bytes were written into :meth:`payload_window`."""
        if self._large is None or not 0 <= n <= min(len(self._large), self._payload_length) - self._fill:
            raise LocalProtocolError("payload_received out of range")
        self._fill += n

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into frames."""
        return len(self._buf) - self._pos + self._fill

    @property
    def pending_payload(self) -> int:
        """Payload bytes still missing for the frame being received."""
        if self._header is None:
            return 0
        if self._large is not None:
            return self._payload_length - self._fill
        need = self._header[5] + (0 if self._key is not None else self._header[4])
        return max(0, need - (len(self._buf) - self._pos))

    @property
    def incoming_payload(self) -> int | None:
        """The payload length promised by the header of the frame being received,
        once that header is parsed (by :meth:`next_event`); ``None`` before."""
        return None if self._header is None else self._header[5]

    @property
    def incoming_header(self) -> FrameHeader | None:
        """The header of the frame being received, once parsed; ``None`` before."""
        if self._header is None:
            return None
        opcode, flags, _, request_id, _, payload_len, _ = self._header
        return FrameHeader(opcode=Opcode(opcode), request_id=request_id, flags=flags,
                           payload_length=payload_len)

    def next_event(self) -> Frame | NeedData:
        """The next whole frame, or :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the connection is
                poisoned; every later call raises the same error), or it
                closed in the middle of a frame.
            ChecksumMismatch: a frame's payload failed its CRC32C (the frame
                is consumed; the connection remains usable).
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except ChecksumMismatch:
            raise
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> Frame | NeedData:
        avail = len(self._buf) - self._pos
        if self._header is None:
            if avail < HEADER.size:
                return self._need_data()
            self._header = self._parse_header()
            avail -= HEADER.size
        opcode, flags, status, request_id, key_len, payload_len, crc = self._header
        if self._key is None:
            if avail < key_len:
                return self._need_data()
            self._key = bytes(self._buf[self._pos : self._pos + key_len])
            self._pos += key_len
            avail -= key_len
        payload: bytes | bytearray
        if self._large is None and payload_len >= LARGE_PAYLOAD and avail < payload_len:
            # Assemble in place from now on (no final copy), in a buffer that
            # grows with what arrives: never ``payload_len`` bytes up front.
            self._large = bytearray(memoryview(self._buf)[self._pos :])
            self._fill = avail
            self._pos = len(self._buf)
            self._compact()
        if self._large is not None:
            if self._fill < payload_len:
                return self._need_data()
            payload, self._large, self._fill = self._large, None, 0
            self._reserved = False
        else:
            if avail < payload_len:
                return self._need_data()
            view = memoryview(self._buf)
            payload = bytes(view[self._pos : self._pos + payload_len])
            view.release()
            self._pos += payload_len
        key, self._key, self._header = self._key, None, None
        self._compact()
        frame = Frame(
            opcode=Opcode(opcode),
            request_id=request_id,
            key=key,
            payload=payload,
            status=status,
            flags=flags,
            crc=crc,
        )
        if crc32c(payload) != crc:
            raise ChecksumMismatch(frame)
        return frame

    def _need_data(self) -> NeedData:
        if self.their_eof and (self.buffered or self._header is not None):
            raise RemoteProtocolError("connection closed in the middle of a frame")
        return NEED_DATA

    def _parse_header(self) -> tuple[int, int, int, int, int, int, int]:
        (magic, version, opcode, flags, status, request_id, key_len, payload_len, crc) = (
            HEADER.unpack_from(self._buf, self._pos)
        )
        if magic != MAGIC:
            raise RemoteProtocolError("bad magic: not a V-Stack frame")
        if version != VERSION:
            raise RemoteProtocolError(f"unsupported protocol version {version}", 505)
        if opcode not in Opcode._value2member_map_:
            raise RemoteProtocolError(f"unknown opcode {opcode}")
        if flags & ~_KNOWN_FLAGS:
            raise RemoteProtocolError(f"unknown flags {flags:#x}")
        if key_len > MAX_KEY_LENGTH:
            raise RemoteProtocolError(f"key longer than {MAX_KEY_LENGTH} bytes")
        if payload_len > self.max_payload:
            raise RemoteProtocolError(
                f"payload of {payload_len} bytes exceeds the limit of {self.max_payload}", 413
            )
        self._pos += HEADER.size
        return opcode, flags, status, request_id, key_len, payload_len, crc

    def _compact(self) -> None:
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0

    # -- sending -----------------------------------------------------------

    def send(self, frame: Frame) -> bytes:
        """The bytes of ``frame``: header, key, payload."""
        return self.send_header(frame, len(frame.payload), crc32c(frame.payload)) + frame.payload

    def send_header(self, frame: Frame, payload_length: int, crc: int) -> bytes:
        """Header and key only, for a payload the caller streams itself.

        ``frame.payload`` is ignored; ``payload_length`` bytes whose CRC32C is
        ``crc`` must follow on the wire.
        """
        if not 0 <= payload_length < 1 << 32:
            raise LocalProtocolError("payload_length must fit in 32 bits")
        header = HEADER.pack(
            MAGIC,
            VERSION,
            int(frame.opcode),
            frame.flags,
            frame.status,
            frame.request_id,
            len(frame.key),
            payload_length,
            crc & 0xFFFFFFFF,
        )
        return header + frame.key


def response(request: Frame, status: int, payload: bytes = b"") -> Frame:
    """The response frame to ``request`` with ``status``."""
    return Frame(
        opcode=request.opcode,
        request_id=request.request_id,
        key=request.key,
        payload=payload,
        status=status,
        flags=FLAG_RESPONSE,
    )


__all__ += ["response"]
