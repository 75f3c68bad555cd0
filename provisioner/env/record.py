"""The record provision keeps inside each environment it builds, the registry of them, and their status."""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner import paths
from provisioner.env import lock as lockmod
from provisioner.errors import UsageError
from provisioner.fsio import locked

#: The record provision keeps inside every environment it builds; no record, not ours.
RECORD_NAME = "provision-env.json"
RECORD_VERSION = 1
DEFAULT_NAME = "llm"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def expand_path(path: str | os.PathLike[str], environ: Mapping[str, str]) -> Path:
    text = os.fspath(path)
    if text.startswith("~"):
        text = environ.get("HOME", str(Path.home())) + text[1:]
    return Path(os.path.abspath(text))


def default_prefix(name: str, environ: Mapping[str, str]) -> Path:
    """$XDG_DATA_HOME/provision/envs/NAME: where a venv called NAME lives."""
    return paths.data_dir(environ) / "envs" / name


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UsageError(f"'{name}' is not an environment name",
                         hint="use letters, digits, '.', '_' and '-', or pass --prefix PATH")
    return name


# --- the record inside an environment, and the registry of environments -----------------------


def record_path(prefix: Path) -> Path:
    return prefix / RECORD_NAME


def read_record(prefix: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(record_path(prefix).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_record(prefix: Path, doc: Mapping[str, Any]) -> None:
    lockmod.write_json(record_path(prefix), dict(doc))


def registry_path(environ: Mapping[str, str]) -> Path:
    return paths.data_dir(environ) / "envs.json"


def read_registry(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """prefix -> {name, backend, profile, created} for every environment provision started to build."""
    try:
        doc = json.loads(registry_path(environ).read_text())
        envs = doc.get("envs", {})
        return {str(k): dict(v) for k, v in envs.items()} if isinstance(envs, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def update_registry(environ: Mapping[str, str], prefix: Path,
                     entry: Mapping[str, Any] | None) -> None:
    with locked(paths.data_dir(environ) / "envs.lock"):
        envs = read_registry(environ)
        if entry is None:
            envs.pop(str(prefix), None)
        else:
            envs[str(prefix)] = {**envs.get(str(prefix), {}), **entry}
        lockmod.write_json(registry_path(environ), {"version": 1, "envs": envs})


def build_lock_path(prefix: Path, environ: Mapping[str, str]) -> Path:
    key = hashlib.sha256(str(prefix).encode()).hexdigest()[:16]
    return paths.data_dir(environ) / "locks" / f"{key}.lock"


def is_building_now(prefix: Path, environ: Mapping[str, str]) -> bool:
    """Whether another process holds the build lock of prefix (a live `env create`)."""
    with locked(build_lock_path(prefix, environ), blocking=False) as got:
        return not got


def env_status(prefix: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """Cheap re-check: "complete", "building" (half-built or in progress), "broken" (its python is
    gone), or None when provision did not build anything at prefix."""
    record = read_record(prefix)
    if record is None:
        if environ is not None and str(prefix) in read_registry(environ) and prefix.exists():
            return "building"             # killed before the record could be written
        return None
    status = str(record.get("status") or "building")
    if status == "complete" and not (prefix / str(record.get("python") or "bin/python")).exists():
        return "broken"
    return status


@dataclass(frozen=True)
class EnvInfo:
    prefix: Path
    name: str
    backend: str | None
    profile: str | None
    torch: str | None                # the installed torch (2.13.0+cpu), else the pin
    status: str                      # complete | building | in progress | broken | missing

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "prefix": str(self.prefix), "backend": self.backend,
                "profile": self.profile, "torch": self.torch, "status": self.status}


def list_envs(environ: Mapping[str, str]) -> list[EnvInfo]:
    """Every environment provision created: the registry, plus records under the default envs dir."""
    prefixes = {Path(p): entry for p, entry in read_registry(environ).items()}
    envs_dir = paths.data_dir(environ) / "envs"
    if envs_dir.is_dir():
        for child in sorted(envs_dir.iterdir()):
            if child not in prefixes and read_record(child) is not None:
                prefixes[child] = {}
    out = []
    for prefix, entry in sorted(prefixes.items(), key=lambda kv: str(kv[0])):
        record = read_record(prefix) or {}
        st = env_status(prefix, environ) if prefix.exists() else "missing"
        if st == "building" and is_building_now(prefix, environ):
            st = "in progress"
        torch = record.get("torch_installed") or record.get("torch")
        name = record.get("conda_name") or record.get("name") or entry.get("name") or prefix.name
        out.append(EnvInfo(prefix, str(name), record.get("backend") or entry.get("backend"),
                           record.get("profile") or entry.get("profile"),
                           str(torch) if torch else None, st or "missing"))
    return out


def resolve_env(target: str | None, environ: Mapping[str, str]) -> Path:
    """NAME or PATH of an environment provision created -> its prefix (default: DEFAULT_NAME)."""
    target = target or DEFAULT_NAME
    if os.sep in target or target.startswith((".", "~")):
        return expand_path(target, environ)
    for info in list_envs(environ):
        if info.name == target:
            return info.prefix
    return default_prefix(target, environ)
