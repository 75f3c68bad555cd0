"""How an environment is made and installed into: conda, mamba, micromamba or venv; pip or uv."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Protocol

from provisioner import proc
from provisioner.errors import CommandError, ProvisionError, UsageError

BACKENDS = ("auto", "conda", "mamba", "micromamba", "venv")
CONDA_BACKENDS = ("conda", "mamba", "micromamba")
INSTALLERS = ("auto", "pip", "uv")


#: micromamba ships with no channel configured; conda and mamba use the user's .condarc.
MICROMAMBA_CHANNEL = "conda-forge"

CREATE_TIMEOUT = 1800
INSTALL_TIMEOUT = 3600
QUERY_TIMEOUT = 60

# Variables that would make the new environment's pip see (or use) another environment's packages.
LEAKY_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "VIRTUAL_ENV", "PIP_USER", "PIP_TARGET",
               "PIP_PREFIX", "PIP_REQUIRE_VIRTUALENV")

Progress = Callable[[str], None]
StatusFactory = Callable[[str], ContextManager[Any]]


# --- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One thing apply() does: an external command (argv) or an in-process action (no argv)."""

    key: str                         # "remove" | "create" | "torch" | "packages" | "verify" | "record"
    title: str                       # "install torch"
    argv: tuple[str, ...] = ()
    timeout: float = QUERY_TIMEOUT
    detail: str = ""                 # what an in-process step does

    def shown(self) -> str:
        return shlex.join(self.argv) if self.argv else self.detail

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "argv": list(self.argv) or None,
                "detail": self.detail or None}


@dataclass(frozen=True)
class Location:
    """Where the environment lives; `conda_name` is set when conda addresses it by -n NAME."""

    prefix: Path
    name: str
    conda_name: str | None = None
    #: the prefix is not known yet (a dry run that ran no conda command): conda names it at build time
    pending: bool = False


class EnvBackend(Protocol):
    """Makes an environment with a Python in it, and installs packages into it."""

    @property
    def name(self) -> str: ...

    def create(self, location: Location, python_version: str) -> Step: ...

    def python(self, prefix: Path) -> Path: ...

    def pip_install(self, python: Path, args: Sequence[str], title: str) -> Step: ...

    def remove(self, location: Location) -> Step: ...


@dataclass(frozen=True)
class Installer:
    """pip inside the environment, or `uv pip` from outside it (uv reads no pip configuration)."""

    uv: Path | None = None

    @property
    def name(self) -> str:
        return "uv" if self.uv else "pip"

    def install(self, python: Path, args: Sequence[str], title: str) -> Step:
        if self.uv is not None:
            argv = [str(self.uv), "pip", "install", "--python", str(python), *args]
        else:
            argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
        return Step("install", title, tuple(argv), INSTALL_TIMEOUT)


@dataclass(frozen=True)
class VenvBackend:
    """`python3.X -m venv PREFIX`, or `uv venv` when uv installs (it is 20x faster and seeds no pip)."""

    interpreter: Path
    installer: Installer = field(default_factory=Installer)
    name: str = "venv"

    def create(self, location: Location, python_version: str) -> Step:
        if self.installer.uv is not None:
            argv = [str(self.installer.uv), "venv", "--quiet", "--python", str(self.interpreter),
                    str(location.prefix)]
        else:
            argv = [str(self.interpreter), "-m", "venv", str(location.prefix)]
        return Step("create", "create the venv", tuple(argv), CREATE_TIMEOUT)

    def python(self, prefix: Path) -> Path:
        return prefix / "bin" / "python"

    def pip_install(self, python: Path, args: Sequence[str], title: str) -> Step:
        return self.installer.install(python, args, title)

    def remove(self, location: Location) -> Step:
        return Step("remove", "remove the environment", (), QUERY_TIMEOUT,
                    f"delete {location.prefix}")


