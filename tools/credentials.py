"""Secrets for the command-line tools: from the environment, else the data directory.

``vstack-node all`` bound beyond loopback with no secrets configured makes
them itself, once, under ``DATA_DIR/secrets/`` (``cluster_secret`` and
``api_token``, mode 0600, written with fsync and an atomic rename); every
CLI run with the same ``DATA_DIR`` finds them there, so a cluster and its
tools agree without anyone copying a secret by hand.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from vstack import fsio
from vstack.auth import AuthPolicy

__all__ = ["DEFAULT_DATA_DIR", "api_bearer", "ensure_secret_files", "read_secret", "resolve_policy"]

DEFAULT_DATA_DIR = "./vstack-data"
_NAMES = {"CLUSTER_SECRET": "cluster_secret", "API_TOKEN": "api_token"}


def _secret_path(data_dir: Path, env_name: str) -> Path:
    return data_dir / "secrets" / _NAMES[env_name]


def read_secret(env_name: str, data_dir: Path | None = None) -> bytes | None:
    """``$env_name``, else the file ``vstack-node all`` wrote under ``data_dir``."""
    value = os.environ.get(env_name, "").strip()
    if value:
        return value.encode()
    if data_dir is not None:
        try:
            return _secret_path(data_dir, env_name).read_bytes().strip() or None
        except OSError:
            return None
    return None


def ensure_secret_files(data_dir: Path) -> tuple[bytes, bytes]:
    """The cluster secret and API token under ``data_dir``, made (durably) if missing."""
    folder = data_dir / "secrets"
    fsio.makedirs(folder)
    folder.chmod(0o700)
    found = []
    for env_name in ("CLUSTER_SECRET", "API_TOKEN"):
        path = _secret_path(data_dir, env_name)
        if not path.exists():
            fsio.write_atomic(path, secrets.token_urlsafe(32).encode(), mode=0o600)
        found.append(path.read_bytes().strip())
    return found[0], found[1]


def resolve_policy(*, cluster_secret: str | None, api_token: str | None, public_reads: bool,
                   insecure: bool) -> AuthPolicy:
    """The :class:`AuthPolicy` a service runs with (``ValueError`` for a bad secret)."""
    return AuthPolicy(cluster_secret=cluster_secret.encode() if cluster_secret else None,
                      api_token=api_token.encode() if api_token else None,
                      public_reads=public_reads, insecure=insecure)


def api_bearer(data_dir: Path | None = None) -> list[tuple[str, str]]:
    """The ``Authorization`` header a user's CLI sends: ``API_TOKEN``, else the
    cluster secret, from the environment or ``data_dir``; none if neither is set."""
    token = read_secret("API_TOKEN", data_dir) or read_secret("CLUSTER_SECRET", data_dir)
    return [("Authorization", "Bearer " + token.decode("latin-1"))] if token else []
