"""`cuda install`: a CUDA 13.x toolkit assembled from NVIDIA's PyPI wheels as <root>/usr/local/cuda-X.Y."""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import proc
from provisioner.cuda.toolkit import LINK, LOCAL, Toolkit, command_line, nvcc_version, read_toolkit, system_path, writable
from provisioner.errors import CommandError, PermissionDenied, ProvisionError, UsageError
from provisioner.paths import under_root
from provisioner.system import distro
from provisioner.versions import CudaVersion

#: The wheels that together hold nvcc, its front end (crt), cicc (nvvm), cudart and the headers.
WHEELS = ("nvidia-cuda-nvcc", "nvidia-cuda-runtime", "nvidia-cuda-crt", "nvidia-nvvm", "nvidia-cuda-cccl")
#: The oldest major whose nvcc ships as a wheel: 12.x wheels (nvidia-cuda-nvcc-cu12) hold ptxas only.
FIRST_WHEEL_MAJOR = 13
WHEEL_CACHE_ENV = "PROVISION_CUDA_WHEEL_CACHE"
PIP_TIMEOUT = 1800      # ~300 MB of wheels over a slow link
COMPILE_TIMEOUT = 300
#: nvcc looks for include/ and lib/ under targets/<arch>/ (nvcc.profile's _TARGET_DIR_).
TARGET_DIRS = {"x86_64": "x86_64-linux", "aarch64": "sbsa-linux"}
TRIVIAL_CU = "__global__ void provision_check(int *out) { *out = threadIdx.x; }\n"
# dist-info name -> the version.json key NVIDIA's own installers use for that component
_COMPONENTS = {"nvidia_cuda_nvcc": "cuda_nvcc", "nvidia_cuda_runtime": "cuda_cudart",
               "nvidia_cuda_crt": "cuda_crt", "nvidia_nvvm": "libnvvm", "nvidia_cuda_cccl": "cuda_cccl"}


def repository_command(version: CudaVersion, root: Path) -> str:
    """How to install CUDA `version` from NVIDIA's own packages on the distribution under root."""
    return distro.cuda_repository_steps(version, root) + f"; then `{command_line(root, f'cuda switch {version.short}')}`"


def requirements(version: CudaVersion) -> tuple[str, ...]:
    """The pinned wheel set: every wheel at X.Y.*; nvcc exactly when a patch (13.1.115) is asked for.

    The wheels of one release do not share patch numbers (runtime 13.1.80 beside nvcc 13.1.115).
    """
    reqs = []
    for name in WHEELS:
        exact = name == "nvidia-cuda-nvcc" and version.patch is not None
        reqs.append(f"{name}=={version}" if exact else f"{name}=={version.short}.*")
    return tuple(reqs)


@dataclass(frozen=True)
class InstallPlan:
    """Install CUDA `version` from wheels into `prefix` (under root)."""

    version: CudaVersion
    root: Path
    prefix: Path
    requirements: tuple[str, ...]
    wheel_cache: Path | None
    python: str
    environ: Mapping[str, str] = field(repr=False, compare=False)

    @property
    def work_dir(self) -> Path:
        # Hidden and not named cuda-*, so `cuda list` never shows a half-built toolkit.
        return self.prefix.parent / f".{self.prefix.name}.provision-tmp-{os.getpid()}"

    @property
    def target(self) -> str:
        return system_path(self.root, self.prefix)

    def describe(self) -> str:
        pip = f"{self.python} -m pip"
        fetch = (f"{pip} install --no-deps --target <tmp> " + " ".join(self.requirements))
        if self.wheel_cache:
            fetch += f"\n     (wheels from {self.wheel_cache}, downloaded there first when missing)"
        tmp = system_path(self.root, self.prefix.parent) + f"/.{self.prefix.name}.provision-tmp-<pid>"
        return "\n".join([
            f"Install CUDA {self.version} from NVIDIA's wheels into {self.target}:",
            f"  1. {fetch}",
            f"  2. assemble bin/, include/, lib/ (+ lib64 -> lib), nvvm/ and version.json in {tmp}",
            f"  3. check that its nvcc --version reports {self.version} and compiles a trivial .cu (-c)",
            f"  4. rename it to {self.target} (atomic: the directory appears complete or not at all)",
        ])

    def to_dict(self) -> dict[str, Any]:
        return {"cuda_version": str(self.version), "prefix": self.target,
                "requirements": list(self.requirements),
                "wheel_cache": str(self.wheel_cache) if self.wheel_cache else None}