@dataclass(frozen=True)
class CondaBackend:
    """conda, mamba or micromamba: `create -y (-n NAME | -p PREFIX) python=X.Y pip [-c CHANNEL]`."""

    exe: Path
    flavor: str                                  # "conda" | "mamba" | "micromamba"
    channels: tuple[str, ...] = ()
    installer: Installer = field(default_factory=Installer)

    @property
    def name(self) -> str:
        return self.flavor

    def channel_args(self) -> list[str]:
        channels = self.channels
        if not channels and self.flavor == "micromamba":
            channels = (MICROMAMBA_CHANNEL,)
        args = []
        for ch in channels:
            args += ["-c", ch]
        if self.channels:
            # the user's channels replace .condarc's, as `conda create --override-channels -c X` does
            args.append("--override-channels")
        return args

    def create(self, location: Location, python_version: str) -> Step:
        where = ["-n", location.conda_name] if location.conda_name else ["-p", str(location.prefix)]
        # pip in the spec: torch and the rest come from pip wheels, as in the walkthrough
        argv = [str(self.exe), "create", "-y", *where, f"python={python_version}", "pip",
                *self.channel_args()]
        return Step("create", f"create the {self.flavor} environment", tuple(argv), CREATE_TIMEOUT)

    def python(self, prefix: Path) -> Path:
        return prefix / "bin" / "python"

    def pip_install(self, python: Path, args: Sequence[str], title: str) -> Step:
        return self.installer.install(python, args, title)

    def remove(self, location: Location) -> Step:
        argv = [str(self.exe), "env", "remove", "-y", "-p", str(location.prefix)]
        return Step("remove", f"remove the {self.flavor} environment", tuple(argv), CREATE_TIMEOUT)

    def configured_envs_dir(self, environ: Mapping[str, str], root: Path = Path("/")) -> tuple[Path, str] | None:
        """Where `conda create -n NAME` goes, read from conda's settings without running it, and
        which setting said so; None where only `info --json` can tell (then a dry run says so).

        conda only (mamba and micromamba read their own settings): the first entry of CONDA_ENVS_DIRS
        or CONDA_ENVS_PATH (os.pathsep-separated, ahead of every .condarc), else `envs/` of the
        installation the executable belongs to (`ROOT/bin/conda`, `ROOT/condabin/conda` beside
        `ROOT/conda-meta`), when no .condarc sets envs_dirs and conda may write there (else it
        falls back to ~/.conda/envs). conda's context.py and its "Specify environment directories"
        docs describe both.
        """
        if self.flavor != "conda":
            return None
        for var in ("CONDA_ENVS_DIRS", "CONDA_ENVS_PATH"):
            first = next((p for p in environ.get(var, "").split(os.pathsep) if p.strip()), None)
            if first:
                envs = Path(os.path.expandvars(os.path.expanduser(first.strip())))
                return (envs, var) if _writable_dir(envs) else None
        installs = [self.exe, Path(os.path.realpath(self.exe))]
        base = next((exe.parent.parent for exe in installs if exe.parent.name in ("bin", "condabin")
                     and (exe.parent.parent / "conda-meta").is_dir()), None)
        if base is None or _condarc_sets_envs_dirs(base, environ, root):
            return None
        envs = base / "envs"
        return (envs, f"the conda installation at {base}") if _writable_dir(envs) else None

    def envs_dir(self, environ: Mapping[str, str]) -> Path:
        """Where `-n NAME` puts an environment: the first envs directory `info --json` names."""
        try:
            done = proc.run([self.exe, "info", "--json"], env=environ, timeout=QUERY_TIMEOUT)
        except CommandError as e:
            raise ProvisionError(e.message, hint=f"check that `{self.flavor} info --json` works, or pass "
                                                 "--prefix PATH (or --backend venv)") from None
        try:
            info = json.loads(done.stdout)
        except ValueError:
            info = {}
        # conda and mamba say "envs_dirs"; micromamba says "envs directories"
        for key in ("envs_dirs", "envs directories"):
            dirs = info.get(key) if isinstance(info, dict) else None
            if isinstance(dirs, list) and dirs:
                return Path(str(dirs[0]))
        for key in ("root_prefix", "base environment"):
            base = info.get(key) if isinstance(info, dict) else None
            if isinstance(base, str) and base:
                return Path(base) / "envs"
        raise ProvisionError(f"`{self.exe} info --json` did not name an envs directory",
                             hint="pass --prefix PATH instead of --name")


