"""What the emulator's tasks share: its settings and its proxies by bound port."""

from __future__ import annotations

from dataclasses import dataclass, field

from vstack.netem import NetemSettings

from .proxy import Proxy

__all__ = ["Netem"]


@dataclass(eq=False)
class Netem:
    """A running emulator: ``proxies`` keyed by the port each listens on."""

    settings: NetemSettings
    proxies: dict[int, Proxy] = field(default_factory=dict)
    control_port: int = 0
