"""CUDA toolkits under a root, the /usr/local/cuda link, `nvcc --version`, switching and shell set-up."""
from __future__ import annotations

import contextlib
import datetime
import difflib
import fcntl
import json
import os
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import proc
from provisioner.errors import PermissionDenied, ProvisionError
from provisioner.paths import under_root
from provisioner.report import Check, Status
from provisioner.versions import CudaVersion

LOCAL = "/usr/local"
LINK = "/usr/local/cuda"
#: The switch lock and the rollback record: system state, so under the root, not in a HOME.
STATE_DIR = "/var/lib/provision"
LOCK_NAME = "cuda-switch.lock"
RECORD_NAME = "cuda-switch.json"
#: Prefix of the temporary link renamed over `cuda`; a crashed switch leaves nothing else behind.
NEW_LINK_PREFIX = "cuda.new-"

NVCC_TIMEOUT = 30
# "Cuda compilation tools, release 13.0, V13.0.88" (the same line since CUDA 9; reference §3).
_RELEASE = re.compile(r"release\s+(\d+)\.(\d+),\s*V(\d+(?:\.\d+)+)")
_BUILD = re.compile(r"Build cuda_(\d+)\.(\d+)")
_CUDA_H = re.compile(r"^\s*#\s*define\s+CUDA_VERSION\s+(\d+)", re.MULTILINE)
_VERSION_TXT = re.compile(r"CUDA Version\s+(\d+\.\d+(?:\.\d+)?)")
#: A versioned toolkit directory named in PATH, LD_LIBRARY_PATH, a wrapper or an rc file.
_VERSIONED = re.compile(r"(/[^\s\"':;]*)?/cuda-(\d+\.\d+)(?=/|\b)")
_SYMLINK_HOPS = 40  # the kernel's own limit (MAXSYMLINKS)

# Layouts seen in the wild: lib64 (runfile, packages), lib (wheels), targets/<arch>/lib.
_LIB_DIRS = ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")


# --------------------------------------------------------------------------- paths under a root

def system_path(root: Path, path: Path) -> str:
    """`<root>/usr/local/cuda` as the system sees it (`/usr/local/cuda`), for messages and links."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return str(path)
    return "/" + rel.as_posix().lstrip("/") if str(rel) != "." else "/"


def resolve_under(root: Path, path: str) -> str | None:
    """Resolve every link in the system path `path` the way the kernel would inside a chroot at root.

    Absolute link targets (`/etc/alternatives/cuda`) restart at root and `..` never climbs above it,
    so nothing outside root is ever read. Returns the final system path, or None on a link loop.
    """
    pending = deque(p for p in path.split("/") if p)
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = under_root(root, "/" + "/".join([*resolved, part]))
        if candidate.is_symlink():
            hops += 1
            if hops > _SYMLINK_HOPS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending.extendleft(reversed([p for p in target.split("/") if p]))
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


def _inside(root: Path, path: Path) -> Path:
    """`path` (under root) with its links followed under root; unchanged on a loop."""
    final = resolve_under(root, system_path(root, path))
    return path if final is None else under_root(root, final)


def command_line(root: Path, args: str) -> str:
    """The command line to suggest, carrying --root when it is not `/`."""
    return "provision " + (f"--root {root} " if str(root) != "/" else "") + args


def writable(directory: Path) -> bool:
    """Whether this process may create and rename entries in `directory` (effective ids, capabilities)."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # a directory we would create: its nearest existing parent decides
    effective = os.access in os.supports_effective_ids
    return os.access(probe, os.W_OK | os.X_OK, effective_ids=effective)


# --------------------------------------------------------------------------- toolkits

@dataclass(frozen=True)
class Toolkit:
    """One CUDA toolkit directory and what it holds."""

    path: Path                       # <root>/usr/local/cuda-12.6
    name: str                        # "cuda-12.6"
    version: CudaVersion | None      # with the patch when nvcc (or version.json's nvcc entry) says it
    version_source: str | None       # "nvcc" | "version.json" | "version.txt" | "cuda.h" | None
    has_nvcc: bool
    has_cudart: bool
    has_headers: bool
    nvcc_error: str | None = None    # why its nvcc could not report a version, when it could not
    root: Path = field(default=Path("/"), compare=False, repr=False)
    nvcc_output: str | None = field(default=None, compare=False, repr=False)   # its `nvcc --version`

    @property
    def complete(self) -> bool:
        return self.has_nvcc and self.has_cudart and self.has_headers

    @property
    def missing(self) -> list[str]:
        """The parts a complete toolkit has and this one lacks, in words."""
        out = []
        if not self.has_nvcc:
            out.append("bin/nvcc")
        if not self.has_cudart:
            out.append("libcudart (lib64/)")
        if not self.has_headers:
            out.append("include/cuda_runtime.h")
        return out

    @property
    def system_path(self) -> str:
        return system_path(self.root, self.path)

    @property
    def label(self) -> str:
        """`cuda-12.6 (CUDA 12.6.85)` for messages."""
        return f"{self.name} (CUDA {self.version})" if self.version else f"{self.name} (version unknown)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.system_path,
                "version": str(self.version) if self.version else None,
                "version_source": self.version_source, "complete": self.complete,
                "has_nvcc": self.has_nvcc, "has_cudart": self.has_cudart,
                "has_headers": self.has_headers, "missing": self.missing,
                "nvcc_error": self.nvcc_error}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Toolkit:
        """A toolkit read elsewhere (a report file): paths are system paths, the root is `/`."""
        version = d.get("version")
        return cls(path=Path(str(d.get("path") or f"{LOCAL}/{d.get('name') or 'cuda'}")),
                   name=str(d.get("name") or "cuda"),
                   version=CudaVersion.parse(str(version)) if version else None,
                   version_source=d.get("version_source"), has_nvcc=bool(d.get("has_nvcc")),
                   has_cudart=bool(d.get("has_cudart")), has_headers=bool(d.get("has_headers")),
                   nvcc_error=d.get("nvcc_error"), nvcc_output=d.get("nvcc_output"))

    def facts_dict(self) -> dict[str, Any]:
        """to_dict plus what its nvcc printed (for a facts snapshot)."""
        return dict(self.to_dict(), nvcc_output=self.nvcc_output)


