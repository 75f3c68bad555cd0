"""The env-probe cache: a finished probe's report, reused while nothing that can change its answer has changed.

The probe imports torch and bitsandbytes in the environment's own Python: seconds, every time. Its
answer depends on the environment (the interpreter, what is installed, a few variables torch and
bitsandbytes read) and on the machine (the driver, the GPUs, the /usr/local/cuda link), so those
are the key, in two parts:

    env      read before anything runs, from the filesystem only (no interpreter is started):
             the interpreter file, the site-packages listing (every entry with its mtime; the
             `*.dist-info` names give the distributions and versions), pyvenv.cfg, the variables,
             and the probe scripts' own bytes
    machine  what NVML and the link reader already gathered for the other checks

A lookup compares the env part at once, so a changed environment starts its probe before the
machine is read; the machine part is compared once it is known. Only a probe that found nothing
wrong is kept: after a failure the fix may be something no key can see (a reboot, a freed GPU),
so a failing environment is probed every time. One JSON file per interpreter, under
$XDG_CACHE_HOME/provision/env-probe/; deleting it is always safe.

What the key does not see: a file changed deep inside an installed package without any install
tool (`rm torch/lib/libtorch_cpu.so`). `verify --fresh` probes regardless.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import paths

if TYPE_CHECKING:
    from provisioner.cuda.link import LinkState
    from provisioner.env.target import EnvTarget
    from provisioner.system.gpu import DriverInfo

CACHE_VERSION = 1
FOLDER = "env-probe"
SCRIPTS = Path(__file__).parent.parent / "scripts"
#: The scripts whose code decides the probe's answer (probe_env.py and the sibling it imports).
PROBE_FILES = ("probe_env.py", "_bnb_import.py")
#: Variables the probe reports or that change what torch, bitsandbytes or the interpreter load.
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "BNB_CUDA_VERSION", "LD_LIBRARY_PATH", "LD_PRELOAD",
            "CUDA_HOME", "CUDA_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONSAFEPATH")
#: Words for the key parts, as a re-probe explains itself ("distributions changed").
PART_NAMES = {"interpreter": "the interpreter", "distributions": "the installed distributions",
              "site": "the site-packages contents", "pyvenv": "pyvenv.cfg",
              "environ": "the environment variables", "probe": "the probe script",
              "driver": "the driver", "gpus": "the GPUs", "link": "the /usr/local/cuda link"}
_DIST_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class Entry:
    """One cached probe: the key it was taken under, when, and the report itself."""

    env: Mapping[str, Any]
    machine: Mapping[str, Any]
    probed_at: str
    probe: Mapping[str, Any]
    path: Path


# --------------------------------------------------------------------------- the key

def env_part(target: EnvTarget, environ: Mapping[str, str]) -> dict[str, Any]:
    """The environment's side of the key: filesystem reads only (about a hundred stat calls)."""
    dists: list[str] = []
    site = hashlib.sha256()
    for folder in site_dirs(target, environ):
        site.update(f"{folder}\n".encode())
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name == "__pycache__":
                continue      # the probe's own imports write there
            if entry.name.endswith(_DIST_SUFFIXES):
                dists.append(entry.name.rsplit(".", 1)[0])
            try:
                # a reinstall of the same version is a new folder; a link's own time, not its target's
                mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            except OSError:
                mtime = -1
            site.update(f"{entry.name}\t{mtime}\n".encode())
    pyvenv = target.prefix / "pyvenv.cfg"
    return {
        "interpreter": _file_id(target.python),
        "distributions": dists,
        "site": site.hexdigest()[:32],
        "pyvenv": _read(pyvenv),
        "environ": {k: environ[k] for k in ENV_VARS if k in environ},
        "probe": _probe_digest(),
    }


def machine_part(info: DriverInfo | None, link: LinkState | None) -> dict[str, Any]:
    """The machine's side of the key, from facts already gathered (NVML, the link)."""
    driver = gpus = None
    if info is not None:
        driver = {"status": info.status, "version": str(info.driver_version) if info.driver_version else None,
                  "cuda": info.cuda.short if info.cuda else None}
        gpus = [[g.index, g.name, g.uuid, g.memory_total, list(g.cc) if g.cc else None] for g in info.gpus]
    return {"driver": driver, "gpus": gpus,
            "link": None if link is None else {"state": link.state, "raw_target": link.raw_target,
                                               "target": link.target_system}}


def changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The key parts that differ, in words."""
    keys = [k for k in PART_NAMES if k in old or k in new]
    keys += sorted(k for k in set(old) | set(new) if k not in PART_NAMES)
    return [PART_NAMES.get(k, k) for k in keys if old.get(k) != new.get(k)]


def site_dirs(target: EnvTarget, environ: Mapping[str, str]) -> list[Path]:
    """Where the environment's Python finds distributions: its own site-packages, the base
    interpreter's when pyvenv.cfg includes them, and the user site folder."""
    found: list[Path] = []
    prefixes = [target.prefix]
    cfg = _pyvenv(target.prefix / "pyvenv.cfg")
    if cfg.get("include-system-site-packages", "false").lower() == "true" and cfg.get("home"):
        prefixes.append(Path(cfg["home"]).parent)
    for prefix in prefixes:
        for pattern in ("lib/python3*/site-packages", "lib64/python3*/site-packages"):
            found.extend(sorted(prefix.glob(pattern)))
    home = environ.get("HOME")
    if home:
        found.extend(sorted(Path(home).glob(".local/lib/python3*/site-packages")))
    unique: list[Path] = []
    seen: set[str] = set()
    for folder in found:
        real = os.path.realpath(folder)       # lib64 is often a link to lib
        if real not in seen:
            seen.add(real)
            unique.append(folder)
    return unique


# --------------------------------------------------------------------------- the file

def path_for(target: EnvTarget, environ: Mapping[str, str]) -> Path:
    name = hashlib.sha256(str(target.python).encode()).hexdigest()[:24]
    return paths.cache_dir(environ) / FOLDER / f"{name}.json"


def load(target: EnvTarget, environ: Mapping[str, str]) -> Entry | None:
    """The cached probe for this interpreter, or None (none, unreadable, another format)."""
    path = path_for(target, environ)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION
            or doc.get("python") != str(target.python)):
        return None
    env, machine, probe = doc.get("env"), doc.get("machine"), doc.get("probe")
    if not (isinstance(env, dict) and isinstance(machine, dict) and isinstance(probe, dict)):
        return None
    return Entry(env, machine, str(doc.get("probed_at") or ""), probe, path)


def store(target: EnvTarget, environ: Mapping[str, str], machine: Mapping[str, Any],
          probe: Mapping[str, Any]) -> Entry | None:
    """Keep `probe` under the key as it is now (read after the probe ran: its imports may have
    written into package folders). None when the cache folder cannot be written: a cache only."""
    from provisioner import fsio

    entry = Entry(env_part(target, environ), machine, now(), probe, path_for(target, environ))
    doc = {"version": CACHE_VERSION, "python": str(target.python), "probed_at": entry.probed_at,
           "env": entry.env, "machine": entry.machine, "probe": entry.probe}
    try:
        fsio.atomic_write(entry.path, json.dumps(doc), mode=0o600)
    except OSError:
        return None
    return entry


def cacheable(probe: Mapping[str, Any]) -> bool:
    """Whether a report may be reused: torch imported and worked, bitsandbytes (when installed) too."""
    torch = probe.get("torch")
    if not isinstance(torch, Mapping) or not torch.get("imported"):
        return False
    if any(torch.get(k) for k in ("error", "cuda_error", "kernel_error", "cudnn_error", "arch_list_error")):
        return False
    if torch.get("kernel_ok") is False or any(d.get("error") for d in torch.get("devices") or ()):
        return False
    if (probe.get("packages") or {}).get("bitsandbytes"):
        bnb = probe.get("bitsandbytes")
        if not isinstance(bnb, Mapping) or not bnb.get("imported") or bnb.get("native_error"):
            return False
        if not (bnb.get("matmul") or {}).get("ok"):
            return False
    return True


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- helpers

def _file_id(path: Path) -> list[Any]:
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return [real, None, None]
    return [real, st.st_size, st.st_mtime_ns]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _pyvenv(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (_read(path) or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


_digest: list[str] = []


def _probe_digest(files: Sequence[str] = PROBE_FILES) -> str:
    if not _digest:
        h = hashlib.sha256()
        for name in files:
            h.update(name.encode() + b"\0" + (SCRIPTS / name).read_bytes())
        _digest.append(h.hexdigest()[:16])
    return _digest[0]
