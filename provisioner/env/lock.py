"""provision.lock.json: what an environment was built from and holds, so it can be rebuilt exactly."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from provisioner import fsio, proc, redact
from provisioner.env import pylock as pylockmod
from provisioner.errors import ProvisionError
from provisioner.versions import CudaVersion, DriverVersion

if TYPE_CHECKING:
    from provisioner.env.choose import MachineFacts
    from provisioner.profiles import Profile

LOCK_NAME = "provision.lock.json"
LOCK_VERSION = 1
#: The torch wheel and its companions come from the torch index; everything else from the default.
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
#: Installer plumbing that a lock does not pin (uv-made venvs have no pip at all).
UNPINNED = ("pip",)

# Runs inside the environment: distribution metadata only, so a broken torch cannot break it.
_LIST_SCRIPT = """\
import json, sys, importlib.metadata as md
found = {}
for d in md.distributions():
    name = d.metadata["Name"]
    if name and name not in found:
        found[name] = d.version
print(json.dumps({"python": "%d.%d.%d" % sys.version_info[:3], "packages": found}))
"""


# Runs inside the environment: each locked distribution is there, at the locked version, with every
# file its RECORD lists (a package folder moved away leaves its metadata behind).
_CHECK_SCRIPT = """\
import json, os, sys, importlib.metadata as md
want = json.loads(sys.argv[1])
problems = []
for name, version in sorted(want.items()):
    try:
        d = md.distribution(name)
    except md.PackageNotFoundError:
        problems.append(f"{name} {version} is not installed")
        continue
    if d.version != version:
        problems.append(f"{name} is {d.version}, the lock says {version}")
        continue
    missing = [str(f) for f in (d.files or []) if not os.path.exists(d.locate_file(f))]
    if missing:
        problems.append(f"{name} {version}: {len(missing)} of its files are missing (e.g. {missing[0]})")
print(json.dumps(problems))
"""


def installed_problems(python: Path, prefix: Path, environ: Mapping[str, str] | None = None,
                       timeout: float = 120) -> list[str]:
    """What differs between the environment and its lock: missing or other versions, missing files."""
    try:
        doc = json.loads((prefix / LOCK_NAME).read_text())
        want = dict(doc.get("packages") or {})
        for req in (doc.get("torch") or {}).get("requirements") or []:
            name, _, version = str(req).partition("==")
            if version:
                want[name] = version
    except (OSError, ValueError, AttributeError) as e:
        return [f"its lock {prefix / LOCK_NAME} cannot be read ({e})"]
    want = {k: v for k, v in want.items() if canonicalize_name(k) not in UNPINNED}
    try:
        done = proc.run([python, "-I", "-c", _CHECK_SCRIPT, json.dumps(want)], env=environ, timeout=timeout)
        problems = json.loads(done.stdout)
    except (ProvisionError, ValueError) as e:
        return [f"its Python cannot list its packages ({getattr(e, 'message', e)})"]
    return [str(p) for p in problems]


@dataclass(frozen=True)
class Installed:
    python: str                           # "3.11.7"
    packages: Mapping[str, str]           # distribution name -> version, as the metadata spells them

    def version(self, name: str) -> str | None:
        want = canonicalize_name(name)
        return next((v for k, v in self.packages.items() if canonicalize_name(k) == want), None)


def installed(python: Path, environ: Mapping[str, str] | None = None, timeout: float = 60) -> Installed:
    """Every distribution the environment's interpreter sees, read from metadata (no imports)."""
    # -I: neither the working directory nor user site-packages may add distributions
    done = proc.run([python, "-I", "-c", _LIST_SCRIPT], env=environ, timeout=timeout)
    try:
        doc = json.loads(done.stdout)
        return Installed(str(doc["python"]), MappingProxyType(dict(sorted(doc["packages"].items()))))
    except (ValueError, KeyError, TypeError) as e:
        raise ProvisionError(f"could not read the installed packages of {python}: {e}",
                             hint="run `provision verify --env PREFIX` to see what is wrong") from None


