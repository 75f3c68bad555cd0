"""Build the environment a profile describes: EnvBackend (conda, mamba, micromamba, venv), plan, apply."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Protocol
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from provisioner import lock as lockmod
from provisioner import paths, proc
from provisioner.errors import CommandError, ProvisionError, UsageError

if TYPE_CHECKING:
    from provisioner.choose import Choice, MachineFacts
    from provisioner.profiles import Profile
    from provisioner.report import Check

#: The record provision keeps inside every environment it builds; no record, not ours.
RECORD_NAME = "provision-env.json"
RECORD_VERSION = 1
DEFAULT_NAME = "llm"
BACKENDS = ("auto", "conda", "mamba", "micromamba", "venv")
CONDA_BACKENDS = ("conda", "mamba", "micromamba")
INSTALLERS = ("auto", "pip", "uv")
TORCH_FAMILY = lockmod.TORCH_FAMILY
#: micromamba ships with no channel configured; conda and mamba use the user's .condarc.
MICROMAMBA_CHANNEL = "conda-forge"

CREATE_TIMEOUT = 1800
INSTALL_TIMEOUT = 3600
QUERY_TIMEOUT = 60

# Variables that would make the new environment's pip see (or use) another environment's packages.
_LEAKY_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "VIRTUAL_ENV", "PIP_USER", "PIP_TARGET",
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


class EnvBackend(Protocol):
    """Makes an environment with a Python in it, and installs packages into it."""

    @property
    def name(self) -> str: ...

    def create(self, location: Location, python_version: str) -> Step: ...

    def python(self, prefix: Path) -> Path: ...

    def pip_install(self, python: Path, args: Sequence[str], title: str) -> Step: ...

    def remove(self, location: Location) -> Step: ...


@dataclass(frozen=True)
class _Installer:
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
    installer: _Installer = field(default_factory=_Installer)
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
    installer: _Installer = field(default_factory=_Installer)

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


# --- small helpers -----------------------------------------------------------------------------


def _which(name: str, environ: Mapping[str, str]) -> Path | None:
    found = shutil.which(name, path=environ.get("PATH", os.defpath))
    return Path(found) if found else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _expand(path: str | os.PathLike[str], environ: Mapping[str, str]) -> Path:
    text = os.fspath(path)
    if text.startswith("~"):
        text = environ.get("HOME", str(Path.home())) + text[1:]
    return Path(os.path.abspath(text))


def default_prefix(name: str, environ: Mapping[str, str]) -> Path:
    """$XDG_DATA_HOME/provision/envs/NAME: where a venv called NAME lives."""
    return paths.data_dir(environ) / "envs" / name


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UsageError(f"'{name}' is not an environment name",
                         hint="use letters, digits, '.', '_' and '-', or pass --prefix PATH")
    return name


def _as_list(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(v for v in value if v)


def check_url(url: str, *, option: str, allow_insecure: bool) -> str:
    """https, file:// and local paths pass; http needs --allow-insecure-index; anything else is refused."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("https", "file") or (scheme == "" and url.strip()):
        return url
    if scheme == "http":
        if allow_insecure:
            return url
        raise UsageError(f"{option} {url} is not https: packages fetched over plain http can be "
                         "altered in transit",
                         hint="use the https URL of the index, or pass --allow-insecure-index "
                              "if this network is trusted")
    raise UsageError(f"{option} {url}: unsupported URL scheme '{scheme}'",
                     hint="use an https:// or file:// URL, or a local directory")


def _local_dir(location: str) -> Path | None:
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" and location:
        return Path(location)
    return None


def pin_build(requirement: str, variant: str) -> str:
    """torch==2.13.0 -> torch==2.13.0+cpu: the PyTorch indexes label every wheel with its build, so
    an exact labelled pin can only be met by that build (never PyPI's default CUDA wheel)."""
    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        raise UsageError(f"'{requirement}' is not a requirement") from None
    specs = list(req.specifier)
    if canonicalize_name(req.name) not in TORCH_FAMILY or len(specs) != 1:
        return requirement
    spec = specs[0]
    if spec.operator != "==" or "*" in spec.version:
        return requirement
    version = Version(spec.version)
    if version.local is None:
        return f"{req.name}=={version}+{variant}"
    if version.local != variant:
        raise UsageError(f"{req.name} {version} is the {version.local} build, but the profile is "
                         f"the {variant} build",
                         hint=f"pass --torch {version.public} (the {variant} build is chosen for you), "
                              f"or pick the {version.local} profile")
    return requirement


