"""The profile file format: the keys a profile may hold and the reader that checks each one,
naming the file and key path of every problem (did-you-mean for unknown keys)."""

import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

import provisioner
from provisioner import yamldata
from provisioner.errors import ProfileError, ProvisionError
from provisioner.versions import CudaVersion, DriverVersion

TOP_KEYS = ("name", "description", "cuda", "python", "torch", "packages", "extras", "driver_min",
            "compute_capabilities", "ptx", "sources")
REQUIRED_KEYS = ("name", "cuda", "python", "torch", "packages", "sources")
TORCH_KEYS = ("version", "index_url", "torchvision", "torchaudio")
#: Keys of `sources`. `torch` covers the wheel: cuda, index_url, torchvision, torchaudio;
#: `compute_capabilities` covers ptx.
FACT_KEYS = ("python", "torch", "packages", "extras", "driver_min", "compute_capabilities")

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


def cc_str(cc: CC) -> str:
    return f"{cc[0]}.{cc[1]}"


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


def bundled_dir() -> Path:
    """The bundled profiles: profiles/ beside the package in a checkout (or an editable install),
    else <prefix>/share/provision/profiles where a wheel install puts them (setup.cfg data_files)."""
    beside = Path(provisioner.__file__).parent.parent / "profiles"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / "provision" / "profiles"


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
        doc = yamldata.load(text)
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
    pkg_doc = r.typed(doc["packages"], "packages", dict) if "packages" in doc else None
    return _requirements(r, pkg_doc or {}, "packages")


def _extras(r: _Reader, doc: Mapping[Any, Any]) -> dict[str, dict[str, SpecifierSet]]:
    """`extras: {web: {gradio: ">=6.0,<7"}}`: packages installed on first use of a feature, not by `env create`."""
    extras: dict[str, dict[str, SpecifierSet]] = {}
    extras_doc = r.typed(doc.get("extras"), "extras", dict, nullable=True) or {}
    for name, pkg_doc in extras_doc.items():
        if not isinstance(name, str) or not _PACKAGE.match(name):
            r.problem(f"extras.{name}", "not a valid extra name")
            continue
        pkg_doc = r.typed(pkg_doc, f"extras.{name}", dict)
        if pkg_doc is not None:
            extras[name] = _requirements(r, pkg_doc, f"extras.{name}")
    return extras


def _requirements(r: _Reader, pkg_doc: Mapping[Any, Any], prefix: str) -> dict[str, SpecifierSet]:
    packages: dict[str, SpecifierSet] = {}
    for pkg, spec in pkg_doc.items():
        key = f"{prefix}.{pkg}"
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