@dataclass(frozen=True)
class Lock:
    """A parsed lock file (see build() for the document it comes from)."""

    path: Path | None
    profile_name: str
    variant: str                          # "cpu" or "cu126": the torch build
    cuda: CudaVersion | None
    python: str                           # "3.11" (the X.Y the environment was built with)
    python_full: str | None
    driver_min: DriverVersion | None
    compute_capabilities: tuple[tuple[int, int], ...]
    ptx: tuple[int, int] | None
    profile_packages: tuple[str, ...]     # the packages the profile named (its ranges' keys)
    torch_index_url: str
    torch_requirements: tuple[str, ...]   # exact, with the build label: torch==2.13.0+cpu
    packages: Mapping[str, str] = field(hash=False)       # every other distribution -> version
    indexes: Mapping[str, Any] = field(hash=False, default_factory=dict)
    machine: Mapping[str, Any] = field(hash=False, default_factory=dict)
    backend: str | None = None
    created: str | None = None
    pylock: Path | None = None            # pylock.toml beside it: every wheel's URL and hashes
    pylock_sha256: str = ""

    def requirements(self) -> list[str]:
        """`name==version` for every non-torch distribution, sorted."""
        return [f"{name}=={version}" for name, version in sorted(self.packages.items())
                if canonicalize_name(name) not in UNPINNED]

    def as_profile(self) -> Profile:
        """A Profile whose packages are this lock's exact pins, so the create path and the
        verify checks treat a lock like any other profile."""
        from provisioner.profiles import Profile

        pins = {_name(r): Version(_version(r).public) for r in self.torch_requirements}
        torch = pins.get("torch")
        if torch is None:
            raise ProvisionError(f"{self.path or 'the lock'}: no torch pin in torch.requirements",
                                 hint="export the lock again with `provision env export`")
        return Profile(
            name=self.profile_name,
            path=self.path or Path(LOCK_NAME),
            description=f"rebuilt from {self.path or 'a lock'}",
            cuda=self.cuda,
            python=self.python,
            torch=torch,
            torch_index_url=self.torch_index_url,
            torchvision=pins.get("torchvision"),
            torchaudio=pins.get("torchaudio"),
            # the profile's own packages, pinned to what was installed: what verify checks
            packages=MappingProxyType({n: SpecifierSet(f"=={self.packages[n]}")
                                       for n in self.profile_packages if n in self.packages}),
            driver_min=self.driver_min,
            compute_capabilities=self.compute_capabilities,
            ptx=self.ptx,
            sources=MappingProxyType({}),
        )


def _name(req: str) -> str:
    return canonicalize_name(req.split("==", 1)[0])


def _version(req: str) -> Version:
    return Version(req.split("==", 1)[1])


def _installed_name(name: str, packages: Mapping[str, str]) -> str:
    """The spelling the installed metadata uses for a profile's package name."""
    want = canonicalize_name(name)
    return next((k for k in packages if canonicalize_name(k) == want), name)


