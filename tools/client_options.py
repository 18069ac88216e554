"""The smart client's options, shared by ``vstack-node client`` and ``vstack-play``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from vstack.auth import AuthPolicy
from vstack.settings import ClientSettings

__all__ = ["client_options", "client_settings"]

F = TypeVar("F", bound=Callable[..., Any])


def client_options(fn: F) -> F:
    """The smart client's tuning, shared by ``vstack-node client`` and ``vstack-play``."""
    for option in reversed([
        click.option("--monitoring-interval", envvar=["MONITORING_INTERVAL", "PING_INTERVAL"],
                     default=3.0, type=click.FloatRange(0.1, 3600), help="Seconds between two "
                     "probes of each node [env MONITORING_INTERVAL, or PING_INTERVAL]."),
        click.option("--target-buffer", envvar="TARGET_BUFFER_SEC", default=30.0,
                     type=click.FloatRange(0.1), help="Seconds of video to hold ahead "
                     "[env TARGET_BUFFER_SEC]."),
        click.option("--low-water-mark", envvar="LOW_WATER_MARK_SEC", default=15.0,
                     type=click.FloatRange(0.1), help="Refill the buffer below this many "
                     "seconds [env LOW_WATER_MARK_SEC]."),
        click.option("--max-concurrent-downloads", envvar="MAX_CONCURRENT_DOWNLOADS", default=4,
                     type=click.IntRange(1, 64), help="Downloads at once "
                     "[env MAX_CONCURRENT_DOWNLOADS]."),
        click.option("--download-timeout", envvar="DOWNLOAD_TIMEOUT", default=10.0,
                     type=click.FloatRange(1.0, 600), help="The longest one download may take "
                     "[env DOWNLOAD_TIMEOUT]."),
        click.option("--transport", envvar="CLIENT_TRANSPORT", default="auto",
                     type=click.Choice(["auto", "http"]), help="auto: the binary protocol where "
                     "a node offers it; http: HTTP only, e.g. through the network emulator's "
                     "proxies [env CLIENT_TRANSPORT]."),
    ]):
        fn = option(fn)
    return fn


def client_settings(metadata_urls: tuple[str, ...], port: int, host: str, auth: AuthPolicy, *,
                     monitoring_interval: float, target_buffer: float, low_water_mark: float,
                     max_concurrent_downloads: int, download_timeout: float,
                     transport: str) -> ClientSettings:
    try:
        return ClientSettings(
            metadata_urls=metadata_urls, port=port, host=host, auth=auth,
            monitoring_interval=monitoring_interval, target_buffer_sec=target_buffer,
            low_water_mark_sec=low_water_mark, max_concurrent_downloads=max_concurrent_downloads,
            download_timeout=download_timeout, transport=transport)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
