"""XDG locations for provision's own config, data, state and cache, taken from an environ mapping."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

APP = "provision"


def _base(environ: Mapping[str, str], var: str, default: str) -> Path:
    value = environ.get(var, "")
    if value and Path(value).is_absolute():
        return Path(value)
    return Path(environ.get("HOME", str(Path.home()))) / default


def config_dir(environ: Mapping[str, str]) -> Path:
    return _base(environ, "XDG_CONFIG_HOME", ".config") / APP


def data_dir(environ: Mapping[str, str]) -> Path:
    return _base(environ, "XDG_DATA_HOME", ".local/share") / APP


def state_dir(environ: Mapping[str, str]) -> Path:
    return _base(environ, "XDG_STATE_HOME", ".local/state") / APP


def cache_dir(environ: Mapping[str, str]) -> Path:
    """$XDG_CACHE_HOME/provision: results that may be deleted at any time (the env-probe cache)."""
    return _base(environ, "XDG_CACHE_HOME", ".cache") / APP


def under_root(root: Path, system_path: str | Path) -> Path:
    """`/usr/local/cuda` re-anchored at `root` (a `--root` of `/` leaves it unchanged)."""
    return root / str(system_path).lstrip("/")
