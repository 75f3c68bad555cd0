"""profiles/*.yaml -> frozen Profile dataclasses; every validation message lives here."""
from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from provisioner import paths
from provisioner.errors import UsageError
from provisioner.versions import CudaVersion, DriverVersion

# The file format lives in profile_schema.py; its public names stay importable from here.
from provisioner.profile_schema import CC as CC
from provisioner.profile_schema import FACT_KEYS as FACT_KEYS
from provisioner.profile_schema import REQUIRED_KEYS as REQUIRED_KEYS
from provisioner.profile_schema import TOP_KEYS as TOP_KEYS
from provisioner.profile_schema import TORCH_KEYS as TORCH_KEYS
from provisioner.profile_schema import VALIDATE_HINT as VALIDATE_HINT
from provisioner.profile_schema import InvalidProfile as InvalidProfile
from provisioner.profile_schema import bundled_dir as bundled_dir
from provisioner.profile_schema import cc_str as cc_str
from provisioner.profile_schema import _PYTHON, _extras, _Reader, _display, _gpu, _packages, _read, _sources, _torch






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
    #: Packages a feature installs on first use (`web`: Gradio for `chat --web`; `serve`: FastAPI, uvicorn).
    extras: Mapping[str, Mapping[str, SpecifierSet]] = field(default_factory=dict, hash=False)

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
            "extras": {name: {k: spec_text(v) for k, v in pkgs.items()} for name, pkgs in self.extras.items()},
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


# --- loading and validation -------------------------------------------------------------------


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
    extras = _extras(r, doc)
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
        extras=MappingProxyType({k: MappingProxyType(v) for k, v in extras.items()}),
    )


# --- discovery ----------------------------------------------------------------------------------


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
