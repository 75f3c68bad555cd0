"""CUDA toolkit trees under a root: what each holds, which version its nvcc reports; paths read under the root."""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import proc
from provisioner.errors import CommandError, ProvisionError
from provisioner.paths import under_root
from provisioner.versions import CudaVersion

LOCAL = "/usr/local"
LINK = "/usr/local/cuda"


#: `nvcc --version` answers in well under a second; a wedged one must not stall every command.
#: PROVISION_NVCC_TIMEOUT overrides it (seconds).
NVCC_TIMEOUT = 10
#: Toolkits are read side by side, so N hanging nvccs cost one timeout, not N.
PARALLEL_TOOLKITS = 8
# "Cuda compilation tools, release 13.0, V13.0.88" (the same line since CUDA 9; reference §3).
_RELEASE = re.compile(r"release\s+(\d+)\.(\d+),\s*V(\d+(?:\.\d+)+)")
_BUILD = re.compile(r"Build cuda_(\d+)\.(\d+)")
_CUDA_H = re.compile(r"^\s*#\s*define\s+CUDA_VERSION\s+(\d+)", re.MULTILINE)
_VERSION_TXT = re.compile(r"CUDA Version\s+(\d+\.\d+(?:\.\d+)?)")
#: A versioned toolkit directory named in PATH, LD_LIBRARY_PATH, a wrapper or an rc file.
VERSIONED = re.compile(r"(/[^\s\"':;]*)?/cuda-(\d+\.\d+)(?=/|\b)")
_SYMLINK_HOPS = 40  # the kernel's own limit (MAXSYMLINKS)

# Layouts seen in the wild: lib64 (runfile, packages), lib (wheels), targets/<arch>/lib.
_LIB_DIRS = ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")


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


def inside(root: Path, path: Path) -> Path:
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
    problem: str | None = None       # what is wrong with the folder itself (unreadable), in words
    root: Path = field(default=Path("/"), compare=False, repr=False)
    nvcc_output: str | None = field(default=None, compare=False, repr=False)   # its `nvcc --version`

    @property
    def complete(self) -> bool:
        return self.problem is None and self.has_nvcc and self.has_cudart and self.has_headers

    @property
    def condition(self) -> str:
        """One phrase for `cuda list`: complete, or what is wrong with it."""
        if self.problem:
            return f"no: {self.problem}"
        if not self.complete:
            return "no: missing " + ", ".join(self.missing)
        if self.nvcc_error:
            return f"yes, but its nvcc: {self.nvcc_error.splitlines()[0]}"
        return "yes"

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
                "nvcc_error": self.nvcc_error, "problem": self.problem}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Toolkit:
        """A toolkit read elsewhere (a report file): paths are system paths, the root is `/`."""
        version = d.get("version")
        return cls(path=Path(str(d.get("path") or f"{LOCAL}/{d.get('name') or 'cuda'}")),
                   name=str(d.get("name") or "cuda"),
                   version=CudaVersion.parse(str(version)) if version else None,
                   version_source=d.get("version_source"), has_nvcc=bool(d.get("has_nvcc")),
                   has_cudart=bool(d.get("has_cudart")), has_headers=bool(d.get("has_headers")),
                   nvcc_error=d.get("nvcc_error"), problem=d.get("problem"), nvcc_output=d.get("nvcc_output"))

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
    timeout = nvcc_timeout(environ)
    try:
        done = proc.run([nvcc, "--version"], timeout=timeout, env=environ)
    except CommandError as e:
        if "timed out" in e.message:
            raise CommandError(f"`{nvcc} --version` timed out after {timeout:g} s (a wedged nvcc)",
                               hint="run it by hand to see why; reinstall that toolkit if it hangs") from None
        raise
    version = parse_nvcc_version(done.stdout)
    if version is None:
        shown = done.stdout if done.stdout.isprintable() or "\n" in done.stdout else repr(done.stdout[:200])
        garbled = "\ufffd" in done.stdout or not done.stdout.strip()
        raise ProvisionError(f"`{nvcc} --version` printed no CUDA release"
                             + (" (garbled output)" if garbled else "") + f":\n{proc.tail(shown[:2000])}",
                             hint="the file is not NVIDIA's nvcc; reinstall the toolkit")
    return version, done.stdout


def nvcc_timeout(environ: Mapping[str, str]) -> float:
    try:
        value = float(environ.get("PROVISION_NVCC_TIMEOUT", NVCC_TIMEOUT))
    except ValueError:
        return NVCC_TIMEOUT
    return value if value > 0 else NVCC_TIMEOUT


def which_nvcc(environ: Mapping[str, str], root: Path = Path("/")) -> Path | None:
    """The first executable `nvcc` on environ["PATH"] (entries are system paths, looked up under root)."""
    for entry in environ.get("PATH", "").split(os.pathsep):
        if not entry or not entry.startswith("/"):
            continue  # a relative entry depends on the caller's cwd: not a stable place for nvcc
        candidate = under_root(root, entry) / "nvcc"
        real = inside(root, candidate)
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
    """What the toolkit directory `path` (under root) holds and which version it is.

    A folder that cannot be read becomes a toolkit that says so, never an exception: one strange
    toolkit must not stop the commands that work on the others.
    """
    try:
        return _read_toolkit(path, root, environ)
    except OSError as e:
        why = e.strerror or type(e).__name__
        return Toolkit(path=path, name=path.name, version=None, version_source=None, has_nvcc=False,
                       has_cudart=False, has_headers=False, problem=f"unreadable ({why})", root=root)


def _read_toolkit(path: Path, root: Path, environ: Mapping[str, str]) -> Toolkit:
    base = inside(root, path)
    nvcc = inside(root, base / "bin" / "nvcc")
    has_nvcc = nvcc.is_file() and os.access(nvcc, os.X_OK)
    has_cudart = any(
        any(d.glob("libcudart.so*"))
        for d in (inside(root, base / sub) for sub in _LIB_DIRS) if d.is_dir()
    )
    include = inside(root, base / "include")
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
    entries = []
    for entry in sorted(local.glob("cuda-*")):
        try:
            if inside(root, entry).is_dir():
                entries.append(entry)
        except OSError:
            entries.append(entry)       # read_toolkit says what is wrong with it
    with ThreadPoolExecutor(max_workers=PARALLEL_TOOLKITS) as pool:
        found = list(pool.map(lambda e: read_toolkit(e, root, environ), entries))

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