def find_local_wheels(requirements: Sequence[str], find_links: Sequence[str],
                      python_version: str) -> dict[str, Path] | None:
    """The wheel files in local find-links folders that satisfy every exact pin, or None."""
    tag = "cp" + python_version.replace(".", "")
    found: dict[str, Path] = {}
    for req_text in requirements:
        req = Requirement(req_text)
        want = next(iter(req.specifier)).version if len(req.specifier) == 1 else None
        if want is None:
            return None
        hit = None
        for location in find_links:
            folder = _local_dir(location)
            if folder is None or not folder.is_dir():
                continue
            for wheel in sorted(folder.glob("*.whl")):
                try:
                    name, version, _build, tags = parse_wheel_filename(wheel.name)
                except (ValueError, InvalidVersion):
                    continue
                if canonicalize_name(name) != canonicalize_name(req.name) or str(version) != want:
                    continue
                if any(t.interpreter in (tag, "py3") and ("linux" in t.platform or t.platform == "any")
                       for t in tags):
                    hit = wheel
                    break
            if hit:
                break
        if hit is None:
            return None
        found[canonicalize_name(req.name)] = hit
    return found


def find_interpreter(version: str, environ: Mapping[str, str]) -> tuple[Path, str | None]:
    """pythonX.Y from PATH, else this interpreter when it is X.Y, else this one with a note."""
    found = _which(f"python{version}", environ)
    if found is not None:
        return found, None
    current = f"{sys.version_info.major}.{sys.version_info.minor}"
    exe = Path(sys.executable)
    if current == version:
        return exe, None
    return exe, (f"python{version} is not on PATH; using {exe} (Python {current}) instead. "
                 f"Wheels built only for {version} will not install: put python{version} on PATH "
                 f"or pass --python {current}")


# --- the record inside an environment, and the registry of environments -----------------------


def record_path(prefix: Path) -> Path:
    return prefix / RECORD_NAME


