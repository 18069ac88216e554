"""The network emulator's decisions, without a socket: fault settings, token
buckets, delays and dice.

Theory of operation
-------------------
The emulator (:mod:`nodes.netem`) is a TCP proxy in front of each storage
node. Every chunk of bytes it forwards, in either direction, goes through
the same questions, answered here from values passed in (``now`` comes in
as an argument; randomness from a seeded :class:`Dice`):

* *when* may it leave? ``latency_ms`` plus a uniform jitter in
  ``[-jitter_ms, +jitter_ms]`` (never below zero), and never before the
  chunk read before it (:func:`due_time`: a delay queue keeps TCP's order);
* *how fast*? a :class:`TokenBucket` per connection and direction holds
  the direction to ``bandwidth_bps`` bytes per second (debt model: a chunk
  larger than the bucket is sent after the wait its size costs);
* does it *stall* first (``stall_rate``, for ``stall_ms``), or is the
  connection *reset* instead (``reset_rate``)?

TCP has no packet loss that a user-space proxy could inject: the kernels at
both ends retransmit and deliver every byte in order. What a lossy link
does to an application is delay (a retransmission timeout stalls the
stream) and, at worst, a broken connection; so "packet loss" is emulated by
stalls and resets.

:class:`FaultSettings` are validated once (422 with the problems, nothing
changed) and replaced whole at run time; proxies read them per chunk.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

from protocol.validate import ValidationError

from .auth import AuthPolicy

__all__ = [
    "MAX_BANDWIDTH_BPS",
    "MAX_DELAY_MS",
    "SCENARIOS",
    "Dice",
    "FaultSettings",
    "Mode",
    "NetemSettings",
    "ProxySpec",
    "Scenario",
    "TokenBucket",
    "due_time",
    "parse_proxy_spec",
]

#: Latency, jitter and stall lengths are at most this (one minute).
MAX_DELAY_MS: Final = 60_000.0
#: A bandwidth cap is at most this many bytes per second (0: no cap).
MAX_BANDWIDTH_BPS: Final = 10**11
#: A token bucket holds at most this many seconds of its rate (its burst).
BURST_SECONDS: Final = 0.02


class Mode(enum.Enum):
    NORMAL = "normal"
    REFUSE = "refuse"  # the node is down: new connections are closed at once
    BLACKHOLE = "blackhole"  # accepts and reads, never answers


@dataclass(frozen=True, kw_only=True, slots=True)
class FaultSettings:
    """What one proxy does to the traffic through it (all zero: nothing).

    ``bandwidth_bps`` is in *bytes* per second, per connection and direction;
    0 means no cap. Rates are probabilities per forwarded chunk.
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_bps: int = 0
    reset_rate: float = 0.0
    stall_rate: float = 0.0
    stall_ms: float = 2000.0
    mode: Mode = Mode.NORMAL

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError(problems[0]["msg"])

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "jitter_ms": self.jitter_ms,
                "bandwidth_bps": self.bandwidth_bps, "reset_rate": self.reset_rate,
                "stall_rate": self.stall_rate, "stall_ms": self.stall_ms,
                "mode": self.mode.value}

    def with_changes(self, data: Mapping[str, Any]) -> FaultSettings:
        """These settings with the fields ``data`` names changed (a partial update).

        Raises:
            ValidationError: an unknown field, a value of the wrong type or out
                of bounds (422, every problem listed); ``self`` is unchanged.
        """
        known = {f.name for f in fields(self)}
        problems = [_problem(name, "extra_forbidden", "unknown field", value)
                    for name, value in data.items() if name not in known]
        changes: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            converted = _convert(name, value)
            if converted is None:
                problems.append(_problem(name, "type_error", _TYPES[name], value))
            else:
                changes[name] = converted
        if not problems:
            problems = _problems(_replace_unchecked(self, changes))
        if problems:
            raise ValidationError(problems)
        return replace(self, **changes)


def _replace_unchecked(base: FaultSettings, changes: Mapping[str, Any]) -> FaultSettings:
    """``base`` with ``changes``, not validated (to collect every problem at once)."""
    obj = object.__new__(FaultSettings)
    for f in fields(base):
        object.__setattr__(obj, f.name, changes.get(f.name, getattr(base, f.name)))
    return obj


_TYPES: Final = {
    "latency_ms": "must be a number", "jitter_ms": "must be a number",
    "stall_ms": "must be a number", "reset_rate": "must be a number",
    "stall_rate": "must be a number", "bandwidth_bps": "must be an integer",
    "mode": "must be one of normal, refuse, blackhole",
}