def parse_nvcc_version(text: str) -> CudaVersion | None:
    """`release 13.0, V13.0.88` -> 13.0.88; the `Build cuda_13.0` line as a fallback."""
    m = _RELEASE.search(text)
    if m:
        parts = m[3].split(".")
        if len(parts) >= 3 and (int(parts[0]), int(parts[1])) == (int(m[1]), int(m[2])):
            return CudaVersion(int(parts[0]), int(parts[1]), int(parts[2]))
        return CudaVersion(int(m[1]), int(m[2]))
    m = _BUILD.search(text)
    if m:
        return CudaVersion(int(m[1]), int(m[2]))
    return None


def nvcc_version(nvcc: Path, environ: Mapping[str, str]) -> tuple[CudaVersion, str]:
    """Run `nvcc --version`; return the version it reports and its output.

    Raises CommandError when it cannot run and ProvisionError when the output names no version.
    """
    done = proc.run([nvcc, "--version"], timeout=NVCC_TIMEOUT, env=environ)
    version = parse_nvcc_version(done.stdout)
    if version is None:
        raise ProvisionError(f"`{nvcc} --version` printed no CUDA release:\n{proc.tail(done.stdout)}",
                             hint="the file is not NVIDIA's nvcc; reinstall the toolkit")
    return version, done.stdout


def which_nvcc(environ: Mapping[str, str], root: Path = Path("/")) -> Path | None:
    """The first executable `nvcc` on environ["PATH"] (entries are system paths, looked up under root)."""
    for entry in environ.get("PATH", "").split(os.pathsep):
        if not entry or not entry.startswith("/"):
            continue  # a relative entry depends on the caller's cwd: not a stable place for nvcc
        candidate = under_root(root, entry) / "nvcc"
        real = _inside(root, candidate)
        if real.is_file() and os.access(real, os.X_OK):
            return candidate
    return None


def _version_json(path: Path) -> CudaVersion | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    nvcc = data.get("cuda_nvcc")
    sdk = data.get("cuda")
    # cuda_nvcc carries the compiler's own patch (11.8.89); cuda.version's third field is an update
    # number or a date (12.6.20241114), so only its major.minor is taken.
    if isinstance(nvcc, dict) and isinstance(sdk, dict):
        try:
            v_nvcc = CudaVersion.parse(str(nvcc.get("version", "")))
            v_sdk = CudaVersion.parse(str(sdk.get("version", "")))
        except ProvisionError:
            pass
        else:
            if (v_nvcc.major, v_nvcc.minor) == (v_sdk.major, v_sdk.minor):
                return v_nvcc
    if isinstance(sdk, dict):
        m = re.match(r"^\s*(\d+)\.(\d+)", str(sdk.get("version", "")))
        if m:
            return CudaVersion(int(m[1]), int(m[2]))
    return None


def read_toolkit(path: Path, root: Path, environ: Mapping[str, str]) -> Toolkit:
    """What the toolkit directory `path` (under root) holds and which version it is."""
    base = _inside(root, path)
    nvcc = _inside(root, base / "bin" / "nvcc")
    has_nvcc = nvcc.is_file() and os.access(nvcc, os.X_OK)
    has_cudart = any(
        any(d.glob("libcudart.so*"))
        for d in (_inside(root, base / sub) for sub in _LIB_DIRS) if d.is_dir()
    )
    include = _inside(root, base / "include")
    has_headers = (include / "cuda_runtime.h").is_file()

    version: CudaVersion | None = None
    source: str | None = None
    error: str | None = None
    output: str | None = None
    if has_nvcc:
        try:
            version, output = nvcc_version(nvcc, environ)
            source = "nvcc"
        except ProvisionError as e:
            error = e.message
    if version is None and (base / "version.json").is_file():
        version = _version_json(base / "version.json")
        source = "version.json" if version else None
    if version is None and (base / "version.txt").is_file():
        m = _VERSION_TXT.search((base / "version.txt").read_text(errors="replace"))
        if m:
            version, source = CudaVersion.parse(m[1]), "version.txt"
    if version is None and (include / "cuda.h").is_file():
        m = _CUDA_H.search((include / "cuda.h").read_text(errors="replace"))
        if m:
            version, source = CudaVersion.from_int(int(m[1])), "cuda.h"
    return Toolkit(path=path, name=path.name, version=version, version_source=source,
                   has_nvcc=has_nvcc, has_cudart=has_cudart, has_headers=has_headers,
                   nvcc_error=error, root=root, nvcc_output=output)


def toolkits(root: Path, environ: Mapping[str, str]) -> list[Toolkit]:
    """Every `<root>/usr/local/cuda-*` directory (or link to one), oldest version first."""
    local = under_root(root, LOCAL)
    if not local.is_dir():
        return []
    found = []
    for entry in sorted(local.glob("cuda-*")):
        if _inside(root, entry).is_dir():
            found.append(read_toolkit(entry, root, environ))

    def key(t: Toolkit) -> tuple[int, CudaVersion, str]:
        return (0, t.version, t.name) if t.version else (1, CudaVersion(0, 0), t.name)

    return sorted(found, key=key)