def _cc_text(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def _cc(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def _clean_url(url: str) -> str:
    # a lock travels to other machines: never carry index credentials along
    return redact.redact_text(url)


def build(*, profile: Profile, torch_requirements: Sequence[str], found: Installed,
          facts: MachineFacts, backend: str, installer: str, prefix: Path,
          torch_index_url: str, index_url: str | None, extra_index_urls: Sequence[str],
          find_links: Sequence[str], pylock: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The lock document for an environment that just passed its checks; `pylock` names the
    pylock.toml written beside it ({"file", "sha256"}), or says why there is none ({"error"})."""
    torch_names = {_name(r) for r in torch_requirements}
    exact_torch = []
    for req in torch_requirements:
        have = found.version(_name(req))
        # record what is installed (2.13.0+cpu), which is what the pin asked for
        exact_torch.append(f"{_name(req)}=={have}" if have else req)
    packages = {name: version for name, version in found.packages.items()
                if canonicalize_name(name) not in torch_names}
    return {
        "version": LOCK_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile": {
            "name": profile.name,
            "variant": profile.variant,
            "cuda": profile.cuda.short if profile.cuda else None,
            "python": profile.python,
            "driver_min": str(profile.driver_min) if profile.driver_min else None,
            "compute_capabilities": [_cc_text(c) for c in profile.compute_capabilities],
            "ptx": _cc_text(profile.ptx) if profile.ptx else None,
            "packages": {name: str(spec) for name, spec in profile.packages.items()},
        },
        "machine": facts.to_dict(),
        "environment": {"prefix": str(prefix), "backend": backend, "installer": installer,
                        "python": found.python},
        "indexes": {
            "torch_index_url": _clean_url(torch_index_url),
            "index_url": _clean_url(index_url) if index_url else None,
            "extra_index_urls": [_clean_url(u) for u in extra_index_urls],
            "find_links": [_clean_url(u) for u in find_links],
        },
        "torch": {"requirements": exact_torch},
        "packages": packages,
        "pylock": dict(pylock) if pylock else None,
    }


def write(prefix: Path, doc: Mapping[str, Any]) -> Path:
    """<prefix>/provision.lock.json, written atomically."""
    return write_json(prefix / LOCK_NAME, doc)


def write_json(target: Path, doc: Any) -> Path:
    """`doc` as indented JSON, written atomically; readable by this user only, as it always was."""
    return fsio.atomic_write(target, json.dumps(doc, indent=2, default=str) + "\n", mode=0o600)


def exported(doc: Mapping[str, Any], lock_dir: Path) -> dict[str, Any]:
    """The lock as `env export` prints it: its pylock.toml named by absolute path (it stays in the env)."""
    out = dict(doc)
    ref = pylockmod.reference(lock_dir, doc.get("pylock"))
    if ref is not None:
        out["pylock"] = {**dict(doc.get("pylock") or {}), "file": str(ref[0])}
    return out


def export_to(doc: Mapping[str, Any], lock_dir: Path, output: Path) -> list[Path]:
    """Write the lock to `output` and its pylock.toml beside it (`pylock.NAME.toml`, PEP 751's naming,
    NAME from the output's name), so the two travel together; returns the files written."""
    ref = pylockmod.reference(lock_dir, doc.get("pylock"))
    out = dict(doc)
    written = []
    if ref is not None:
        stem = re.sub(r"[^A-Za-z0-9_-]", "-", output.name.split(".")[0]) or "env"
        name = pylockmod.PYLOCK_NAME if stem == "provision" else f"pylock.{stem}.toml"
        pylockmod.check_reference(ref[0], ref[1], lock_dir / LOCK_NAME)
        written.append(fsio.atomic_write(output.parent / name, ref[0].read_bytes()))
        out["pylock"] = {**dict(doc.get("pylock") or {}), "file": name}
    written.insert(0, write_json(output, out))
    return written


def read(path: Path) -> Lock:
    """Parse a lock file; ProvisionError naming the file and the bad key otherwise."""
    hint = "export it again with `provision env export --output FILE`"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ProvisionError(f"cannot read lock file {path}: {e.strerror or e}",
                             hint="check the path") from None
    except ValueError as e:
        raise ProvisionError(f"{path}: not a JSON lock file ({e})", hint=hint) from None
    if not isinstance(doc, dict) or doc.get("version") != LOCK_VERSION:
        raise ProvisionError(f"{path}: not a provision lock (version {LOCK_VERSION})", hint=hint)
    try:
        prof = _get(doc, "profile")
        reqs = tuple(str(r) for r in _get(doc, "torch.requirements"))
        for r in reqs:
            _version(r)                   # every torch pin is exact
        packages = {str(k): str(v) for k, v in _get(doc, "packages").items()}
        for v in packages.values():
            Version(v)
        env = doc.get("environment") or {}
        ref = pylockmod.reference(path.parent, doc.get("pylock"))
        return Lock(
            path=path,
            profile_name=str(_get(doc, "profile.name")),
            variant=str(_get(doc, "profile.variant")),
            cuda=CudaVersion.parse(prof["cuda"]) if prof.get("cuda") else None,
            python=str(_get(doc, "profile.python")),
            python_full=env.get("python"),
            driver_min=DriverVersion.parse(prof["driver_min"]) if prof.get("driver_min") else None,
            compute_capabilities=tuple(_cc(c) for c in prof.get("compute_capabilities") or ()),
            ptx=_cc(prof["ptx"]) if prof.get("ptx") else None,
            profile_packages=tuple(_installed_name(n, packages)
                                   for n in (prof.get("packages") or {})),
            torch_index_url=str(_get(doc, "indexes.torch_index_url")),
            torch_requirements=reqs,
            packages=MappingProxyType(packages),
            indexes=MappingProxyType(dict(_get(doc, "indexes"))),
            machine=MappingProxyType(dict(doc.get("machine") or {})),
            backend=env.get("backend"),
            created=doc.get("created"),
            pylock=ref[0] if ref else None,
            pylock_sha256=ref[1] if ref else "",
        )
    except _Missing as e:
        raise ProvisionError(f"{path}: invalid lock file: missing key '{e.key}'", hint=hint) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, InvalidVersion,
            ProvisionError) as e:
        raise ProvisionError(f"{path}: invalid lock file: {e}", hint=hint) from None


class _Missing(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _get(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise _Missing(dotted)
        value = value[part]
    return value


def check_runnable(lock: Lock, facts: MachineFacts) -> list[str]:
    """Why this machine cannot run what the lock describes (empty: it can)."""
    from provisioner.env.choose import profile_problems

    return profile_problems(lock.as_profile(), facts)
