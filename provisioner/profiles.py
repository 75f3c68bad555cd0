"""profiles/*.yaml -> frozen Profile dataclasses; every validation message lives here."""
from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

import provisioner
from provisioner import paths
from provisioner.errors import ProfileError, ProvisionError, UsageError
from provisioner.versions import CudaVersion, DriverVersion

TOP_KEYS = ("name", "description", "cuda", "python", "torch", "packages", "driver_min",
            "compute_capabilities", "ptx", "sources")
REQUIRED_KEYS = ("name", "cuda", "python", "torch", "packages", "sources")
TORCH_KEYS = ("version", "index_url", "torchvision", "torchaudio")
#: Keys of `sources`. `torch` covers the wheel: cuda, index_url, torchvision, torchaudio;
#: `compute_capabilities` covers ptx.
FACT_KEYS = ("python", "torch", "packages", "driver_min", "compute_capabilities")

_PYTHON = re.compile(r"^3\.\d{1,2}$")
_CC = re.compile(r"^(\d{1,2})\.(\d)$")
_PACKAGE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "a list", dict: "a mapping", type(None): "null"}

VALIDATE_HINT = "fix the file, then check it with `provision profile validate FILE`"


class InvalidProfile(ProfileError):
    """A profile file failed validation; `problems` holds one `file: key.path: ...` line each."""

    def __init__(self, problems: Sequence[str], *, hint: str | None = VALIDATE_HINT) -> None:
        super().__init__("\n".join(problems), hint=hint)
        self.problems = tuple(problems)


CC = tuple[int, int]


@dataclass(frozen=True)
class Profile:
    """One validated profile: the torch wheel for a CUDA line and the stack installed around it."""

    name: str
    path: Path
    description: str
    cuda: CudaVersion | None            # None: the CPU build
    python: str                         # "3.11"
    torch: Version
    torch_index_url: str
    torchvision: Version | None
    torchaudio: Version | None
    packages: Mapping[str, SpecifierSet] = field(hash=False)
    driver_min: DriverVersion | None
    compute_capabilities: tuple[CC, ...]
    ptx: CC | None                      # highest arch also shipped as PTX (JIT-able on newer GPUs)
    sources: Mapping[str, str] = field(hash=False)

    @property
    def is_cpu(self) -> bool:
        return self.cuda is None

    @property
    def variant(self) -> str:
        """The wheel variant: "cu126", or "cpu"."""
        return "cpu" if self.cuda is None else self.cuda.tag

    def supports_cc(self, cc: CC) -> bool:
        """Whether this wheel has kernels for a GPU of compute capability `cc`.

        A cubin for sm_XY runs on sm_XZ with Z >= Y (CUDA C Programming Guide, "Binary
        Compatibility"), so 8.6 covers 8.9; PTX of arch P is JIT-compiled for any cc >= P.
        """
        if any(major == cc[0] and minor <= cc[1] for major, minor in self.compute_capabilities):
            return True
        return self.ptx is not None and cc >= self.ptx

    def torch_requirements(self, torch_version: str | None = None) -> list[str]:
        """Pins for the torch install: torch plus its companions when torch is the profile's own."""
        if torch_version is not None:
            try:
                wanted = Version(torch_version)
            except InvalidVersion:
                raise UsageError(f"'{torch_version}' is not a valid torch version",
                                 hint=f"write it as {self.torch}") from None
            if wanted != self.torch:
                # companions are paired with one torch release; let pip pick them for another
                return [f"torch=={wanted}"]
        reqs = [f"torch=={self.torch}"]
        if self.torchvision is not None:
            reqs.append(f"torchvision=={self.torchvision}")
        if self.torchaudio is not None:
            reqs.append(f"torchaudio=={self.torchaudio}")
        return reqs

    def package_requirements(self) -> list[str]:
        """["transformers>=5.0,<6", ...] in the profile's order."""
        return [f"{name}{spec_text(spec)}" for name, spec in self.packages.items()]

    def install_commands(self, python: str = "python") -> list[list[str]]:
        """Torch from the profile's index first (so nothing pulls another build), then the rest."""
        return [
            [python, "-m", "pip", "install", *self.torch_requirements(),
             "--index-url", self.torch_index_url],
            [python, "-m", "pip", "install", *self.package_requirements()],
        ]

    def check_versions(self, installed: Mapping[str, str]) -> list[str]:
        """Problems with installed versions against this profile; absent packages are skipped
        (the caller reports what is missing)."""
        have: dict[str, str] = {canonicalize_name(k): v for k, v in installed.items()}
        problems: list[str] = []

        def installed_version(name: str) -> Version | None:
            text = have.get(canonicalize_name(name))
            if text is None:
                return None
            try:
                return Version(text)
            except InvalidVersion:
                problems.append(f"{name} {text}: not a valid version")
                return None

        for name, want in self._pins():
            got = installed_version(name)
            if got is None:
                continue
            if Version(got.public) != want:
                problems.append(f"{name} {got} is installed; profile {self.name} pins {want}")
            elif name == "torch" and got.local and got.local != self.variant:
                problems.append(f"torch {got} is the {got.local} build; profile {self.name} wants "
                                f"the {self.variant} build from {self.torch_index_url}")
        for name, spec in self.packages.items():
            got = installed_version(name)
            if got is None:
                continue
            if not spec.contains(got, prereleases=True):
                problems.append(f"{name} {got} is outside profile {self.name}'s range "
                                f"{spec_text(spec)}")
        return problems

    def _pins(self) -> list[tuple[str, Version]]:
        pins = [("torch", self.torch)]
        if self.torchvision is not None:
            pins.append(("torchvision", self.torchvision))
        if self.torchaudio is not None:
            pins.append(("torchaudio", self.torchaudio))
        return pins

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (versions as strings)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "description": self.description,
            "cuda": None if self.cuda is None else str(self.cuda),
            "variant": self.variant,
            "python": self.python,
            "torch": {"version": str(self.torch), "index_url": self.torch_index_url,
                      "torchvision": _str_or_none(self.torchvision),
                      "torchaudio": _str_or_none(self.torchaudio)},
            "packages": {k: spec_text(v) for k, v in self.packages.items()},
            "driver_min": _str_or_none(self.driver_min),
            "compute_capabilities": [cc_str(cc) for cc in self.compute_capabilities],
            "ptx": None if self.ptx is None else cc_str(self.ptx),
            "sources": dict(self.sources),
            "install": self.install_commands(),
        }


