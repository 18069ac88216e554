"""V-Stack's domain core: storage engine, consensus roles, policies; no network I/O."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("vstack")  # one version, from packaging (setup.cfg)
except PackageNotFoundError:  # pragma: no cover - running from a tree never installed
    __version__ = "0+unknown"
