"""Where the native stack keeps its downloads (shared cache) and its per-profile state."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout this package lives in (deploy/local/src/emage_devstack -> repo)."""
    return Path(__file__).resolve().parents[4]


def cache_dir() -> Path:
    """Downloads reused across checkouts and runs: jars, the Keycloak distribution.

    Outside the work tree so that a fresh clone (CI) on a machine that already ran once is fast, and
    overridable with ``EMAGE_CACHE`` for machines that keep caches elsewhere.
    """
    base = os.environ.get("EMAGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "emage"
    )
    path = Path(base).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir(profile: str) -> Path:
    """Data, logs and configuration of one profile's servers, inside the git-ignored ``.local/``."""
    path = repo_root() / ".local" / profile
    path.mkdir(parents=True, exist_ok=True)
    return path
