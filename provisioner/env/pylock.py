"""pylock.toml (PEP 751) beside provision.lock.json: every installed wheel with its URL and hashes.

provision does not write the format itself: uv does (`uv pip compile --format pylock.toml`), from the
exact versions the finished environment holds, through the same indexes and wheel folders that built
it. Rebuilding from it is `uv pip sync` (a venv) or `uv pip install -r` (a conda env, whose own pip
and setuptools a sync would remove); either checks every hash. pip before 25.x cannot read the format,
so for pip the lock becomes a hash-checking requirements file (`name==version --hash=sha256:...`,
`--require-hashes --no-deps`): pip then refuses any wheel whose bytes differ from the lock's.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from provisioner.errors import ProvisionError
from provisioner.fsio import sha256_file

PYLOCK_NAME = "pylock.toml"
COMPILE_TIMEOUT = 600

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    urls: tuple[str, ...]                 # every wheel (and sdist) the lock allows
    hashes: tuple[str, ...]               # "sha256:<hex>", in the same order


@dataclass(frozen=True)
class Pylock:
    path: Path
    packages: tuple[LockedPackage, ...]

    def hashes(self) -> dict[str, tuple[str, ...]]:
        """Normalized name -> its hashes: what two locks of the same environment share."""
        return {canonicalize_name(p.name): p.hashes for p in self.packages}

    def versions(self) -> dict[str, str]:
        return {p.name: p.version for p in self.packages}


def read(path: Path) -> Pylock:
    """Parse a pylock.toml; ProvisionError naming the file otherwise."""
    hint = "export the environment's lock again with `provision env export --output FILE`"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror or e}", hint=hint) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProvisionError(f"{path}: not a TOML file ({e})", hint=hint) from None
    if str(doc.get("lock-version", "")).split(".")[0] != "1":
        raise ProvisionError(f"{path}: not a PEP 751 lock (lock-version 1.x)", hint=hint)
    packages = []
    for entry in doc.get("packages") or []:
        files = [*(entry.get("wheels") or []), *([entry["sdist"]] if entry.get("sdist") else [])]
        urls: list[str] = []
        hashes: list[str] = []
        for f in files:
            where = f.get("url") or f.get("path")
            for algo, value in sorted((f.get("hashes") or {}).items()):
                urls.append(str(where))
                hashes.append(f"{algo}:{value}")
        if "name" not in entry or "version" not in entry:
            raise ProvisionError(f"{path}: a [[packages]] entry has no name or version", hint=hint)
        packages.append(LockedPackage(str(entry["name"]), str(entry["version"]), tuple(urls), tuple(hashes)))
    return Pylock(path, tuple(packages))


def hashed_requirements(lock: Pylock) -> str:
    """The lock as a pip requirements file in hash-checking mode (one line per package)."""
    lines = []
    for p in lock.packages:
        if not p.hashes:
            raise ProvisionError(f"{lock.path}: {p.name} {p.version} has no hashes",
                                 hint="a lock written by provision always has them: export it again")
        lines.append(f"{p.name}=={p.version} " + " ".join(f"--hash={h}" for h in dict.fromkeys(p.hashes)))
    return "\n".join(lines) + "\n"


def compile_argv(uv: Path, *, requirements: Path, output: Path, options: Sequence[str],
                 sources: Sequence[str]) -> list[str]:
    """uv's resolver writing `requirements` as PEP 751 to `output`; `options` say for which Python
    (`--python PY`, or `--python-version X.Y --python-platform P` for another machine) and how."""
    return [str(uv), "pip", "compile", str(requirements), "--format", "pylock.toml", "--no-header", "--quiet",
            *options, "--output-file", str(output), *sources]


def install_argv(*, uv: Path | None, python: Path, lock_path: Path, exact: bool,
                 requirements: Path | None = None) -> list[str]:
    """The command that installs a pylock.toml into the environment of `python`."""
    if uv is not None:
        verb = "sync" if exact else "install"
        return [str(uv), "pip", verb, "--python", str(python),
                *(["-r"] if verb == "install" else []), str(lock_path)]
    if requirements is None:
        raise ValueError("pip installs from the hash-checking requirements file")
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
            "--require-hashes", "-r", str(requirements)]


def reference(lock_dir: Path, entry: Mapping[str, Any] | None) -> tuple[Path, str] | None:
    """The pylock a provision lock names (resolved beside it) and its recorded sha256."""
    if not entry or not entry.get("file"):
        return None
    file = Path(str(entry["file"]))
    return (file if file.is_absolute() else lock_dir / file), str(entry.get("sha256") or "")


def check_reference(path: Path, sha256: str, lock_path: Path | None) -> None:
    """The pylock a lock names must be there, unchanged since the lock was written."""
    where = f"the lock {lock_path}" if lock_path else "the lock"
    if not path.is_file():
        raise ProvisionError(f"{where} names {path}, which does not exist",
                             hint=f"put {path.name} beside the lock (export both with "
                                  "`provision env export --output FILE`)")
    found = sha256_file(path)
    if sha256 and found != sha256:
        raise ProvisionError(f"{path} has changed since {where} was written "
                             f"(sha256 {found[:12]}..., the lock says {sha256[:12]}...)",
                             hint="export the lock again from the environment it describes")