def plan_install(version: CudaVersion, root: Path, environ: Mapping[str, str], *,
                 prefix: str | Path | None = None, wheel_cache: str | Path | None = None) -> InstallPlan:
    """Plan installing CUDA `version` side by side; refuse for 12.x/11.x (no nvcc wheel), an existing
    target (never replaced) or a target this user may not write."""
    root = Path(os.path.abspath(root))  # nvcc later runs with another cwd
    if version.major < FIRST_WHEEL_MAJOR:
        raise ProvisionError(
            f"CUDA {version} cannot be installed from PyPI wheels: NVIDIA's {version.major}.x wheels "
            f"(nvidia-cuda-nvcc-cu{version.major}) carry ptxas and libnvvm but no nvcc",
            hint=repository_command(version, root))
    if prefix is None:
        target = under_root(root, f"{LOCAL}/cuda-{version.short}")
    else:
        given = Path(prefix)
        # --prefix is a system path like every other one: it is re-anchored at --root.
        target = under_root(root, given if given.is_absolute() else Path.cwd() / given)
    shown = system_path(root, target)
    args = f"cuda install {version}" + (f" --prefix {prefix}" if prefix is not None else "")
    if shown == LINK:
        # A real directory there is exactly what `cuda switch` must refuse to touch.
        raise UsageError(f"--prefix {LINK} is the link `cuda switch` manages; a toolkit installed there "
                         "could never be switched away from",
                         hint=f"install it as {LOCAL}/cuda-{version.short} "
                              f"(`{command_line(root, f'cuda install {version}')}`), then "
                              f"`{command_line(root, f'cuda switch {version.short}')}`")
    if os.path.lexists(target):
        found = read_toolkit(target, root, environ) if target.is_dir() else None
        what = f" (CUDA {found.version})" if found and found.version else ""
        raise ProvisionError(
            f"{shown} already exists{what}; provision never replaces it",
            hint=(f"use it with `{command_line(root, f'cuda switch {version.short}')}`, or move it aside "
                  f"(`sudo mv {shown} {shown}.old`) and install again"))
    if not writable(target.parent):
        raise PermissionDenied(f"cannot create {shown}: {system_path(root, target.parent)} is not "
                               f"writable by this user",
                               hint=f"re-run with sudo: `sudo {command_line(root, args)}`")
    cache_text = wheel_cache if wheel_cache is not None else environ.get(WHEEL_CACHE_ENV) or None
    cache = Path(cache_text).expanduser() if cache_text else None
    return InstallPlan(version, root, target, requirements(version), cache, sys.executable, environ)


