"""Which Python environment a command works on: the current one, a venv/conda prefix, or a conda env name."""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from provisioner import proc
from provisioner.errors import CommandError, ProvisionError

#: Conda front-ends asked for `env list --json`, in order (CONDA_EXE / MAMBA_EXE first when set).
CONDA_FRONTENDS = ("conda", "mamba", "micromamba")
#: Where installers put a conda root when nothing on PATH can tell us (relative to HOME).
CONDA_ROOTS = ("miniforge3", "miniconda3", "anaconda3", "mambaforge", "micromamba", ".conda")


@dataclass(frozen=True)
class EnvTarget:
    kind: str          # "current" | "venv" | "conda"
    prefix: Path
    python: Path

    @property
    def name(self) -> str:
        return self.prefix.name

    def describe(self) -> str:
        return {"current": "the current interpreter", "venv": "venv",
                "conda": "conda env"}[self.kind] + f" {self.prefix}"


def python_of(prefix: Path) -> Path:
    return prefix / "bin" / "python"


def kind_of(prefix: Path) -> str:
    """'conda' when the prefix has conda-meta/ (conda, mamba, micromamba, pixi), else 'venv'."""
    return "conda" if (prefix / "conda-meta").is_dir() else "venv"


def resolve(target: str | None, environ: Mapping[str, str]) -> EnvTarget:
    """Turn `--env NAME|PATH` (or nothing) into an environment with a Python; raise ProvisionError if none.

    Nothing: the activated environment ($VIRTUAL_ENV, then $CONDA_PREFIX), else the interpreter
    running provision. A path: a prefix holding bin/python (or that bin/python itself). A name: a
    conda environment.
    """
    if target is None or not target.strip():
        return _current(environ)
    target = target.strip()
    if _looks_like_path(target):
        return _from_prefix(_expand(target, environ), given=target)
    found = find_conda_env(target, environ)
    if found is not None:
        return _from_prefix(found, given=target)
    raise ProvisionError(
        f"no environment named '{target}' (not a directory, and no conda env of that name)",
        hint=f"pass the prefix path (--env /path/to/env), or create it: "
             f"provision env create --name {target} --profile <profile>",
    )


def _current(environ: Mapping[str, str]) -> EnvTarget:
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        value = environ.get(var, "")
        if value and python_of(Path(value)).exists():
            prefix = Path(value)
            return EnvTarget(kind_of(prefix), prefix, python_of(prefix))
    return EnvTarget("current", Path(sys.prefix), Path(sys.executable))


def _looks_like_path(target: str) -> bool:
    return os.sep in target or target.startswith((".", "~")) or Path(target).is_dir()


def _expand(target: str, environ: Mapping[str, str]) -> Path:
    if target.startswith("~"):
        home = environ.get("HOME") or str(Path.home())
        target = home + target[1:]
    return Path(os.path.abspath(target))


def _from_prefix(prefix: Path, *, given: str) -> EnvTarget:
    if prefix.is_file() and prefix.name.startswith("python") and prefix.parent.name == "bin":
        # `--env ~/envs/llm/bin/python` names the same environment as its prefix
        prefix = prefix.parent.parent
    if not prefix.exists():
        raise ProvisionError(f"environment '{given}' does not exist ({prefix})",
                             hint="create it: provision env create --prefix "
                                  f"{prefix} --profile <profile>")
    python = python_of(prefix)
    if not python.exists():
        # A venv whose base interpreter was removed leaves a dangling bin/python link.
        what = "a dangling bin/python link" if python.is_symlink() else "no bin/python"
        raise ProvisionError(f"{prefix} is not a usable Python environment ({what})", hint=_rebuild_hint(prefix))
    return EnvTarget(kind_of(prefix), prefix, python)


def _rebuild_hint(prefix: Path) -> str:
    """A command that `env create` will then accept for this folder (it never replaces a foreign one)."""
    if (prefix / "provision-env.json").exists():
        return f"rebuild it: provision env create --prefix {prefix} --force"
    if prefix.is_dir() and not any(prefix.iterdir()):
        return f"build one there: provision env create --prefix {prefix}"
    return (f"{prefix} was not built by provision, which never replaces a folder it did not make: build one "
            f"elsewhere (provision env create --prefix {prefix.parent / 'llm'}), or move {prefix} away first")


def find_conda_env(name: str, environ: Mapping[str, str]) -> Path | None:
    """The prefix of conda environment `name`, from the first conda front-end that answers, else
    from the usual envs/ directories; None when there is none."""
    for prefix in _listed_conda_envs(environ):
        if prefix.name == name and python_of(prefix).exists():
            return prefix
        # `base` is the root prefix, whose directory has the installer's name
        if name == "base" and (prefix / "envs").is_dir() and (prefix / "conda-meta").is_dir():
            return prefix
    for envs_dir in _envs_dirs(environ):
        candidate = envs_dir / name
        if python_of(candidate).exists():
            return candidate
    return None


def _frontends(environ: Mapping[str, str]) -> Iterator[str]:
    seen = set()
    path = environ.get("PATH", "")
    for exe in (environ.get("CONDA_EXE"), environ.get("MAMBA_EXE"),
                *(shutil.which(name, path=path) for name in CONDA_FRONTENDS)):
        if exe and exe not in seen and os.access(exe, os.X_OK):
            seen.add(exe)
            yield exe


def _listed_conda_envs(environ: Mapping[str, str]) -> Iterator[Path]:
    for exe in _frontends(environ):
        try:
            done = proc.run([exe, "env", "list", "--json"], env=environ, timeout=30)
            envs = json.loads(done.stdout).get("envs", [])
        except (CommandError, ValueError, AttributeError):
            continue
        for entry in envs:
            if isinstance(entry, str):
                yield Path(entry)
        return


def _envs_dirs(environ: Mapping[str, str]) -> Iterator[Path]:
    conda_prefix = environ.get("CONDA_PREFIX", "")
    if conda_prefix:
        p = Path(conda_prefix)
        yield p / "envs"                 # the base env is active
        if p.parent.name == "envs":
            yield p.parent               # another env is active: its siblings
    for var in ("MAMBA_ROOT_PREFIX", "CONDA_ROOT"):
        if environ.get(var):
            yield Path(environ[var]) / "envs"
    for raw in environ.get("CONDA_ENVS_PATH", "").split(os.pathsep):
        if raw:
            yield Path(raw)
    home = Path(environ.get("HOME") or str(Path.home()))
    yield home / ".conda" / "envs"
    for root in CONDA_ROOTS:
        yield home / root / "envs"