def _convert(name: str, value: Any) -> Any:
    """``value`` as field ``name``'s type, or ``None`` if it is not one."""
    if name == "mode":
        return next((m for m in Mode if m.value == value), None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if name == "bandwidth_bps":
        return value if isinstance(value, int) else None
    return float(value)


def _problem(name: str, kind: str, msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", name], "msg": f"{name} {msg}", "input": value}


def _problems(s: FaultSettings) -> list[dict[str, Any]]:
    """Every bound ``s`` breaks (an empty list: valid)."""
    out = []
    for name in ("latency_ms", "jitter_ms", "stall_ms"):
        value = getattr(s, name)
        if not (math.isfinite(value) and 0 <= value <= MAX_DELAY_MS):
            out.append(_problem(name, "range", f"must be between 0 and {MAX_DELAY_MS:g}", value))
    for name in ("reset_rate", "stall_rate"):
        value = getattr(s, name)
        if not (math.isfinite(value) and 0 <= value <= 1):
            out.append(_problem(name, "range", "must be a probability, 0 to 1", value))
    if not 0 <= s.bandwidth_bps <= MAX_BANDWIDTH_BPS:
        out.append(_problem("bandwidth_bps", "range",
                            f"must be 0 (no cap) to {MAX_BANDWIDTH_BPS}", s.bandwidth_bps))
    if not isinstance(s.mode, Mode):
        out.append(_problem("mode", "enum", _TYPES["mode"], s.mode))
    return out


def due_time(now: float, delay: float, previous_due: float) -> float:
    """When a chunk read at ``now`` and delayed ``delay`` seconds may leave:
    never before the chunk read before it (due at ``previous_due``)."""
    return max(now + delay, previous_due)


class TokenBucket:
    """A byte-rate cap: :meth:`take` says how long to wait before sending.

    Tokens (bytes) accrue at ``rate`` per second up to ``burst``; a send
    takes its size, going into debt if it must; the wait is the time the debt
    takes to repay. A rate of 0 means no cap. Time is passed in.
    """

    def __init__(self, rate: int, now: float) -> None:
        self.rate = 0
        self.burst = 0.0
        self.tokens = 0.0
        self.stamp = now
        self.set_rate(rate, now)

    def set_rate(self, rate: int, now: float) -> None:
        """Change the rate (from the next :meth:`take`); a debt is kept, capped to a burst."""
        if rate == self.rate:
            return
        self._refill(now)
        self.rate = rate
        self.burst = max(1.0, rate * BURST_SECONDS)
        self.tokens = max(min(self.tokens, self.burst), -self.burst)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, n: int, now: float) -> float:
        """Spend ``n`` bytes at ``now``; the seconds to wait before they may go."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Dice:
    """The emulator's randomness, seeded, one per connection and direction, so a
    run is repeatable given the seed and the order of connections."""

    def __init__(self, seed: str | int) -> None:
        self._rng = random.Random(str(seed))

    def chance(self, rate: float) -> bool:
        """True with probability ``rate`` (never for 0, always for 1)."""
        return rate > 0 and (rate >= 1 or self._rng.random() < rate)

    def delay(self, s: FaultSettings) -> float:
        """One chunk's delay in seconds: latency plus jitter, within the bounds, never negative."""
        jitter = self._rng.uniform(-s.jitter_ms, s.jitter_ms) if s.jitter_ms > 0 else 0.0
        return max(0.0, s.latency_ms + jitter) / 1000.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ProxySpec:
    """One proxy: listen on ``listen_port``, forward to ``host:port``."""

    listen_port: int
    host: str
    port: int


def parse_proxy_spec(text: str) -> ProxySpec:
    """``LISTEN_PORT=HOST:PORT`` (``[::1]:PORT`` for IPv6), as ``--proxy`` takes it.

    Raises:
        ValueError: not of that shape, or a port out of range.
    """
    listen, sep, target = text.strip().partition("=")
    host, colon, port = target.rpartition(":")
    host = host.strip("[]")
    if not (sep and colon and host and listen.isdigit() and port.isdigit()):
        raise ValueError(f"proxy {text!r} is not LISTEN_PORT=HOST:PORT")
    spec = ProxySpec(listen_port=int(listen), host=host, port=int(port))
    if spec.listen_port > 65535 or not 0 < spec.port <= 65535:
        raise ValueError(f"proxy {text!r}: a port is out of range")
    return spec


@dataclass(frozen=True, kw_only=True)
class NetemSettings:
    """``vstack-node netem``: the proxies, the control port and their bounds."""

    proxies: tuple[ProxySpec, ...]
    control_port: int = 8089
    host: str = "127.0.0.1"
    seed: int = 0
    #: Connections each proxy carries at once; one more is closed at once.
    max_connections: int = 256
    #: One read, and one queued chunk, is at most this many bytes.
    chunk_bytes: int = 64 * 1024
    #: Chunks queued per connection and direction (waiting out their delay).
    queue_chunks: int = 64
    #: How long connecting to the node may take before the client is reset.
    connect_timeout: float = 10.0
    auth: AuthPolicy = field(default_factory=AuthPolicy)

    def __post_init__(self) -> None:
        if not self.proxies:
            raise ValueError("give at least one --proxy LISTEN_PORT=HOST:PORT")
        nonzero = [p.listen_port for p in self.proxies if p.listen_port]
        if len(set(nonzero)) != len(nonzero):
            raise ValueError("two proxies listen on the same port")
        if self.max_connections < 1 or self.chunk_bytes < 1024 or self.queue_chunks < 1:
            raise ValueError("bounds must be positive (chunk_bytes at least 1024)")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A preset of the usage guide: settings for every proxy, and for the first."""

    name: str
    every: FaultSettings
    first: FaultSettings | None = None  # the first proxy's, if it differs (a node down)

    def for_proxy(self, index: int) -> FaultSettings:
        return self.first if index == 0 and self.first is not None else self.every


#: The usage guide's "Network Emulation" scenarios, in the order it lists them.
SCENARIOS: Final = (
    Scenario(name="normal", every=FaultSettings()),
    Scenario(name="high latency", every=FaultSettings(latency_ms=300, jitter_ms=50)),
    Scenario(name="low bandwidth", every=FaultSettings(bandwidth_bps=256 * 1024)),
    Scenario(name="packet loss", every=FaultSettings(latency_ms=20, stall_rate=0.05,
                                                     stall_ms=1000, reset_rate=0.01)),
    Scenario(name="node failure", every=FaultSettings(),
             first=FaultSettings(mode=Mode.REFUSE)),
    Scenario(name="recovery", every=FaultSettings()),
)