def _pip(plan: InstallPlan, *args: str | Path) -> None:
    try:
        proc.run([plan.python, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                 timeout=PIP_TIMEOUT, env=plan.environ)
    except CommandError as e:
        text = e.stderr + e.stdout
        if "No matching distribution" in text or "Could not find a version" in text:
            raise ProvisionError(
                f"no NVIDIA wheels for CUDA {plan.version} were found ({' '.join(plan.requirements)})",
                hint="pick a released 13.x version; `pip index versions nvidia-cuda-nvcc` lists them") from e
        if "No module named pip" in text:
            raise ProvisionError(f"{plan.python} has no pip", hint="install pip into provision's own "
                                 "environment (re-run install.sh)") from e
        raise CommandError(e.message, returncode=e.returncode, stdout=e.stdout, stderr=e.stderr,
                           hint="check that pip reaches the package index (PIP_INDEX_URL, proxy settings); "
                                "or download the wheels elsewhere into a folder and pass it as --wheel-cache"
                           ) from e


def _fetch(plan: InstallPlan, stage: Path, progress: Callable[[str], None]) -> None:
    common = ("install", "--no-deps", "--only-binary", ":all:", "--no-compile", "--target", str(stage))
    if plan.wheel_cache is None:
        progress(f"downloading CUDA {plan.version} wheels ({len(WHEELS)} wheels, ~300 MB)")
        _pip(plan, *common, *plan.requirements)
        return
    cache = plan.wheel_cache
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProvisionError(f"cannot use {cache} as the wheel cache: {e.strerror}",
                             hint="pass --wheel-cache (or PROVISION_CUDA_WHEEL_CACHE) a directory you may "
                                  "write, or leave it out") from e
    offline = (*common, "--no-index", "--find-links", str(cache), *plan.requirements)
    try:
        _pip(plan, *offline)
        return
    except ProvisionError:
        pass  # not all in the cache yet
    shutil.rmtree(stage, ignore_errors=True)
    progress(f"downloading CUDA {plan.version} wheels into {cache} (~300 MB)")
    _pip(plan, "download", "--no-deps", "--only-binary", ":all:", "-d", str(cache), *plan.requirements)
    _pip(plan, *offline)


def _dist_versions(stage: Path) -> dict[str, str]:
    """`nvidia_cuda_nvcc-13.1.115.dist-info` -> {"nvidia_cuda_nvcc": "13.1.115"}."""
    out = {}
    for d in stage.glob("*.dist-info"):
        name, _, version = d.name[: -len(".dist-info")].rpartition("-")
        out[name.lower()] = version
    return out


def _assemble(tree: Path, stage: Path, plan: InstallPlan) -> None:
    """Give the wheels' nvidia/cuXX tree the usual toolkit layout, its provenance and a version.json."""
    if not (tree / "lib64").exists():
        (tree / "lib64").symlink_to("lib")
    arch = TARGET_DIRS.get(platform.machine())
    if arch and not (tree / "targets" / arch).exists():
        (tree / "targets" / arch).mkdir(parents=True)
        (tree / "targets" / arch / "include").symlink_to("../../include")
        (tree / "targets" / arch / "lib").symlink_to("../../lib")
    dist = tree / "dist-info"
    dist.mkdir(exist_ok=True)
    for d in stage.glob("*.dist-info"):
        shutil.copytree(d, dist / d.name, symlinks=True)
    versions = _dist_versions(stage)
    nvcc = versions.get("nvidia_cuda_nvcc", str(plan.version))
    doc: dict[str, Any] = {"cuda": {"name": "CUDA SDK", "version": nvcc}}
    for wheel, key in _COMPONENTS.items():
        if wheel in versions:
            doc[key] = {"name": wheel, "version": versions[wheel]}
    doc["provision"] = {"installed_by": f"provision cuda install {plan.version}",
                        "wheels": {k: v for k, v in sorted(versions.items())}}
    (tree / "version.json").write_text(json.dumps(doc, indent=2) + "\n")


def _compile_check(tree: Path, scratch: Path, environ: Mapping[str, str]) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    source = scratch / "provision_check.cu"
    source.write_text(TRIVIAL_CU)
    try:
        proc.run([tree / "bin" / "nvcc", "-c", source, "-o", scratch / "provision_check.o"],
                 timeout=COMPILE_TIMEOUT, env=environ, cwd=scratch)
    except CommandError as e:
        output = (e.stderr + e.stdout).lower()
        no_host = any(word in output for word in ("gcc", "g++", "c++", "host compiler"))
        raise ProvisionError(
            f"the new toolkit's nvcc could not compile a trivial .cu file: {e.message}",
            hint=("nvcc needs a host C++ compiler on PATH: install g++ (e.g. `sudo apt-get install g++`) "
                  "and run the install again") if no_host else
                 "run it again with -v to see the command; the wheels may be damaged (clear the wheel cache)",
        ) from e
    if not (scratch / "provision_check.o").is_file():
        raise ProvisionError("the new toolkit's nvcc exited 0 but wrote no object file",
                             hint="report this with the output of `provision -v cuda install ...`")


def _remove_stale_work(plan: InstallPlan) -> None:
    """The hidden work folders of installs that were killed (SIGKILL runs no cleanup): their process is
    gone, so their ~300 MB go now; a live install's folder is left alone."""
    for old in plan.prefix.parent.glob(f".{plan.prefix.name}.provision-tmp-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def apply_install(plan: InstallPlan, progress: Callable[[str], None] | None = None) -> Toolkit:
    """Fetch, assemble and check the toolkit in a hidden directory beside the target, then rename it
    into place; nothing is left behind on failure."""
    say = progress or (lambda _msg: None)
    work = plan.work_dir
    try:
        plan.prefix.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_work(plan)
        work.mkdir()
        stage = work / "wheels"
        _fetch(plan, stage, say)
        tree = stage / "nvidia" / f"cu{plan.version.major}"
        if not (tree / "bin" / "nvcc").is_file():
            raise ProvisionError(f"the CUDA {plan.version} wheels hold no "
                                 f"nvidia/cu{plan.version.major}/bin/nvcc",
                                 hint="NVIDIA changed the wheel layout; install the toolkit from NVIDIA's "
                                      "repository instead")
        say(f"assembling {plan.target}")
        _assemble(tree, stage, plan)
        reported, _ = nvcc_version(tree / "bin" / "nvcc", plan.environ)
        if not plan.version.same_release(reported):
            raise ProvisionError(f"the installed nvcc reports CUDA {reported}, not {plan.version}",
                                 hint="the package index served other versions than pinned; retry, "
                                      "or pass the full version (e.g. 13.1.115)")
        say(f"checking that nvcc {reported} compiles a trivial .cu file")
        _compile_check(tree, work / "check", plan.environ)
        if os.path.lexists(plan.prefix):
            raise ProvisionError(f"{plan.target} appeared while installing; it was left alone",
                                 hint="another install ran at the same time; check it with "
                                      f"`{command_line(plan.root, 'cuda list')}`")
        os.rename(tree, plan.prefix)
    except PermissionError as e:
        again = command_line(plan.root, f"cuda install {plan.version}")
        raise PermissionDenied(f"cannot create {plan.target}: {e.strerror}: {e.filename}",
                               hint=f"re-run with sudo: `sudo {again}`") from e
    except OSError as e:
        raise ProvisionError(f"could not install into {plan.target}: {e.strerror} ({e.filename}); "
                             "nothing was left behind",
                             hint="free some disk space (a toolkit takes ~300 MB) and run it again") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return read_toolkit(plan.prefix, plan.root, plan.environ)