def _str_or_none(value: object | None) -> str | None:
    return None if value is None else str(value)


def spec_text(spec: SpecifierSet) -> str:
    """">=5.0,<6": lower bounds first (str(SpecifierSet) sorts them the other way round)."""
    return ",".join(str(s) for s in sorted(spec, key=lambda s: (s.operator.startswith("<"), str(s))))


def cc_str(cc: CC) -> str:
    return f"{cc[0]}.{cc[1]}"


# --- loading and validation -------------------------------------------------------------------


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class _Reader:
    """Collects `file: key.path: problem` lines while reading one document."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.problems: list[str] = []

    def problem(self, key: str | None, message: str) -> None:
        self.problems.append(f"{self.display}: {key}: {message}" if key else
                             f"{self.display}: {message}")

    def keys(self, doc: Mapping[Any, Any], allowed: Sequence[str], prefix: str = "") -> None:
        for key in doc:
            if not isinstance(key, str):
                self.problem(None, f"key {key!r} under '{prefix or 'top level'}' must be a string")
            elif key not in allowed:
                full = f"{prefix}{key}"
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                tip = (f"did you mean '{prefix}{close[0]}'?" if close
                       else "expected one of: " + ", ".join(allowed))
                self.problem(None, f"unknown key '{full}' ({tip})")

    def require(self, doc: Mapping[str, Any], keys: Sequence[str], prefix: str = "") -> None:
        for key in keys:
            if key not in doc:
                self.problem(None, f"missing required key '{prefix}{key}'")

    def typed(self, value: object, key: str, kind: type, *, nullable: bool = False) -> Any:
        """value if it has type `kind` (or is None when nullable), else a problem and None."""
        if value is None and nullable:
            return None
        # bool is an int subclass in Python; YAML `yes` must not pass as a number
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        wanted = _TYPE_NAMES[kind] + (" or null" if nullable else "")
        got = f"{_type_name(value)} {value!r}" if not isinstance(value, (dict, list)) else _type_name(value)
        tip = ""
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            # unquoted 12.10 would read as 12.1: versions must be quoted
            tip = f' (quote it: "{value}")'
        self.problem(key, f"expected {wanted}, got {got}{tip}")
        return None

    def version(self, value: object, key: str, *, nullable: bool = False) -> Version | None:
        text = self.typed(value, key, str, nullable=nullable)
        if text is None:
            return None
        try:
            return Version(text)
        except InvalidVersion:
            self.problem(key, f"'{text}' is not a valid version (write it as 2.13.0)")
            return None

    def cc(self, value: object, key: str, *, nullable: bool = False) -> CC | None:
        text = self.typed(value, key, str, nullable=nullable)
        if text is None:
            return None
        m = _CC.match(text)
        if not m:
            self.problem(key, f"'{text}' is not a compute capability (write it as 8.6)")
            return None
        return int(m[1]), int(m[2])


def _display(path: Path) -> str:
    """Bundled profiles show as `profiles/cu126.yaml`; any other path as given."""
    try:
        return str(path.relative_to(bundled_dir().parent))
    except ValueError:
        return str(path)


def _read(path: Path, shown: str) -> dict[Any, Any]:
    """The file's top-level mapping; unreadable, non-YAML or non-mapping files end here."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidProfile([f"{shown}: cannot read: {e.strerror or e}"],
                             hint="check the path") from None
    except UnicodeDecodeError:
        raise InvalidProfile([f"{shown}: not a UTF-8 text file"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InvalidProfile([f"{shown}: {where}invalid YAML: {e.problem or e.context}"]) from None
    except yaml.YAMLError as e:
        raise InvalidProfile([f"{shown}: invalid YAML: {e}"]) from None
    if doc is None:
        raise InvalidProfile([f"{shown}: the file is empty"])
    if not isinstance(doc, dict):
        raise InvalidProfile([f"{shown}: expected a mapping at the top level, got {_type_name(doc)}"])
    return doc


@dataclass
class _Torch:
    version: Version | None = None
    index_url: str | None = None
    torchvision: Version | None = None
    torchaudio: Version | None = None


def _torch(r: _Reader, doc: Mapping[Any, Any]) -> _Torch:
    out = _Torch()
    torch_doc = r.typed(doc["torch"], "torch", dict) if "torch" in doc else None
    if torch_doc is None:
        return out
    r.keys(torch_doc, TORCH_KEYS, "torch.")
    r.require(torch_doc, ("version", "index_url"), "torch.")
    if "version" in torch_doc:
        out.version = r.version(torch_doc["version"], "torch.version")
    if "index_url" in torch_doc:
        url = r.typed(torch_doc["index_url"], "torch.index_url", str)
        if url is not None and not re.match(r"^(https?|file)://\S+$", url):
            r.problem("torch.index_url", f"'{url}' is not an http(s) URL")
        else:
            out.index_url = url
    out.torchvision = r.version(torch_doc.get("torchvision"), "torch.torchvision", nullable=True)
    out.torchaudio = r.version(torch_doc.get("torchaudio"), "torch.torchaudio", nullable=True)
    return out


def _packages(r: _Reader, doc: Mapping[Any, Any]) -> dict[str, SpecifierSet]:
    packages: dict[str, SpecifierSet] = {}
    pkg_doc = r.typed(doc["packages"], "packages", dict) if "packages" in doc else None
    for pkg, spec in (pkg_doc or {}).items():
        key = f"packages.{pkg}"
        if not isinstance(pkg, str) or not _PACKAGE.match(pkg):
            r.problem(key, "not a valid package name")
            continue
        if canonicalize_name(pkg) in {"torch", "torchvision", "torchaudio"}:
            r.problem(key, "torch and its companions belong under 'torch:', not 'packages:'")
            continue
        range_text = r.typed(spec, key, str)
        if range_text is None:
            continue
        try:
            packages[pkg] = SpecifierSet(range_text)
        except InvalidSpecifier:
            r.problem(key, f"'{range_text}' is not a valid version range (write it as >=5.0,<6)")
    return packages


@dataclass
class _Gpu:
    cuda: CudaVersion | None = None
    driver_min: DriverVersion | None = None
    ccs: tuple[CC, ...] = ()
    ptx: CC | None = None


def _gpu(r: _Reader, doc: Mapping[Any, Any]) -> _Gpu:
    """cuda, driver_min, compute_capabilities and ptx, which must agree with each other."""
    out = _Gpu()
    cuda_text = r.typed(doc["cuda"], "cuda", str, nullable=True) if "cuda" in doc else None
    if cuda_text is not None:
        try:
            out.cuda = CudaVersion.parse(cuda_text)
        except ProvisionError:
            r.problem("cuda", f"'{cuda_text}' is not a CUDA version (write it as 12.6, or null for CPU)")
    driver_text = r.typed(doc.get("driver_min"), "driver_min", str, nullable=True)
    if driver_text is not None:
        try:
            out.driver_min = DriverVersion.parse(driver_text)
        except ProvisionError:
            r.problem("driver_min", f"'{driver_text}' is not an NVIDIA driver version "
                                    "(write it as 525.60.13)")
    ccs_doc = r.typed(doc.get("compute_capabilities"), "compute_capabilities", list,
                      nullable=True) or []
    ccs = [r.cc(item, f"compute_capabilities[{i}]") for i, item in enumerate(ccs_doc)]
    out.ccs = tuple(cc for cc in ccs if cc is not None)
    out.ptx = r.cc(doc.get("ptx"), "ptx", nullable=True)
    if out.ptx is not None and out.ccs and out.ptx not in out.ccs:
        r.problem("ptx", f"'{cc_str(out.ptx)}' is not in compute_capabilities "
                         "(PTX is shipped for one of them)")

    # a CUDA wheel names its driver floor and archs; a CPU one has neither
    if "cuda" in doc and doc["cuda"] is None:
        if doc.get("driver_min") is not None:
            r.problem("driver_min", "set, but cuda is null (a CPU profile needs no driver)")
        if ccs_doc:
            r.problem("compute_capabilities", "set, but cuda is null (a CPU profile has no GPU archs)")
        if doc.get("ptx") is not None:
            r.problem("ptx", "set, but cuda is null")
    elif out.cuda is not None:
        for key, why in (("driver_min", "its minimum driver"),
                         ("compute_capabilities", "the GPU archs its wheel has")):
            if key not in doc:
                r.problem(None, f"missing required key '{key}' (a CUDA profile names {why})")
            elif not doc[key]:
                state = "null" if doc[key] is None else "empty"
                r.problem(key, f"{state}, but cuda is set (a CUDA profile names {why})")
    return out


def _sources(r: _Reader, doc: Mapping[Any, Any]) -> dict[str, str]:
    sources: dict[str, str] = {}
    src_doc = r.typed(doc["sources"], "sources", dict) if "sources" in doc else None
    if src_doc is None:
        return sources
    r.keys(src_doc, FACT_KEYS, "sources.")
    for key in FACT_KEYS:
        if key in src_doc:
            text = r.typed(src_doc[key], f"sources.{key}", str)
            if text is not None and not text.strip():
                r.problem(f"sources.{key}", "empty (say where this fact comes from)")
            elif text is not None:
                sources[key] = " ".join(text.split())
        elif doc.get(key) not in (None, [], {}, ""):
            r.problem(f"sources.{key}", "missing (every fact needs a source)")
    return sources


def load(path: Path | str, *, display: str | None = None) -> Profile:
    """Read and validate one profile file; raise InvalidProfile (exit 2) naming each bad key."""
    path = Path(path)
    r = _Reader(display if display is not None else _display(path))
    doc = _read(path, r.display)
    r.keys(doc, TOP_KEYS)
    r.require(doc, REQUIRED_KEYS)

    name = r.typed(doc["name"], "name", str) if "name" in doc else None
    if name is not None and name != path.stem:
        r.problem("name", f"'{name}' does not match the file name (expected '{path.stem}')")
    description = r.typed(doc.get("description"), "description", str, nullable=True) or ""
    python = r.typed(doc["python"], "python", str) if "python" in doc else None
    if python is not None and not _PYTHON.match(python):
        r.problem("python", f"'{python}' is not a Python version (write it as 3.11)")
    torch = _torch(r, doc)
    packages = _packages(r, doc)
    gpu = _gpu(r, doc)
    sources = _sources(r, doc)

    if r.problems:
        raise InvalidProfile(r.problems)
    # no problems means every required value was read
    assert name is not None and python is not None
    assert torch.version is not None and torch.index_url is not None
    return Profile(
        name=name, path=path, description=" ".join(description.split()), cuda=gpu.cuda,
        python=python, torch=torch.version, torch_index_url=torch.index_url,
        torchvision=torch.torchvision, torchaudio=torch.torchaudio,
        packages=MappingProxyType(packages), driver_min=gpu.driver_min,
        compute_capabilities=gpu.ccs, ptx=gpu.ptx, sources=MappingProxyType(sources),
    )


# --- discovery ----------------------------------------------------------------------------------


def bundled_dir() -> Path:
    """The bundled profiles: profiles/ beside the package in a checkout (or an editable install),
    else <prefix>/share/provision/profiles where a wheel install puts them (setup.cfg data_files)."""
    beside = Path(provisioner.__file__).parent.parent / "profiles"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / "provision" / "profiles"


def user_dir(environ: Mapping[str, str]) -> Path:
    """$XDG_CONFIG_HOME/provision/profiles: user profiles override bundled ones by name."""
    return paths.config_dir(environ) / "profiles"


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.suffix in (".yaml", ".yml") and p.is_file())


#: Called once per process for each user profile that is skipped because it is invalid (the CLI
#: prints it to stderr as a warning); None: skipped quietly.
on_skip: Callable[[str], None] | None = None
_warned: set[str] = set()


def profile_files(environ: Mapping[str, str]) -> list[Path]:
    """Every profile file provision reads: the bundled ones, then the user's."""
    return _files(bundled_dir()) + _files(user_dir(environ))


def invalid_user_profiles(environ: Mapping[str, str]) -> dict[str, InvalidProfile]:
    """User profiles that fail validation, by name: skipped by load_all, an error only when named."""
    bad = {}
    for path in _files(user_dir(environ)):
        try:
            load(path)
        except InvalidProfile as e:
            bad[path.stem] = e
    return bad


def load_all(environ: Mapping[str, str]) -> dict[str, Profile]:
    """Bundled profiles, then user profiles replacing them by name; sorted by name.

    One broken user profile must not block every command: it is skipped, with one warning per file
    (through on_skip) naming the file and key; only using it by name fails (get()).
    """
    found: dict[str, Profile] = {}
    for path in _files(bundled_dir()):
        found[path.stem] = load(path)
    for path in _files(user_dir(environ)):
        try:
            found[path.stem] = load(path)
        except InvalidProfile as e:
            if on_skip is not None and str(path) not in _warned:
                _warned.add(str(path))
                first = e.problems[0].removeprefix(f"{_display(path)}: ") if e.problems else "invalid"
                more = f" (+{len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
                on_skip(f"warning: skipping the invalid user profile {path}: {first}{more}; "
                        f"`provision profile validate {path}` lists every problem")
    return dict(sorted(found.items()))


def get(name: str, environ: Mapping[str, str]) -> Profile:
    """The profile called `name` (a CUDA version such as 12.6 picks that line's default)."""
    profiles = load_all(environ)
    broken = invalid_user_profiles(environ)
    if name in profiles and name not in broken:
        return profiles[name]
    if name in broken:
        e = broken[name]
        raise InvalidProfile(e.problems, hint=f"fix or remove the user profile {user_dir(environ)}/{name}.yaml "
                             "(user profiles override bundled ones by name)")
    try:
        by_cuda = profiles.get(CudaVersion.parse(name).tag)
    except UsageError:
        by_cuda = None
    if by_cuda is not None:
        return by_cuda
    close = difflib.get_close_matches(name, list(profiles), n=1, cutoff=0.5)
    tip = f" (did you mean '{close[0]}'?)" if close else ""
    raise UsageError(f"no profile named '{name}'{tip}",
                     hint=f"known profiles: {', '.join(profiles)}; add your own as "
                          f"{user_dir(environ)}/NAME.yaml")


def for_cuda(version: CudaVersion, environ: Mapping[str, str]) -> Profile | None:
    """The default profile for a CUDA line: the one named after its wheel tag (12.6 -> cu126)."""
    return load_all(environ).get(version.tag)