def read_record(prefix: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(record_path(prefix).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_record(prefix: Path, doc: Mapping[str, Any]) -> None:
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


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _update_registry(environ: Mapping[str, str], prefix: Path,
                     entry: Mapping[str, Any] | None) -> None:
    with _flock(paths.data_dir(environ) / "envs.lock"):
        envs = read_registry(environ)
        if entry is None:
            envs.pop(str(prefix), None)
        else:
            envs[str(prefix)] = {**envs.get(str(prefix), {}), **entry}
        lockmod.write_json(registry_path(environ), {"version": 1, "envs": envs})


def _build_lock_path(prefix: Path, environ: Mapping[str, str]) -> Path:
    key = hashlib.sha256(str(prefix).encode()).hexdigest()[:16]
    return paths.data_dir(environ) / "locks" / f"{key}.lock"


def is_building_now(prefix: Path, environ: Mapping[str, str]) -> bool:
    """Whether another process holds the build lock of prefix (a live `env create`)."""
    with _flock(_build_lock_path(prefix, environ), blocking=False) as got:
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


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateOptions:
    """What `env create` was asked for (CLI options, or `up`'s pass-through)."""

    name: str | None = None
    prefix: Path | None = None
    profile: str | None = "auto"
    cuda: str | None = None
    backend: str = "auto"
    python: str | None = None
    torch: str | None = None
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    installer: str = "auto"
    allow_insecure_index: bool = False
    from_lock: Path | None = None
    force: bool = False


@dataclass(frozen=True)
class CreatePlan:
    """Every command `env create` will run, decided before anything changes."""

    action: str                          # "create" | "replace" | "up-to-date"
    location: Location
    backend: str                         # "venv" | "conda" | "mamba" | "micromamba"
    installer: str                       # "pip" | "uv"
    profile: Profile
    choice: Choice | None                # None when the profile came from a lock
    facts: MachineFacts
    python_version: str
    python: Path                         # the environment's interpreter (once created)
    interpreter: Path | None             # the base interpreter a venv is made from
    torch_requirements: tuple[str, ...]
    package_requirements: tuple[str, ...]
    torch_source: str                    # "index" | "local"
    torch_index_url: str
    local_wheels: Mapping[str, Path]
    index_url: str | None                # the default index given to uv (pip reads its own)
    extra_index_urls: tuple[str, ...]
    find_links: tuple[str, ...]
    steps: tuple[Step, ...]
    spec: Mapping[str, Any]              # what "the same environment" means (compared on reruns)
    options: CreateOptions
    existing: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    from_lock: Path | None = None
    root: Path = Path("/")

    @property
    def prefix(self) -> Path:
        return self.location.prefix

    def describe(self) -> str:
        loc = self.location
        where = f"{loc.prefix}" + (f" (conda env '{loc.conda_name}')" if loc.conda_name else "")
        if self.action == "up-to-date":
            built = (self.existing or {}).get("completed") or "earlier"
            return (f"Environment {where} is up to date: profile {self.profile.name}, "
                    f"{' '.join(self.torch_requirements)}, built {built}. Nothing to do.")
        lines = [f"Environment: {where} ({self.backend}"
                 + (", replacing the existing one)" if self.action == "replace" else ", new)"),
                 f"Machine:     {self.facts.summary()}"]
        if self.from_lock is not None:
            lines.append(f"Profile:     {self.profile.name} as locked in {self.from_lock}")
        elif self.choice is not None:
            lines.append(f"Profile:     {self.profile.name}: " + "; ".join(self.choice.reasons))
            lines += [f"             not {n}: {why}" for n, why in self.choice.rejected]
        interp = f" ({self.interpreter})" if self.interpreter else ""
        lines.append(f"Python:      {self.python_version}{interp}")
        lines.append(f"Installer:   {self.installer}")
        if self.torch_source == "local":
            files = ", ".join(str(p) for p in self.local_wheels.values())
            lines.append(f"torch:       {' '.join(self.torch_requirements)} from local wheel(s) {files} "
                         f"(the profile's index {self.torch_index_url} is not needed)")
        else:
            lines.append(f"torch:       {' '.join(self.torch_requirements)} from {self.torch_index_url}")
        lines.append(f"packages:    {' '.join(self.package_requirements) or '(none)'} "
                     "from the default index")
        lines.append("Steps:")
        for i, step in enumerate(self.steps, 1):
            lines.append(f"  {i}. {step.title}")
            lines.append(f"       {step.shown()}")
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "prefix": str(self.prefix),
            "name": self.location.name,
            "conda_name": self.location.conda_name,
            "backend": self.backend,
            "installer": self.installer,
            "profile": self.profile.name,
            "choice": self.choice.to_dict() if self.choice else None,
            "from_lock": str(self.from_lock) if self.from_lock else None,
            "machine": self.facts.to_dict(),
            "python_version": self.python_version,
            "python": str(self.python),
            "interpreter": str(self.interpreter) if self.interpreter else None,
            "torch": {"requirements": list(self.torch_requirements), "source": self.torch_source,
                      "index_url": self.torch_index_url,
                      "local_wheels": {k: str(v) for k, v in self.local_wheels.items()}},
            "packages": list(self.package_requirements),
            "indexes": {"index_url": self.index_url, "extra_index_urls": list(self.extra_index_urls),
                        "find_links": list(self.find_links)},
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class EnvResult:
    prefix: Path
    python: Path
    profile: str
    status: str                          # "created" | "up-to-date"
    lock_path: Path | None
    seconds: float = 0.0
    plan: CreatePlan | None = None
    checks: tuple[Check, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "prefix": str(self.prefix), "python": str(self.python),
                "profile": self.profile, "lock": str(self.lock_path) if self.lock_path else None,
                "seconds": round(self.seconds, 2),
                "checks": [c.to_dict() for c in self.checks]}


def choose_backend(requested: str, environ: Mapping[str, str], channels: Sequence[str],
                   installer: _Installer, interpreter: Path) -> EnvBackend:
    """--backend auto: conda, then mamba, then micromamba when on PATH (as the walkthrough uses
    conda); otherwise a venv."""
    if requested not in BACKENDS:
        raise UsageError(f"unknown backend '{requested}'", hint="use one of: " + ", ".join(BACKENDS))
    if requested == "venv":
        return VenvBackend(interpreter, installer)
    flavors = CONDA_BACKENDS if requested == "auto" else (requested,)
    for flavor in flavors:
        exe = _which(flavor, environ)
        if exe is not None:
            return CondaBackend(exe, flavor, tuple(channels), installer)
    if requested == "auto":
        return VenvBackend(interpreter, installer)
    raise ProvisionError(f"`{requested}` not found on PATH",
                         hint=f"install {requested}, put it on PATH, or use --backend venv")


def _pick_installer(requested: str, environ: Mapping[str, str]) -> _Installer:
    if requested not in INSTALLERS:
        raise UsageError(f"unknown installer '{requested}'", hint="use auto, pip or uv")
    uv = _which("uv", environ)
    if requested == "pip":
        return _Installer(None)
    if requested == "uv" and uv is None:
        raise ProvisionError("`uv` not found on PATH", hint="install uv, or use --installer pip")
    return _Installer(uv)


def _pip_env_list(environ: Mapping[str, str], var: str) -> tuple[str, ...]:
    return tuple(environ.get(var, "").split())


def pip_find_links(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The wheel folders pip would search: PIP_FIND_LINKS, else `find-links` in pip's config files."""
    return _pip_env_list(environ, "PIP_FIND_LINKS") or pip_config_find_links(environ)


def pip_config_find_links(environ: Mapping[str, str]) -> tuple[str, ...]:
    """`find-links` from pip's configuration files, in pip's order (the last file wins).

    uv reads no pip configuration, so a local wheel folder that pip is configured with (an
    air-gapped machine's wheelhouse) must be handed to uv explicitly, or uv goes to the index
    for a build it cannot find there.
    """
    import configparser

    home = Path(environ.get("HOME") or Path.home())
    dirs = [d for d in environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep) if d]
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(dirs)] + [Path("/etc/pip.conf")]
    files += [home / ".pip" / "pip.conf",
              Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf"]
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    found: tuple[str, ...] = ()
    for f in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(f)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_option(section, "find-links"):
                found = tuple(parser.get(section, "find-links").split())
    return found


def _location(options: CreateOptions, backend: EnvBackend, environ: Mapping[str, str]) -> Location:
    if options.prefix is not None and options.name is not None:
        raise UsageError("--name and --prefix name the environment twice",
                         hint="pass one of them")
    if options.prefix is not None:
        prefix = _expand(options.prefix, environ)
        return Location(prefix, prefix.name)
    name = _check_name(options.name or DEFAULT_NAME)
    if isinstance(backend, CondaBackend):
        return Location(backend.envs_dir(environ) / name, name, conda_name=name)
    return Location(default_prefix(name, environ), name)


def _existing(location: Location, environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The record of what is at the location; raise when something provision did not make is there."""
    prefix = location.prefix
    record = read_record(prefix)
    if record is not None:
        return record
    if not prefix.exists() and not prefix.is_symlink():
        return None
    if str(prefix) in read_registry(environ):
        # ours, killed between creating the prefix and writing the record
        return {"status": "building", "profile": None, "spec": None}
    if prefix.is_dir() and not any(prefix.iterdir()):
        return None                       # an empty directory: nothing to lose
    raise ProvisionError(
        f"{prefix} already exists and was not created by provision (no {RECORD_NAME} in it); "
        "provision never deletes what it did not create",
        hint="choose another --prefix or --name, or move that directory away yourself")


def plan_create(options: CreateOptions, *, root: Path, environ: Mapping[str, str],
                facts: MachineFacts | None = None,
                profiles: Mapping[str, Profile] | None = None) -> CreatePlan:
    """Decide everything `env create` will do; reads the machine, changes nothing."""
    from provisioner import choose
    from provisioner import profiles as profmod

    if facts is None:
        facts = choose.gather_facts(root, environ)

    choice: Choice | None = None
    lock_file: lockmod.Lock | None = None
    if options.from_lock is not None:
        if options.torch or options.cuda or (options.profile not in (None, "", "auto")):
            raise UsageError("--from-lock rebuilds exactly what the lock says",
                             hint="drop --profile, --cuda and --torch, or drop --from-lock")
        lock_file = lockmod.read(_expand(options.from_lock, environ))
        problems = lockmod.check_runnable(lock_file, facts)
        if problems:
            raise ProvisionError(
                f"{lock_file.path} is a {lock_file.variant} build of profile {lock_file.profile_name} "
                f"that this machine cannot run: " + "; ".join(problems),
                hint="rebuild for this machine with `provision env create --profile auto` "
                     "(the lock's package versions are kept in its 'packages' section)")
        profile = lock_file.as_profile()
    else:
        if profiles is None:
            profiles = profmod.load_all(environ)
        from provisioner.versions import CudaVersion

        cuda = CudaVersion.parse(options.cuda) if options.cuda else None
        requested = options.profile if options.profile not in (None, "", "auto") else None
        if requested and cuda is not None:
            raise UsageError("--profile and --cuda both choose the profile", hint="pass one of them")
        choice = choose.choose_profile(facts, profiles, requested=requested, cuda=cuda)
        profile = choice.profile

    python_version = options.python or profile.python
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise UsageError(f"--python {python_version} is not a Python version", hint="write it as 3.11")
    notes: list[str] = []
    if lock_file is not None and lock_file.python != python_version:
        notes.append(f"the lock was built with Python {lock_file.python}; building with "
                     f"{python_version} may resolve other wheels")

    # where wheels come from
    allow = options.allow_insecure_index
    torch_index = check_url(options.index_url or (lock_file.torch_index_url if lock_file
                                                  else profile.torch_index_url),
                            option="--index-url" if options.index_url else "the torch index",
                            allow_insecure=allow)
    extra = tuple(check_url(u, option="--extra-index-url", allow_insecure=allow)
                  for u in options.extra_index_urls)
    links = tuple(check_url(u, option="--find-links", allow_insecure=allow)
                  for u in options.find_links)
    for u in links:
        folder = _local_dir(u)
        # pip and uv only warn about a missing folder and then go to the index: say it now
        if folder is not None and not _expand(folder, environ).is_dir():
            raise UsageError(f"--find-links {u}: no such folder",
                             hint="give the folder that holds the wheel files (or an https:// URL)")

    # what to install: torch pinned to the profile's build, everything else by the profile's ranges
    if lock_file is not None:
        torch_reqs = tuple(lock_file.torch_requirements)
        package_reqs = tuple(lock_file.requirements())
    else:
        torch_reqs = tuple(pin_build(r, profile.variant)
                           for r in profile.torch_requirements(options.torch))
        package_reqs = tuple(profile.package_requirements())

    installer = _pick_installer(options.installer, environ)
    base_python, note = find_interpreter(python_version, environ)
    backend = choose_backend(options.backend, environ, options.channels, installer, base_python)
    interpreter: Path | None = base_python
    if isinstance(backend, CondaBackend):
        interpreter, note = None, None   # conda brings its own python=X.Y
    if note:
        notes.append(note)
    if options.channels and not isinstance(backend, CondaBackend):
        notes.append("--channel applies to conda backends only; ignored for a venv")

    # pip reads PIP_FIND_LINKS / PIP_INDEX_URL / PIP_EXTRA_INDEX_URL itself; uv reads none of them,
    # so for uv they are passed explicitly (and the local-wheel search sees them in both cases).
    env_links = pip_find_links(environ)
    env_index = environ.get("PIP_INDEX_URL") or None
    uv = installer.uv is not None
    all_links = links + tuple(u for u in env_links if u not in links)

    # A local wheel folder that already holds the exact pinned builds answers for the torch index
    # (air-gapped machines, mirrors, CI): the labelled pin cannot match any other build.
    local: dict[str, Path] = {}
    if not options.index_url:
        local = find_local_wheels(torch_reqs, all_links, python_version) or {}
    torch_source = "local" if local else "index"

    location = _location(options, backend, environ)
    python = backend.python(location.prefix)

    spec = {"profile": profile.name, "python": python_version, "torch": list(torch_reqs),
            "packages": list(package_reqs), "backend": backend.name}

    existing = _existing(location, environ)
    action = "create"
    if existing is not None:
        status = str(existing.get("status") or "building")
        built_from = existing.get("profile")
        if status == "complete" and existing.get("spec") == spec and python.exists():
            action = "up-to-date"
        elif status != "complete" and is_building_now(location.prefix, environ):
            raise ProvisionError(f"{location.prefix} is being built right now by another "
                                 "`provision env create`",
                                 hint="wait for it to finish, then run this again")
        elif options.force:
            action = "replace"
        elif status != "complete":
            raise ProvisionError(
                f"{location.prefix} is half-built: an earlier `env create` for profile "
                f"{built_from or '?'} did not finish" + _failure(existing),
                hint="rebuild it with --force (it was created by provision, so it may be replaced)")
        elif not python.exists():
            raise ProvisionError(f"{location.prefix} is broken: {python} is missing",
                                 hint="rebuild it with --force")
        else:
            raise ProvisionError(
                f"{location.prefix} holds an environment built from "
                + _what(existing) + f", not {_what({'profile': profile.name, 'spec': spec})}",
                hint="replace it with --force, or build the new one elsewhere with --name/--prefix")

    steps: list[Step] = []
    if action == "replace":
        steps.append(_remove_step(location, existing, backend, environ))
    if action != "up-to-date":
        steps.append(backend.create(location, python_version))
        torch_args = list(torch_reqs)
        if torch_source == "index":
            torch_args += ["--index-url", torch_index]
        elif uv and env_index:
            torch_args += ["--index-url", env_index]       # torch's own dependencies
        # name the folders holding the local wheels, so the plan shows where torch comes from
        wheel_dirs = tuple(str(p.parent) for p in local.values())
        torch_links = tuple(dict.fromkeys((all_links if uv else links) + wheel_dirs))
        torch_args += _source_args(extra, torch_links, uv, environ)
        steps.append(replace(backend.pip_install(python, torch_args, "install torch"), key="torch"))
        if package_reqs:
            # torch again, pinned: the resolver then keeps the installed build, whatever the
            # packages ask for
            pkg_args = [*torch_reqs, *package_reqs]
            if uv and env_index:
                pkg_args += ["--index-url", env_index]
            pkg_args += _source_args(extra, all_links if uv else links, uv, environ)
            steps.append(replace(backend.pip_install(python, pkg_args, "install packages"),
                                 key="packages"))
        steps.append(Step("verify", "verify the environment", (), detail=(
            f"run the verify environment checks with {python} against profile {profile.name}")))
        steps.append(Step("record", "record and lock", (), detail=(
            f"mark it complete in {record_path(location.prefix)}; write "
            f"{location.prefix / lockmod.LOCK_NAME}")))

    return CreatePlan(
        action=action, location=location, backend=backend.name, installer=installer.name,
        profile=profile, choice=choice, facts=facts, python_version=python_version, python=python,
        interpreter=interpreter,
        torch_requirements=torch_reqs, package_requirements=package_reqs,
        torch_source=torch_source, torch_index_url=torch_index, local_wheels=local,
        index_url=env_index, extra_index_urls=extra, find_links=all_links if uv else links,
        steps=tuple(steps), spec=spec, options=options, existing=existing, notes=tuple(notes),
        from_lock=lock_file.path if lock_file else None, root=root,
    )


def _failure(record: Mapping[str, Any]) -> str:
    error = record.get("error")
    return f" (it failed: {str(error).splitlines()[0]})" if error else " (it was interrupted)"


def _what(record: Mapping[str, Any]) -> str:
    spec = record.get("spec") or {}
    torch = " ".join(spec.get("torch") or [])
    return f"profile {record.get('profile') or '?'}" + (f" ({torch}, Python {spec.get('python')})"
                                                         if torch else "")


def _source_args(extra: Sequence[str], links: Sequence[str], uv: bool,
                 environ: Mapping[str, str] | None = None) -> list[str]:
    """--extra-index-url / --find-links, plus (for uv) the pip settings uv does not read."""
    env_extra = _pip_env_list(environ, "PIP_EXTRA_INDEX_URL") if uv and environ else ()
    extras = list(dict.fromkeys([*extra, *env_extra]))
    args: list[str] = []
    for u in extras:
        args += ["--extra-index-url", u]
    for f in links:
        args += ["--find-links", f]
    if uv and extras:
        # uv stops at the first index that has a package; pip merges them all. The exact,
        # build-labelled torch pins make pip's behaviour safe, so ask uv for it.
        args += ["--index-strategy", "unsafe-best-match"]
    if uv and environ and environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    return args


def _remove_step(location: Location, existing: Mapping[str, Any] | None, backend: EnvBackend,
                 environ: Mapping[str, str]) -> Step:
    kind = (existing or {}).get("backend")
    if kind in CONDA_BACKENDS:
        exe = _which(str(kind), environ)
        if exe is not None and location.prefix.exists():
            return CondaBackend(exe, str(kind)).remove(location)
    return Step("remove", "remove the environment", (), QUERY_TIMEOUT, f"delete {location.prefix}")


# --- apply -------------------------------------------------------------------------------------


def _step_environ(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in _LEAKY_VARS}
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def _run_step(step: Step, env: Mapping[str, str], status: StatusFactory | None) -> None:
    ctx: ContextManager[Any] = status(step.title) if status else contextlib.nullcontext()
    with ctx:
        proc.run(step.argv, env=env, timeout=step.timeout)


def _delete(prefix: Path) -> None:
    try:
        if prefix.is_symlink() or prefix.is_file():
            prefix.unlink()
        elif prefix.exists():
            shutil.rmtree(prefix)
    except OSError as e:
        raise ProvisionError(f"cannot delete {prefix}: {e.strerror or e}"
                             + (f" ({e.filename})" if e.filename and str(e.filename) != str(prefix) else ""),
                             hint="check its permissions (an environment made with sudo needs sudo to "
                                  "remove), then run the command again") from None


def apply_create(plan: CreatePlan, *, environ: Mapping[str, str], progress: Progress | None = None,
                 status: StatusFactory | None = None) -> EnvResult:
    """Run the plan: create, install, verify; mark complete and write the lock only at the end."""
    say = progress or (lambda _msg: None)
    start = time.monotonic()
    prefix = plan.prefix
    if plan.action == "up-to-date":
        lock_path = prefix / lockmod.LOCK_NAME
        return EnvResult(prefix, plan.python, plan.profile.name, "up-to-date",
                         lock_path if lock_path.exists() else None, time.monotonic() - start, plan)

    with _flock(_build_lock_path(prefix, environ), blocking=False) as got:
        if not got:
            raise ProvisionError(f"{prefix} is being built right now by another `provision env create`",
                                 hint="wait for it to finish, then run this again")
        return _build(plan, environ=environ, say=say, status=status, start=start)


def _build(plan: CreatePlan, *, environ: Mapping[str, str], say: Progress,
           status: StatusFactory | None, start: float) -> EnvResult:
    prefix = plan.prefix
    env = _step_environ(environ)
    record: dict[str, Any] = {
        "version": RECORD_VERSION, "status": "building", "profile": plan.profile.name,
        "spec": dict(plan.spec), "backend": plan.backend, "installer": plan.installer,
        "name": plan.location.name, "conda_name": plan.location.conda_name,
        "prefix": str(prefix), "python": str(plan.python.relative_to(prefix)),
        "torch": " ".join(plan.torch_requirements),
        "from_lock": str(plan.from_lock) if plan.from_lock else None,
        "started": _now(), "pid": os.getpid(), "error": None,
    }
    total = len(plan.steps)
    checks: tuple[Check, ...] = ()
    lock_path: Path | None = None
    for i, step in enumerate(plan.steps, 1):
        t0 = time.monotonic()
        say(f"[{i}/{total}] {step.title} ...")
        try:
            if step.key == "remove":
                if step.argv:
                    _run_step(step, env, status)
                _delete(prefix)
                _update_registry(environ, prefix, None)
            elif step.key == "create":
                # the registry first: a run killed inside `venv`/`conda create` leaves a prefix
                # that is still known as provision's own
                _update_registry(environ, prefix, {"name": plan.location.name, "backend": plan.backend,
                                                   "profile": plan.profile.name, "created": _now()})
                if prefix.is_dir() and not any(prefix.iterdir()):
                    prefix.rmdir()       # conda refuses an existing directory
                _run_step(step, env, status)
                if not plan.python.exists():
                    raise ProvisionError(f"`{step.shown()}` finished but {plan.python} does not exist",
                                         hint="run it by hand to see why; then `provision env create "
                                              "--force`")
                _write_record(prefix, record)
            elif step.key in ("torch", "packages"):
                _run_step(step, env, status)
            elif step.key == "verify":
                checks = _verify(plan, env, status)
            elif step.key == "record":
                found = lockmod.installed(plan.python, env)
                doc = lockmod.build(
                    profile=plan.profile, torch_requirements=plan.torch_requirements, found=found,
                    facts=plan.facts, backend=plan.backend, installer=plan.installer, prefix=prefix,
                    torch_index_url=plan.torch_index_url, index_url=plan.index_url,
                    extra_index_urls=plan.extra_index_urls, find_links=plan.find_links)
                lock_path = lockmod.write(prefix, doc)
                record.update(status="complete", completed=_now(), python_version=found.python,
                              torch_installed=found.version("torch"), pid=None)
                _write_record(prefix, record)
                _update_registry(environ, prefix, {"profile": plan.profile.name,
                                                   "completed": record["completed"]})
        except ProvisionError as e:
            if prefix.exists() and step.key not in ("remove",):
                with contextlib.suppress(OSError):
                    if read_record(prefix) is not None or step.key != "create":
                        record.update(status="building", error=_short_error(step, e), pid=None)
                        _write_record(prefix, record)
            raise _step_error(step, e, plan) from None
        say(f"[{i}/{total}] {step.title}: done in {time.monotonic() - t0:.1f} s")
    assert lock_path is not None
    return EnvResult(prefix, plan.python, plan.profile.name, "created", lock_path,
                     time.monotonic() - start, plan, checks)


def _short_error(step: Step, e: ProvisionError) -> str:
    """One line for the record: the step and the last thing the failing tool said."""
    detail = e.message
    if isinstance(e, CommandError):
        lines = [ln.strip() for ln in (e.stderr or e.stdout or e.message).splitlines() if ln.strip()]
        detail = lines[-1] if lines else e.message
    return f"{step.title} failed: {detail.splitlines()[0] if detail else '?'}"


def _step_error(step: Step, e: ProvisionError, plan: CreatePlan) -> ProvisionError:
    if step.key in ("torch", "packages") and isinstance(e, CommandError):
        where = (f"{plan.torch_index_url}" if step.key == "torch" and plan.torch_source == "index"
                 else "the configured indexes")
        return ProvisionError(
            f"{step.title} failed; {plan.prefix} is left half-built\n{e.message}",
            hint=f"check that {where} is reachable and holds "
                 f"{' '.join(plan.torch_requirements if step.key == 'torch' else plan.package_requirements)} "
                 "(--index-url / --find-links point elsewhere); then re-run with --force")
    if step.key == "verify" or isinstance(e, CommandError):
        return ProvisionError(f"{step.title} failed; {plan.prefix} is left half-built\n{e.message}",
                              hint=e.hint or "re-run with --force once the cause is fixed")
    return e


def env_checks(plan: CreatePlan, environ: Mapping[str, str]) -> list[Check]:
    """`provision verify`'s environment checks (env.*) for the new environment, against its profile."""
    from provisioner import envprobe, envtarget, gpu, verify

    target = envtarget.EnvTarget(envtarget.kind_of(plan.prefix), plan.prefix, plan.python)
    info = plan.facts.driver or gpu.DriverInfo(status=plan.facts.driver_status,
                                               error=plan.facts.driver_error)
    probe, problem = envprobe.run(target, environ)
    ctx = verify.EnvContext(target=target, profile=plan.profile, profile_requested=True,
                            fix_profile=plan.profile, root=plan.root)
    return verify.check_env(probe, info, plan.profile, ctx=ctx, probe_error=problem)


def _verify(plan: CreatePlan, environ: Mapping[str, str], status: StatusFactory | None) -> tuple[Check, ...]:
    """The verify environment checks; completion is recorded only when none fails."""
    from provisioner import report

    ctx: ContextManager[Any] = status("verify the environment") if status else contextlib.nullcontext()
    with ctx:
        checks = tuple(env_checks(plan, environ))
    failed = [c for c in checks if c.status is report.Status.FAIL]
    if failed:
        lines = "\n".join(f"    {c.id}: {c.message}" + (f" (fix: {c.fix})" if c.fix else "")
                          for c in failed)
        raise ProvisionError(f"the new environment failed {len(failed)} verify check(s):\n{lines}",
                             hint=f"see `provision verify --env {plan.prefix}`; fix the cause and "
                                  "re-run with --force")
    return checks


def create_env(*, prefix: Path | str | None = None, name: str | None = None,
               profile: str | None = "auto", cuda: str | None = None, backend: str = "auto",
               python_version: str | None = None, torch: str | None = None,
               index_url: str | None = None, extra_index_url: str | Sequence[str] | None = None,
               find_links: str | Sequence[str] | None = None, channels: Sequence[str] = (),
               installer: str = "auto", allow_insecure_index: bool = False,
               from_lock: Path | str | None = None, force: bool = False,
               root: Path, environ: Mapping[str, str], progress: Progress | None = None,
               status: StatusFactory | None = None, facts: MachineFacts | None = None,
               confirm_download: Callable[[CreatePlan], bool] | None = None) -> EnvResult:
    """Plan and apply in one call (what `provision up` uses); "up-to-date" when nothing changed.

    `confirm_download` is asked before a build that fetches torch from an index (a CUDA build is
    several GB); a False answer raises ProvisionError and changes nothing.
    """
    options = CreateOptions(
        name=name, prefix=Path(prefix) if prefix is not None else None, profile=profile, cuda=cuda,
        backend=backend, python=python_version, torch=torch, index_url=index_url,
        extra_index_urls=_as_list(extra_index_url), find_links=_as_list(find_links),
        channels=tuple(channels), installer=installer, allow_insecure_index=allow_insecure_index,
        from_lock=Path(from_lock) if from_lock is not None else None, force=force)
    plan = plan_create(options, root=root, environ=environ, facts=facts)
    if (confirm_download is not None and plan.action != "up-to-date" and plan.torch_source == "index"
            and not confirm_download(plan)):
        raise ProvisionError(f"not building {plan.prefix}: the torch download was declined",
                             hint="re-run with --yes, or give a local wheel folder with --find-links")
    return apply_create(plan, environ=environ, progress=progress, status=status)


# --- list, remove, export ----------------------------------------------------------------------


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
        return _expand(target, environ)
    for info in list_envs(environ):
        if info.name == target:
            return info.prefix
    return default_prefix(target, environ)


@dataclass(frozen=True)
class RemovePlan:
    prefix: Path
    record: Mapping[str, Any] | None
    steps: tuple[Step, ...]

    def describe(self) -> str:
        what = f"profile {self.record.get('profile')}" if self.record else "half-built"
        lines = [f"Remove {self.prefix} ({what}):"]
        lines += [f"  {i}. {s.title}: {s.shown()}" for i, s in enumerate(self.steps, 1)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": str(self.prefix), "profile": (self.record or {}).get("profile"),
                "steps": [s.to_dict() for s in self.steps]}


def plan_remove(target: str | None, environ: Mapping[str, str]) -> RemovePlan:
    """Only environments provision created (a record inside, or a registry entry) are removed."""
    prefix = resolve_env(target, environ)
    record = read_record(prefix)
    registered = str(prefix) in read_registry(environ)
    if record is None and not registered:
        if not prefix.exists():
            raise ProvisionError(f"no environment at {prefix}",
                                 hint="`provision env list` shows the environments provision created")
        raise ProvisionError(
            f"{prefix} was not created by provision (no {RECORD_NAME} in it); not removing it",
            hint="provision only removes environments it built; delete this one yourself if you "
                 "are sure")
    if is_building_now(prefix, environ):
        raise ProvisionError(f"{prefix} is being built right now", hint="wait for it to finish")
    location = Location(prefix, prefix.name)
    steps = []
    if prefix.exists():
        steps.append(_remove_step(location, record, VenvBackend(Path(sys.executable)), environ))
    steps.append(Step("unregister", "forget it", (), detail=f"drop it from {registry_path(environ)}"))
    return RemovePlan(prefix, record, tuple(steps))


def apply_remove(plan: RemovePlan, *, environ: Mapping[str, str]) -> None:
    env = _step_environ(environ)
    for step in plan.steps:
        if step.key == "remove":
            if step.argv:
                try:
                    proc.run(step.argv, env=env, timeout=step.timeout)
                except CommandError as e:
                    raise ProvisionError(f"{step.title} failed: {e.message}",
                                         hint=f"run `{step.shown()}` by hand to see why") from None
            _delete(plan.prefix)
        elif step.key == "unregister":
            _update_registry(environ, plan.prefix, None)


def apply(plan: CreatePlan | RemovePlan, *, environ: Mapping[str, str],
          progress: Progress | None = None) -> EnvResult | None:
    """Run a create or remove plan."""
    if isinstance(plan, RemovePlan):
        apply_remove(plan, environ=environ)
        return None
    return apply_create(plan, environ=environ, progress=progress)


def export_lock(target: str | None, environ: Mapping[str, str]) -> tuple[Path, dict[str, Any]]:
    """The lock of a complete environment (NAME or PATH): its path and document."""
    prefix = resolve_env(target, environ)
    path = prefix / lockmod.LOCK_NAME
    st = env_status(prefix, environ)
    if not path.is_file():
        if st is None:
            raise ProvisionError(f"no environment created by provision at {prefix}",
                                 hint="`provision env list` shows them; create one with "
                                      "`provision env create`")
        raise ProvisionError(f"{prefix} has no lock ({st})",
                             hint="a lock is written when `provision env create` completes; "
                                  "re-run it with --force")
    lockmod.read(path)    # refuse to export something that cannot be read back
    return path, json.loads(path.read_text())