def find_toolkit(version: CudaVersion, root: Path, environ: Mapping[str, str],
                 installed: list[Toolkit] | None = None) -> Toolkit | None:
    """The installed toolkit for `version` (12.6 matches 12.6.85), preferring the `cuda-12.6` name."""
    installed = toolkits(root, environ) if installed is None else installed
    exact_name = f"cuda-{version.short}"
    matches = [t for t in installed if t.version is not None and version.same_release(t.version)]
    if not matches and version.patch is None:
        # A toolkit whose version could not be read still answers to its directory name.
        matches = [t for t in installed if t.version is None and t.name == exact_name]
    if not matches:
        return None
    matches.sort(key=lambda t: (t.name != exact_name, not t.complete))
    return matches[0]


# --------------------------------------------------------------------------- the link

LINK_STATES = ("ok", "dangling", "missing", "directory", "not-a-link-file")


@dataclass(frozen=True)
class LinkState:
    """What `<root>/usr/local/cuda` is, read under root."""

    path: Path                    # <root>/usr/local/cuda
    state: str                    # one of LINK_STATES
    raw_target: str | None        # os.readlink text of the link itself
    target: Path | None           # the final target with every link followed under root
    toolkit: Toolkit | None       # the toolkit it points at (or, for "directory", the directory itself)
    root: Path = field(default=Path("/"), compare=False, repr=False)

    @property
    def target_system(self) -> str | None:
        return system_path(self.root, self.target) if self.target is not None else None

    def describe(self) -> str:
        """`/usr/local/cuda -> /usr/local/cuda-12.6 (ok)` and friends."""
        if self.state == "missing":
            return f"{LINK} does not exist"
        if self.state == "directory":
            return f"{LINK} is a real directory, not a link"
        if self.state == "not-a-link-file":
            return f"{LINK} is a file, not a link"
        chain = self.raw_target or ""
        if self.target_system and self.target_system != self.raw_target:
            chain += f" => {self.target_system}"
        return f"{LINK} -> {chain} ({self.state})"

    def to_dict(self) -> dict[str, Any]:
        return {"path": LINK, "state": self.state, "raw_target": self.raw_target,
                "target": self.target_system,
                "toolkit": self.toolkit.to_dict() if self.toolkit else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinkState:
        target, tk = d.get("target"), d.get("toolkit")
        return cls(Path(LINK), str(d.get("state") or "missing"), d.get("raw_target"),
                   Path(str(target)) if target else None,
                   Toolkit.from_dict(tk) if isinstance(tk, Mapping) else None)


def read_link(root: Path, environ: Mapping[str, str],
              installed: Sequence[Toolkit] | None = None) -> LinkState:
    """Read `<root>/usr/local/cuda` without leaving root (never Path.resolve).

    A toolkit already read (`installed`, from toolkits()) is reused, so its nvcc runs only once.
    """
    def toolkit_at(path: Path) -> Toolkit:
        for t in installed or ():
            if _inside(root, t.path) == path:
                return t
        return read_toolkit(path, root, environ)

    link = under_root(root, LINK)
    if not os.path.lexists(link):
        return LinkState(link, "missing", None, None, None, root)
    if link.is_symlink():
        raw = os.readlink(link)
        final = resolve_under(root, LINK)
        if final is None:
            return LinkState(link, "dangling", raw, None, None, root)
        target = under_root(root, final)
        if target.is_dir():
            return LinkState(link, "ok", raw, target, toolkit_at(target), root)
        return LinkState(link, "dangling", raw, target, None, root)
    if link.is_dir():
        return LinkState(link, "directory", None, link, read_toolkit(link, root, environ), root)
    return LinkState(link, "not-a-link-file", None, None, None, root)


@dataclass(frozen=True)
class NvccOnPath:
    """The `nvcc` a shell would run, and how it relates to the link (read once, judged later)."""

    first: str | None = None                 # system path of the first nvcc on PATH
    resolved: str | None = None              # the same with every link followed
    bypass: str | None = None                # how it reaches a versioned toolkit without the link
    through_link: bool = False               # it is the linked toolkit's nvcc (or a wrapper using the link)
    version: str | None = None               # what it reports, when it is not the linked toolkit's nvcc
    versioned: Mapping[str, Sequence[str]] = field(default_factory=dict)   # PATH / LD_LIBRARY_PATH hits

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "resolved": self.resolved, "bypass": self.bypass,
                "through_link": self.through_link, "version": self.version,
                "versioned": {k: list(v) for k, v in self.versioned.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NvccOnPath:
        versioned = d.get("versioned") or {}
        return cls(first=d.get("first"), resolved=d.get("resolved"), bypass=d.get("bypass"),
                   through_link=bool(d.get("through_link")), version=d.get("version"),
                   versioned={str(k): tuple(v) for k, v in versioned.items()})


@dataclass(frozen=True)
class CudaFacts:
    """Everything the toolkit checks look at: the link, the toolkits, PATH's nvcc; gathered once."""

    link: LinkState | None                   # None: the link could not be read (see link_error)
    link_error: str | None
    toolkits: tuple[Toolkit, ...]
    entries: tuple[str, ...]                 # every `cuda-*` name under /usr/local (files and links too)
    nvcc: NvccOnPath

    def to_dict(self) -> dict[str, Any]:
        link = self.link.to_dict() if self.link else None
        if link is not None and self.link is not None and self.link.toolkit is not None:
            link["toolkit"] = self.link.toolkit.facts_dict()
        return {"link": link, "link_error": self.link_error,
                "toolkits": [t.facts_dict() for t in self.toolkits], "entries": list(self.entries),
                "nvcc": self.nvcc.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CudaFacts:
        link = d.get("link")
        return cls(link=LinkState.from_dict(link) if isinstance(link, Mapping) else None,
                   link_error=d.get("link_error"),
                   toolkits=tuple(Toolkit.from_dict(t) for t in d.get("toolkits") or ()),
                   entries=tuple(str(e) for e in d.get("entries") or ()),
                   nvcc=NvccOnPath.from_dict(d.get("nvcc") or {}))


def gather(root: Path, environ: Mapping[str, str]) -> CudaFacts:
    """Read the toolkits (each nvcc once), the link and PATH's nvcc under root."""
    installed = tuple(toolkits(root, environ))
    entries = _entries(root)
    try:
        state: LinkState | None = read_link(root, environ, installed)
        error = None
    except ProvisionError as e:
        state, error = None, e.message
    except OSError as e:
        state, error = None, f"{LINK} cannot be read: {e.strerror or e}"
    return CudaFacts(state, error, installed, entries, _nvcc_on_path(root, environ, state, installed))


def _nvcc_on_path(root: Path, environ: Mapping[str, str], state: LinkState | None,
                  installed: Sequence[Toolkit]) -> NvccOnPath:
    versioned: dict[str, tuple[str, ...]] = {}
    for var in ("PATH", "LD_LIBRARY_PATH"):
        hits = tuple(e for e in environ.get(var, "").split(os.pathsep) if e and _VERSIONED.search(e))
        if hits:
            versioned[var] = hits
    first = which_nvcc(environ, root)
    if first is None:
        return NvccOnPath(versioned=versioned)
    final = _inside(root, first)
    bypass = _bypass(first, final)
    through = state is not None and _through_link(final, state)
    version = None
    if not bypass and not through:
        known = next((t for t in installed if _inside(root, t.path / "bin" / "nvcc") == final), None)
        if known is not None and known.version_source == "nvcc":
            version = str(known.version)        # already asked when the toolkits were read
        else:
            try:
                version = str(nvcc_version(final, environ)[0])
            except ProvisionError:
                version = None
    return NvccOnPath(system_path(root, first), system_path(root, final), bypass, through, version,
                      versioned)


def _entries(root: Path) -> tuple[str, ...]:
    local = under_root(root, LOCAL)
    return tuple(sorted(e.name for e in local.glob("cuda-*"))) if local.is_dir() else ()


def _move_aside_hint(entries: Sequence[str], state: LinkState, then: str) -> str:
    tk = state.toolkit
    if tk is not None and tk.version is not None:
        name = f"cuda-{tk.version.short}"
        dest = f"{LOCAL}/{name}"
        note = f" (its toolkit reports CUDA {tk.version}, by {tk.version_source})"
        if name in entries:
            dest += ".orig"  # cuda-X.Y is taken; a suffix keeps both
    else:
        dest = f"{LOCAL}/cuda-X.Y"
        note = " (its version could not be read: put the right X.Y in the name)"
    return (f"provision never deletes it. Move it aside so it becomes a versioned toolkit{note}: "
            f"`sudo mv {LINK} {dest}`, then `{then}`")


def check_link(root: Path, environ: Mapping[str, str]) -> Check:
    """cuda.link, read now (see judge_link)."""
    return judge_link(gather(root, environ), root)


def judge_link(cf: CudaFacts, root: Path = Path("/")) -> Check:
    """cuda.link: /usr/local/cuda is a link to a complete toolkit whose nvcc reports its version."""
    if cf.link is None:
        return Check("cuda.link", Status.FAIL, cf.link_error or f"{LINK} cannot be read", None, {})
    state, installed = cf.link, cf.toolkits
    complete = [t for t in installed if t.complete and t.version]
    newest = complete[-1] if complete else None
    data: dict[str, object] = {"link": state.to_dict(),
                               "installed": [t.to_dict() for t in installed]}
    switch_fix = (command_line(root, f"cuda switch {newest.version.short}")
                  if newest and newest.version else command_line(root, "cuda install 13.0"))
    if state.state == "missing":
        if not installed:
            return Check("cuda.link", Status.WARN,
                         f"no CUDA toolkit under {LOCAL} and no {LINK} link (PyTorch wheels bring "
                         "their own CUDA runtime; a toolkit is only needed to compile CUDA code)",
                         command_line(root, "cuda install 13.0"), data)
        names = ", ".join(t.label for t in installed)
        return Check("cuda.link", Status.WARN, f"{LINK} does not exist; installed: {names}",
                     switch_fix, data)
    if state.state == "directory":
        msg = f"{LINK} is a real directory, not a link, so it cannot be switched"
        return Check("cuda.link", Status.FAIL, msg,
                     _move_aside_hint(cf.entries, state, command_line(root, "cuda switch X.Y")), data)
    if state.state == "not-a-link-file":
        return Check("cuda.link", Status.FAIL, f"{LINK} is a regular file, not a link to a toolkit",
                     f"inspect and remove it (`sudo rm {LINK}`), then `{switch_fix}`", data)
    if state.state == "dangling":
        return Check("cuda.link", Status.FAIL,
                     f"{LINK} -> {state.raw_target} is dangling: "
                     f"{state.target_system or 'a link loop'} is not a directory",
                     switch_fix, data)
    tk = state.toolkit
    assert tk is not None
    where = f"{LINK} -> {state.raw_target}"
    if not tk.complete:
        fix = (switch_fix if newest is not None
               else "reinstall that toolkit, or " + command_line(root, "cuda install 13.0"))
        return Check("cuda.link", Status.FAIL,
                     f"{where} is incomplete: missing {', '.join(tk.missing)}", fix, data)
    if tk.version_source != "nvcc":
        return Check("cuda.link", Status.FAIL,
                     f"{where}: its bin/nvcc does not report a version ({tk.nvcc_error})",
                     "reinstall that toolkit, or " + switch_fix, data)
    return Check("cuda.link", Status.OK, f"{where} (CUDA {tk.version}, reported by its nvcc)",
                 None, data)


def _script_text(path: Path) -> str | None:
    """The text of a small `#!` script, or None for a binary (the real nvcc is an ELF file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    return head.decode(errors="replace")


def _bypass(first: Path, final: Path) -> str | None:
    """How the nvcc at `first` reaches a versioned toolkit without the link, in words, or None."""
    own = final.parent.parent.name  # .../cuda-12.6/bin/nvcc belongs to cuda-12.6
    if first.is_symlink():
        raw = os.readlink(first)
        m = _VERSIONED.search(raw)
        if m and not raw.startswith(LINK + "/"):
            return f"is a link to {raw}"
    script = _script_text(final)
    if script and f"{LINK}/bin/" not in script:
        for m in _VERSIONED.finditer(script):
            # `exec /usr/local/cuda-13.0/bin/nvcc "$@"`: a wrapper into another toolkit's bin/
            if script[m.end():].startswith("/bin/") and own != f"cuda-{m[2]}":
                return f"is a wrapper script that runs {m[0]}/bin/nvcc directly"
    return None


def _through_link(final: Path, state: LinkState) -> bool:
    """Whether the resolved nvcc lies in the toolkit the link points at (or a wrapper that uses the link)."""
    if state.target is not None and final.parent.parent == state.target:
        return True
    script = _script_text(final)
    return bool(script and f"{LINK}/bin/nvcc" in script)


def check_nvcc_path(root: Path, environ: Mapping[str, str]) -> Check:
    """cuda.nvcc_path, read now (see judge_nvcc_path)."""
    return judge_nvcc_path(gather(root, environ), root)


def judge_nvcc_path(cf: CudaFacts, root: Path = Path("/")) -> Check:
    """cuda.nvcc_path: the `nvcc` a shell runs is the one /usr/local/cuda points at, via the link."""
    state, nv = cf.link, cf.nvcc
    fix = command_line(root, "cuda shell-init --apply") + " (then open a new shell)"
    problems: list[str] = []
    for var, hits in nv.versioned.items():
        problems.append(f"{var} names versioned toolkit directories ({', '.join(hits)}), "
                        f"which a `cuda switch` does not change")
    data: dict[str, object] = {"nvcc": nv.first,
                               "versioned_entries": {k: list(v) for k, v in nv.versioned.items()},
                               "link_target": state.target_system if state else None}
    link_tk = state.toolkit if state is not None and state.state == "ok" else None
    if nv.first is None:
        if (state is None or state.state == "missing") and not cf.toolkits:
            return Check("cuda.nvcc_path", Status.SKIP, "no CUDA toolkit installed and no nvcc on PATH",
                         None, data)
        problems.insert(0, f"no nvcc on PATH ({LINK}/bin is not on it)")
    else:
        data["nvcc_resolved"] = nv.resolved
        if nv.bypass:
            data["bypass"] = nv.bypass
            problems.append(f"the first nvcc on PATH, {nv.first}, {nv.bypass}, bypassing {LINK}")
        elif link_tk is not None and state is not None and state.target is not None and not nv.through_link:
            what = f"CUDA {nv.version}" if nv.version else "version unknown"
            problems.append(f"the first nvcc on PATH is {nv.first}"
                            + (f" (= {nv.resolved})" if nv.resolved != nv.first else "")
                            + f", {what}, not {LINK}/bin/nvcc ({link_tk.label})")
    if problems:
        return Check("cuda.nvcc_path", Status.WARN, "; ".join(problems), fix, data)
    version = f"CUDA {link_tk.version}" if link_tk and link_tk.version else "version unknown"
    return Check("cuda.nvcc_path", Status.OK, f"nvcc on PATH is {nv.first or '?'} ({version}), via {LINK}",
                 None, data)


# --------------------------------------------------------------------------- switch and rollback

def _install_hint(version: CudaVersion, root: Path) -> str:
    if version.major >= 13:
        return f"install it with `{command_line(root, f'cuda install {version.short}')}`"
    from provisioner.system import distro

    steps = distro.cuda_repository_steps(version, root) + f"; then `{command_line(root, f'cuda switch {version.short}')}`"
    return f"install it from NVIDIA's CUDA repository: {steps}"


@dataclass(frozen=True)
class SwitchPlan:
    """Point `<root>/usr/local/cuda` at `toolkit` (a switch, or the rollback to a recorded target)."""

    root: Path
    environ: Mapping[str, str] = field(repr=False, compare=False)
    action: str                   # "switch" | "rollback"
    version: CudaVersion          # what the new link's nvcc must report
    toolkit: Toolkit
    link_text: str                # written into the link: "cuda-12.6", or the recorded raw target
    current: LinkState
    unchanged: bool               # the link already points there

    @property
    def link(self) -> Path:
        return under_root(self.root, LINK)

    @property
    def lock_path(self) -> Path:
        return under_root(self.root, STATE_DIR) / LOCK_NAME

    @property
    def record_path(self) -> Path:
        return under_root(self.root, STATE_DIR) / RECORD_NAME

    def describe(self) -> str:
        what = "Roll back" if self.action == "rollback" else "Switch"
        lines = [f"{what} {LINK} to {self.toolkit.label}:",
                 f"  now:  {self.current.describe()}"
                 + (f", {self.current.toolkit.label}" if self.current.toolkit and
                    self.current.state == "ok" else "")]
        if self.unchanged:
            lines.append(f"  {LINK} already points at {self.toolkit.system_path}: nothing to change")
            lines.append(f"  1. check that {LINK}/bin/nvcc --version reports {self.version}")
            return "\n".join(lines)
        if self.current.raw_target and self.current.raw_target.startswith("/etc/alternatives"):
            lines.append("  note: the link goes through update-alternatives; it becomes a direct link")
        lines += [
            f"  1. lock {STATE_DIR}/{LOCK_NAME} (one switch at a time)",
            f"  2. record the current target in {STATE_DIR}/{RECORD_NAME} (for `provision cuda rollback`)",
            f"  3. create {LINK}.new-<pid> -> {self.link_text} and rename it over {LINK} (atomic)",
            f"  4. check that {LINK}/bin/nvcc --version reports {self.version}",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "cuda_version": str(self.version), "link_path": LINK,
                "link_text": self.link_text, "toolkit": self.toolkit.to_dict(),
                "current": self.current.to_dict(), "unchanged": self.unchanged}


def _refuse_unswitchable(root: Path, state: LinkState, then: str) -> None:
    if state.state == "directory":
        found = (f" holding CUDA {state.toolkit.version}" if state.toolkit and state.toolkit.version
                 else "")
        raise ProvisionError(f"{LINK} is a real directory{found}, not a link; nothing was changed",
                             hint=_move_aside_hint(_entries(root), state, then))
    if state.state == "not-a-link-file":
        raise ProvisionError(f"{LINK} is a regular file, not a link; nothing was changed",
                             hint=f"look at it and remove it yourself (`sudo rm {LINK}`), then `{then}`")


def _require_permission(root: Path, args: str) -> None:
    for directory in (under_root(root, LOCAL), under_root(root, STATE_DIR)):
        if not writable(directory):
            raise PermissionDenied(
                f"cannot change {LINK}: {system_path(root, directory)} is not writable by this user",
                hint=f"re-run with sudo: `sudo {command_line(root, args)}`")


def _plan(root: Path, environ: Mapping[str, str], action: str, version: CudaVersion,
          toolkit: Toolkit, link_text: str, current: LinkState, args: str) -> SwitchPlan:
    unchanged = (current.state == "ok" and current.target is not None
                 and current.target == _inside(root, toolkit.path))
    if not unchanged:
        _require_permission(root, args)
    return SwitchPlan(root, environ, action, version, toolkit, link_text, current, unchanged)


def plan_switch(version: CudaVersion, root: Path, environ: Mapping[str, str]) -> SwitchPlan:
    """Plan pointing /usr/local/cuda at the installed toolkit `version`; refuse (changing nothing) when
    it is not installed, incomplete, the link is a real directory, or this user may not change it."""
    args = f"cuda switch {version}"
    current = read_link(root, environ)
    _refuse_unswitchable(root, current, command_line(root, args))
    installed = toolkits(root, environ)
    toolkit = find_toolkit(version, root, environ, installed)
    if toolkit is None:
        have = ", ".join(f"{t.version or '?'} ({t.name})" for t in installed) or "none"
        raise ProvisionError(f"CUDA {version} is not installed under {LOCAL} (installed: {have})",
                             hint=_install_hint(version, root))
    if not toolkit.complete:
        others = [t for t in installed if t.complete and t is not toolkit and t.version]
        alt = (f"; complete toolkits: {', '.join(str(t.version) for t in others)}" if others else "")
        raise ProvisionError(
            f"{toolkit.system_path} is incomplete: missing {', '.join(toolkit.missing)}; nothing was changed",
            hint=f"reinstall CUDA {version.short} ({_install_hint(version, root)}){alt}")
    if toolkit.version_source != "nvcc":
        raise ProvisionError(
            f"{toolkit.system_path}/bin/nvcc does not report a version: {toolkit.nvcc_error}",
            hint=f"reinstall CUDA {version.short} ({_install_hint(version, root)})")
    # A relative target keeps the link valid inside a chroot, a container mount or any --root.
    link_text = toolkit.name if toolkit.path.parent == under_root(root, LOCAL) else toolkit.system_path
    assert toolkit.version is not None
    return _plan(root, environ, "switch", toolkit.version, toolkit, link_text, current, args)


def read_record(root: Path) -> dict[str, Any] | None:
    """The last switch's record (previous and new link text), or None."""
    path = under_root(root, STATE_DIR) / RECORD_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ProvisionError(f"{STATE_DIR}/{RECORD_NAME} is unreadable: {e}",
                             hint="remove it and switch explicitly: "
                                  f"`{command_line(root, 'cuda switch X.Y')}`") from e
    return data if isinstance(data, dict) else None


def plan_rollback(root: Path, environ: Mapping[str, str]) -> SwitchPlan:
    """Plan pointing /usr/local/cuda back at the target recorded by the last switch."""
    args = "cuda rollback"
    current = read_link(root, environ)
    _refuse_unswitchable(root, current, command_line(root, args))
    record = read_record(root)
    if record is None:
        raise ProvisionError("no previous CUDA switch is recorded, so there is nothing to roll back to",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}` "
                                  f"(`{command_line(root, 'cuda list')}` shows what is installed)")
    previous = record.get("previous")
    if not isinstance(previous, str) or not previous:
        raise ProvisionError(f"{LINK} did not exist before the last switch, so there is nothing to "
                             "roll back to",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}`")
    final = resolve_under(root, previous if previous.startswith("/") else f"{LOCAL}/{previous}")
    target = under_root(root, final) if final else None
    if target is None or not target.is_dir():
        raise ProvisionError(f"the previous target {previous} no longer exists; nothing was changed",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}`")
    toolkit = read_toolkit(target, root, environ)
    if not toolkit.complete or toolkit.version_source != "nvcc" or toolkit.version is None:
        problem = (f"missing {', '.join(toolkit.missing)}" if not toolkit.complete
                   else f"its nvcc does not report a version ({toolkit.nvcc_error})")
        raise ProvisionError(f"the previous target {previous} is unusable: {problem}; nothing was changed",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}`")
    return _plan(root, environ, "rollback", toolkit.version, toolkit, previous, current, args)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`: a second switch waits here until the first one is done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def _replace_link(link: Path, text: str) -> None:
    """Make `link` point at `text` atomically: a new link, renamed over the old one."""
    tmp = link.with_name(f"{NEW_LINK_PREFIX}{os.getpid()}")
    try:
        if os.path.lexists(tmp):
            tmp.unlink()  # left by a killed process that had our pid
        os.symlink(text, tmp)
        os.replace(tmp, link)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def apply(plan: SwitchPlan) -> LinkState:
    """Carry out a switch or rollback under the lock, then check the new link's nvcc; return the link."""
    args = "cuda rollback" if plan.action == "rollback" else f"cuda switch {plan.version}"
    if plan.unchanged and not writable(plan.lock_path.parent):
        return _verify(plan)  # nothing to write: a user who may not take the lock can still check
    try:
        with _locked(plan.lock_path):
            _switch_locked(plan, args)
            return _verify(plan)
    except PermissionError as e:
        raise PermissionDenied(f"cannot change {LINK}: {e.strerror}: {e.filename}",
                               hint=f"re-run with sudo: `sudo {command_line(plan.root, args)}`") from e
    except OSError as e:
        # A full disk, a read-only mount: the new link was removed and the record restored.
        raise ProvisionError(f"could not change {LINK}: {e.strerror} ({e.filename}); it was left as it was",
                             hint="fix the filesystem problem and run the command again") from e


def _switch_locked(plan: SwitchPlan, args: str) -> None:
    # Re-read under the lock: another switch may have changed the link since the plan was made.
    current = read_link(plan.root, plan.environ)
    _refuse_unswitchable(plan.root, current, command_line(plan.root, args))
    if current.state == "ok" and current.target == _inside(plan.root, plan.toolkit.path):
        return  # already there: keep the record of the last real change
    old_record = plan.record_path.read_text() if plan.record_path.exists() else None
    record = {"version": 1, "link": LINK, "action": plan.action,
              "previous": current.raw_target,
              "previous_version": (str(current.toolkit.version)
                                   if current.state == "ok" and current.toolkit
                                   and current.toolkit.version else None),
              "current": plan.link_text, "current_version": str(plan.version),
              "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    # Record first: if the rename then fails, the record is restored below; if we are killed in
    # between, a rollback points at what the link still is, which is harmless.
    _write_atomic(plan.record_path, json.dumps(record, indent=2) + "\n")
    try:
        _replace_link(plan.link, plan.link_text)
    except BaseException:
        if old_record is None:
            plan.record_path.unlink()
        else:
            _write_atomic(plan.record_path, old_record)
        raise


def _verify(plan: SwitchPlan) -> LinkState:
    """Run the new link's bin/nvcc --version (under root); fail loudly unless it reports plan.version."""
    after = read_link(plan.root, plan.environ)
    rollback = command_line(plan.root, "cuda rollback")
    if after.state != "ok" or after.target is None:
        raise ProvisionError(f"after the {plan.action}, {after.describe()}",
                             hint=f"undo it with `{rollback}`")
    nvcc = _inside(plan.root, after.target / "bin" / "nvcc")
    try:
        reported, _ = nvcc_version(nvcc, plan.environ)
    except ProvisionError as e:
        raise ProvisionError(f"{LINK} now points at {after.raw_target}, but its nvcc failed: {e.message}",
                             hint=f"undo it with `{rollback}`") from e
    if not plan.version.same_release(reported):
        raise ProvisionError(
            f"{LINK} now points at {after.raw_target}, but its bin/nvcc --version reports "
            f"CUDA {reported}, not {plan.version}",
            hint=f"the toolkit changed under us; undo it with `{rollback}` and check that toolkit")
    return after


# --------------------------------------------------------------------------- shell set-up

SHELLS = ("bash", "zsh", "fish")
BEGIN = "# >>> provision cuda >>>"
END = "# <<< provision cuda <<<"
#: Appended to an rc line that `--apply` rewrote, so a second run recognises and keeps it.
REWRITE_MARK = "# provision cuda shell-init, was:"
_ASSIGNS = re.compile(r"\b(?:[A-Z_]*PATH|CUDA_[A-Z_]+|CUDACXX|fish_add_path)\b")
_LOCAL_VERSIONED = re.compile(r"/usr/local/cuda-\d+\.\d+(?:\.\d+)?(?=/|\b)")


def default_shell(environ: Mapping[str, str]) -> str:
    name = os.path.basename(environ.get("SHELL", ""))
    return name if name in SHELLS else "bash"


def shell_init(shell: str) -> str:
    """The rc-file block that puts /usr/local/cuda/bin first on PATH and lib64 on LD_LIBRARY_PATH."""
    if shell not in SHELLS:
        raise ProvisionError(f"unsupported shell '{shell}'", hint=f"use one of: {', '.join(SHELLS)}")
    head = [BEGIN, "# Managed by `provision cuda shell-init`: use the toolkit /usr/local/cuda points at."]
    if shell == "fish":
        body = [
            "set -q PATH[1]; and test $PATH[1] = /usr/local/cuda/bin; "
            "or set -gx PATH /usr/local/cuda/bin $PATH",
            "set -q LD_LIBRARY_PATH[1]; and test $LD_LIBRARY_PATH[1] = /usr/local/cuda/lib64; "
            "or set -gx LD_LIBRARY_PATH /usr/local/cuda/lib64 $LD_LIBRARY_PATH",
        ]
    else:
        # Prepend unless already first, so re-sourcing the rc file adds nothing and the link's
        # nvcc wins over wrappers in /usr/local/bin.
        body = [
            'case "${PATH}" in /usr/local/cuda/bin|/usr/local/cuda/bin:*) ;; '
            '*) export PATH="/usr/local/cuda/bin${PATH:+:${PATH}}" ;; esac',
            'case "${LD_LIBRARY_PATH:-}" in /usr/local/cuda/lib64|/usr/local/cuda/lib64:*) ;; '
            '*) export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}" ;; '
            'esac',
        ]
    return "\n".join([*head, *body, END]) + "\n"


def rc_file(shell: str, environ: Mapping[str, str]) -> Path:
    home = Path(environ.get("HOME") or str(Path.home()))
    if shell == "zsh":
        return Path(environ.get("ZDOTDIR") or home) / ".zshrc"
    if shell == "fish":
        config = environ.get("XDG_CONFIG_HOME", "")
        return (Path(config) if config.startswith("/") else home / ".config") / "fish" / "config.fish"
    return home / ".bashrc"


@dataclass(frozen=True)
class ShellInitPlan:
    """The rewrite of one rc file: old and new text, and which lines were rewritten."""

    shell: str
    path: Path
    old_text: str | None          # None: the file does not exist yet
    new_text: str
    rewritten: tuple[str, ...]    # original lines that named a versioned /usr/local/cuda-X.Y

    @property
    def changed(self) -> bool:
        return self.new_text != (self.old_text or "")

    def describe(self) -> str:
        if not self.changed:
            return f"{self.path} is already up to date; nothing to change"
        diff = difflib.unified_diff((self.old_text or "").splitlines(keepends=True),
                                    self.new_text.splitlines(keepends=True),
                                    fromfile=str(self.path), tofile=f"{self.path} (new)")
        return "".join(diff).rstrip("\n")


def _rewrite_line(line: str) -> str:
    """`export PATH=/usr/local/cuda-12.6/bin:$PATH` -> the same through the link, original kept."""
    body = line.rstrip("\n")
    new = _LOCAL_VERSIONED.sub("/usr/local/cuda", body)
    return f"{new}  {REWRITE_MARK} {body.strip()}\n"


def plan_shell_init(shell: str, environ: Mapping[str, str]) -> ShellInitPlan:
    """Plan the rc rewrite: one marked block (replaced in place when present) and every PATH-like line
    naming /usr/local/cuda-X.Y pointed at /usr/local/cuda instead (the original kept in a comment)."""
    block = shell_init(shell)
    path = rc_file(shell, environ)
    try:
        old = path.read_text() if path.exists() else None
    except UnicodeDecodeError:
        raise ProvisionError(f"{path} is not UTF-8 text, so it cannot be rewritten safely",
                             hint="add the lines `provision cuda shell-init` prints to it by hand") from None
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror}",
                             hint="fix its permissions (it should belong to you), or add the lines "
                                  "`provision cuda shell-init` prints to it by hand") from None
    lines = (old or "").splitlines(keepends=True)
    out: list[str] = []
    rewritten: list[str] = []
    inside = placed = False
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
            if not placed:
                out.append(block)
                placed = True
            continue
        if inside:
            inside = stripped != END
            continue
        code = stripped.split("#", 1)[0]
        if (not stripped.startswith("#") and REWRITE_MARK not in line
                and _LOCAL_VERSIONED.search(code) and _ASSIGNS.search(code)):
            rewritten.append(line.rstrip("\n"))
            out.append(_rewrite_line(line))
            continue
        out.append(line)
    if inside:
        raise ProvisionError(f"{path} has `{BEGIN}` without `{END}`",
                             hint="fix the file by hand (remove the broken block), then run this again")
    if not placed:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        if out and out[-1].strip():
            out.append("\n")
        out.append(block)
    return ShellInitPlan(shell, path, old, "".join(out), tuple(rewritten))


def apply_shell_init(plan: ShellInitPlan) -> Path | None:
    """Write the new rc file atomically, after a timestamped backup; return the backup (None: no change)."""
    if not plan.changed:
        return None
    try:
        return _write_shell_init(plan)
    except OSError as e:
        raise ProvisionError(f"cannot write {plan.path}: {e.strerror} ({e.filename}); it was left as it was",
                             hint="fix its permissions (it should belong to you), or add the lines "
                                  "`provision cuda shell-init` prints to it by hand") from None


def _write_shell_init(plan: ShellInitPlan) -> Path | None:
    # A dotfile manager's link stays a link: write the file it points at (in HOME, not a system path).
    target = Path(os.path.realpath(plan.path))
    target.parent.mkdir(parents=True, exist_ok=True)
    backup: Path | None = None
    if plan.old_text is not None:
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        backup = target.with_name(f"{target.name}.provision-backup-{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = target.with_name(f"{target.name}.provision-backup-{stamp}-{n}")
        backup.write_text(plan.old_text)
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    tmp = target.with_name(f".{target.name}.provision-tmp-{os.getpid()}")
    try:
        tmp.write_text(plan.new_text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    return backup