def _writable_dir(path: Path) -> bool:
    """Whether conda could create an environment in `path` (it or its nearest existing parent)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK)


def _condarc_sets_envs_dirs(base: Path, environ: Mapping[str, str], root: Path) -> bool:
    """Whether a .condarc on conda's search path sets envs_dirs (or its alias envs_path)."""
    import re

    from provisioner.paths import under_root

    home = Path(environ.get("HOME") or Path.home())
    xdg = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    places = [under_root(root, "/etc/conda"), under_root(root, "/var/lib/conda"), base, xdg / "conda",
              home / ".config" / "conda", home / ".conda", home]
    if environ.get("CONDA_PREFIX"):
        places.append(Path(environ["CONDA_PREFIX"]))
    files = [d / n for d in places for n in (".condarc", "condarc")]
    files += [f for d in places for f in sorted((d / "condarc.d").glob("*.yml")) + sorted((d / "condarc.d").glob("*.yaml"))]
    if environ.get("CONDARC"):
        files.append(Path(environ["CONDARC"]))
    key = re.compile(r"^envs_(dirs|path)\s*:", re.M)
    for f in files:
        try:
            if key.search(f.read_text(errors="replace")):
                return True
        except OSError:
            continue
    return False


def which(name: str, environ: Mapping[str, str]) -> Path | None:
    found = shutil.which(name, path=environ.get("PATH", os.defpath))
    return Path(found) if found else None


def find_interpreter(version: str, environ: Mapping[str, str]) -> tuple[Path, str | None]:
    """pythonX.Y from PATH, else this interpreter when it is X.Y, else this one with a note."""
    found = which(f"python{version}", environ)
    if found is not None:
        return found, None
    current = f"{sys.version_info.major}.{sys.version_info.minor}"
    exe = Path(sys.executable)
    if current == version:
        return exe, None
    return exe, (f"python{version} is not on PATH; using {exe} (Python {current}) instead. "
                 f"Wheels built only for {version} will not install: put python{version} on PATH "
                 f"or pass --python {current}")


def choose_backend(requested: str, environ: Mapping[str, str], channels: Sequence[str],
                   installer: Installer, interpreter: Path) -> EnvBackend:
    """--backend auto: conda, then mamba, then micromamba when on PATH (as the walkthrough uses
    conda); otherwise a venv."""
    if requested not in BACKENDS:
        raise UsageError(f"unknown backend '{requested}'", hint="use one of: " + ", ".join(BACKENDS))
    if requested == "venv":
        return VenvBackend(interpreter, installer)
    flavors = CONDA_BACKENDS if requested == "auto" else (requested,)
    for flavor in flavors:
        exe = which(flavor, environ)
        if exe is not None:
            return CondaBackend(exe, flavor, tuple(channels), installer)
    if requested == "auto":
        return VenvBackend(interpreter, installer)
    raise ProvisionError(f"`{requested}` not found on PATH",
                         hint=f"install {requested}, put it on PATH, or use --backend venv")


def pick_installer(requested: str, environ: Mapping[str, str]) -> Installer:
    if requested not in INSTALLERS:
        raise UsageError(f"unknown installer '{requested}'", hint="use auto, pip or uv")
    uv = which("uv", environ)
    if requested == "pip":
        return Installer(None)
    if requested == "uv" and uv is None:
        raise ProvisionError("`uv` not found on PATH", hint="install uv, or use --installer pip")
    return Installer(uv)


def step_environ(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in LEAKY_VARS}
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def run_step(step: Step, env: Mapping[str, str], status: StatusFactory | None) -> None:
    ctx: ContextManager[Any] = status(step.title) if status else contextlib.nullcontext()
    with ctx:
        proc.run(step.argv, env=env, timeout=step.timeout)
