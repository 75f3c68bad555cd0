"""`provision verify`: one verdict across driver, GPUs, CUDA toolkit, the torch wheel and bitsandbytes."""
from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import envprobe, gpu, known_messages
from provisioner import facts as facts_mod
from provisioner.envtarget import EnvTarget
from provisioner.errors import ProvisionError
from provisioner.report import Check, Status
from provisioner.units import gib
from provisioner.versions import CudaVersion

if TYPE_CHECKING:
    from provisioner.profiles import Profile

#: Warn when something other than us already holds this share of a GPU's memory.
MEMORY_WARN_SHARE = 0.25
#: bitsandbytes' 4-bit (NF4/FP4) kernels need compute capability 6.0+ from 0.48 (installation docs).
BNB_4BIT_MIN_CC = (6, 0)

# The snapshot and its live reader live in facts.py; these names stay for callers of verify.
Facts = facts_mod.Facts
gather = facts_mod.gather
os_ids = facts_mod.os_ids
probe_env = envprobe.run
PROBE_SCRIPT = envprobe.PROBE_SCRIPT


# --------------------------------------------------------------------------- small helpers

def _rate(bps: float) -> str:
    return f"{bps / 1e12:.2f} TB/s" if bps >= 1e12 else f"{bps / 1e9:.0f} GB/s"


def _cc(cc: tuple[int, int] | None) -> str:
    return "?" if cc is None else f"{cc[0]}.{cc[1]}"


def _explain(text: str | None, **values: str | None) -> tuple[str, str | None, str | None]:
    """(" cause: ..." suffix, the known fix, the known message id) for an error text."""
    known = known_messages.match(text)
    if known is None:
        return "", None, None
    return f" (cause: {known.cause})", known.fix_with(**values), known.id


def _provision(root: Path, args: str) -> str:
    from provisioner.cuda import command_line

    return command_line(root, args)


def driver_install_fix(os_id: Sequence[str], *, at_least: str | None = None) -> str:
    """The command that installs (or upgrades to) an NVIDIA driver on this distribution."""
    branch = at_least.split(".")[0] if at_least else None
    ids = set(os_id)
    if "ubuntu" in ids or "pop" in ids or "linuxmint" in ids:
        pkg = f"sudo apt install nvidia-driver-{branch}" if branch else "sudo ubuntu-drivers autoinstall"
        return f"{pkg} && sudo reboot"
    if "debian" in ids:
        # Debian's driver lives in the non-free components; its version follows the release.
        return ("sudo apt install nvidia-driver firmware-misc-nonfree && sudo reboot  "
                "(enable the contrib non-free non-free-firmware components first"
                + (f"; needs a release or backports that carries >= {at_least})" if at_least else ")"))
    if "fedora" in ids or "rhel" in ids or "centos" in ids:
        return "sudo dnf install akmod-nvidia && sudo reboot  (from RPM Fusion)"
    if "arch" in ids or "manjaro" in ids:
        return "sudo pacman -S nvidia-open && sudo reboot"
    need = f" >= {at_least}" if at_least else ""
    return (f"install the NVIDIA driver{need}: `sudo ubuntu-drivers autoinstall` on Ubuntu, else your "
            "distribution's NVIDIA driver package; then reboot")


def libcuda_fix(os_id: Sequence[str], branch: int | None) -> str:
    """The command that puts back the driver's libcuda.so.1 (the CUDA driver API library)."""
    ids = set(os_id)
    if "ubuntu" in ids or "pop" in ids or "linuxmint" in ids:
        return f"sudo apt install --reinstall libnvidia-compute-{branch or '<driver branch>'} && sudo reboot"
    if "debian" in ids:
        return "sudo apt install --reinstall libcuda1 && sudo reboot"
    if "fedora" in ids or "rhel" in ids or "centos" in ids:
        return "sudo dnf reinstall xorg-x11-drv-nvidia-cuda-libs && sudo reboot"
    return "reinstall the NVIDIA driver (its libcuda.so.1 is missing), then reboot"


# --------------------------------------------------------------------------- driver

def check_driver(facts: Facts, *, root: Path = Path("/"), need_gpu: bool = True) -> list[Check]:
    """driver, driver.cuda, driver.nouveau (nothing when the facts hold no driver reading)."""
    info = facts.info
    if info is None:
        return []
    modules, os_id = facts.modules, facts.os_id
    pci = facts.pci_gpus or ()
    kernel = facts.kernel_driver
    nouveau = modules is not None and "nouveau" in modules
    nvidia_mod = modules is not None and "nvidia" in modules
    data: dict[str, Any] = {"status": info.status, "error": info.error,
                            "driver_version": str(info.driver_version) if info.driver_version else None,
                            "nvml_version": info.nvml_version, "library": info.library,
                            "kernel_module": kernel, "pci_gpus": list(pci),
                            "seconds": round(info.seconds, 3) if info.seconds is not None else None}
    install = driver_install_fix(os_id)
    checks: list[Check] = []
    fail = Status.FAIL if need_gpu else Status.WARN

    if info.status == "ok":
        n = len(info.gpus)
        who = f"NVIDIA driver {info.driver_version}" if info.driver_version else "an NVIDIA driver"
        msg = f"{who} loaded" + (f" (NVML {info.nvml_version})" if info.nvml_version else "") + f", {n} GPU(s)"
        if n == 0 and not facts.gpus_complete:
            checks.append(Check("driver", Status.OK, f"{who} loaded", None, data))
        elif n == 0:
            checks.append(Check("driver", fail, msg + ": NVML lists no GPU",
                                "check `nvidia-smi -L` and dmesg; a GPU that fell off the bus needs a reboot",
                                data))
        else:
            checks.append(Check("driver", Status.OK, msg, None, data))
    elif info.status == "no-library":
        where = (f"an NVIDIA GPU is on the PCI bus ({', '.join(pci)})" if pci
                 else "no NVIDIA GPU was found on the PCI bus either")
        msg = f"no NVIDIA driver: libnvidia-ml.so.1 cannot be loaded ({info.error}); {where}"
        if nouveau:
            msg += "; the open-source nouveau driver is loaded instead"
        if not need_gpu:
            msg += " (the cpu profile does not need one)"
        checks.append(Check("driver", fail, msg, install, data))
    elif info.status == "not-loaded":
        msg = ("the NVIDIA driver's libraries are installed but its kernel module is not loaded "
               f"({info.error})")
        fix = "sudo modprobe nvidia  (if it fails: `mokutil --sb-state` for Secure Boot, reinstall the driver for this kernel, reboot)"
        if nouveau:
            msg += "; nouveau holds the GPU"
            fix = _NOUVEAU_FIX
        checks.append(Check("driver", fail, msg, fix, data))
    elif info.status == "mismatch":
        lib = info.library_version
        versions = ""
        if kernel or lib:
            versions = (f" (user-space library {lib or '?'}, loaded kernel module {kernel or '?'})")
        msg = (f"NVML/RM version mismatch{versions}: the driver was upgraded but the old kernel "
               f"module is still loaded ({info.error})")
        checks.append(Check("driver", fail, msg, "sudo reboot", data))
    else:
        suffix, known_fix, _ = _explain(info.error)
        checks.append(Check("driver", fail, f"NVML failed: {info.error}{suffix}",
                            known_fix or "run `nvidia-smi` and check `sudo dmesg | grep -i nvrm`", data))

    # driver.cuda: the newest CUDA this driver runs, from libcuda itself (nvmlSystemGetCudaDriverVersion_v2)
    if info.status != "ok":
        checks.append(Check("driver.cuda", Status.SKIP, "no usable driver to ask", None, {}))
    elif info.cuda is not None:
        checks.append(Check("driver.cuda", Status.OK,
                            f"{'driver ' + str(info.driver_version) if info.driver_version else 'the driver'}"
                            f" supports CUDA up to {info.cuda.short}",
                            None, {"cuda": info.cuda.short}))
    else:
        err = info.errors.get("cuda", "unknown")
        branch = info.driver_version.branch if info.driver_version else None
        if "Not Found" in err or "Library" in err:
            fix = libcuda_fix(os_id, branch)
            checks.append(Check("driver.cuda", Status.FAIL,
                                f"libcuda.so.1 cannot be loaded ({err}): no CUDA program can use the GPU",
                                fix, {"error": err}))
        else:
            checks.append(Check("driver.cuda", Status.WARN,
                                f"the CUDA version the driver supports is unknown ({err})",
                                None, {"error": err}))

    # driver.nouveau
    if modules is None:
        checks.append(Check("driver.nouveau", Status.SKIP, "/proc/modules cannot be read", None, {}))
    elif nouveau and nvidia_mod:
        checks.append(Check("driver.nouveau", Status.WARN,
                            "both nouveau and nvidia kernel modules are loaded", _NOUVEAU_FIX,
                            {"modules": ["nouveau", "nvidia"]}))
    elif nouveau:
        checks.append(Check("driver.nouveau", fail,
                            "the nouveau kernel module is loaded: it claims the GPU, so the NVIDIA "
                            "driver cannot (nouveau has no CUDA)",
                            _NOUVEAU_FIX + ("" if info.status == "ok" else f"; then {install}"),
                            {"modules": ["nouveau"]}))
    else:
        checks.append(Check("driver.nouveau", Status.OK, "nouveau is not loaded", None, {}))
    return checks


_NOUVEAU_FIX = ("echo 'blacklist nouveau' | sudo tee /etc/modprobe.d/blacklist-nouveau.conf && "
                "sudo update-initramfs -u && sudo reboot")


# --------------------------------------------------------------------------- GPUs

def check_gpus(info: gpu.DriverInfo) -> list[Check]:
    """gpu.N, gpu.N.memory, gpu.N.bandwidth, gpu.N.processes for every GPU NVML lists."""
    if info.status != "ok":
        return [Check("gpu", Status.SKIP, "no usable NVIDIA driver: GPU checks skipped", None, {})]
    if not info.gpus:
        return [Check("gpu", Status.SKIP, "NVML lists no GPU", None, {})]
    checks: list[Check] = []
    for g in info.gpus:
        p = f"gpu.{g.index}"
        data = g.to_dict()
        if g.cc is not None and g.cc < BNB_4BIT_MIN_CC:
            checks.append(Check(p, Status.WARN,
                                f"{g.name}, compute capability {_cc(g.cc)}: bitsandbytes 4-bit "
                                f"needs {_cc(BNB_4BIT_MIN_CC)} or newer", None, data))
        elif g.cc is None:
            checks.append(Check(p, Status.WARN, f"{g.name or '?'}: compute capability unknown "
                                f"({g.errors.get('cc', 'not reported')})", None, data))
        else:
            checks.append(Check(p, Status.OK, f"{g.name}, compute capability {_cc(g.cc)} ({g.sm})",
                                None, data))
        checks.append(_memory(g))
        bw = g.bandwidth_bytes_per_s
        if bw is None:
            why = g.errors.get("bus_width_bits") or g.errors.get("max_mem_clock_mhz") or "not reported"
            checks.append(Check(f"{p}.bandwidth", Status.SKIP, f"memory bus width or clock unknown ({why})",
                                None, {}))
        else:
            checks.append(Check(f"{p}.bandwidth", Status.OK,
                                f"{_rate(bw)} peak memory bandwidth ({g.bus_width_bits}-bit bus x "
                                f"{g.max_mem_clock_mhz} MHz x 2), the bound on tokens/s",
                                None, {"bytes_per_s": bw, "bus_width_bits": g.bus_width_bits,
                                       "max_mem_clock_mhz": g.max_mem_clock_mhz}))
        checks.append(_processes(g))
    return checks


def _holders(g: gpu.GpuInfo, limit: int = 3) -> str:
    procs = sorted(g.processes or (), key=lambda q: -(q.used_bytes or 0))
    return ", ".join(f"{Path(q.name).name or '?'} (pid {q.pid}, {gib(q.used_bytes, digits=1)})"
                     for q in procs[:limit])


def _memory(g: gpu.GpuInfo) -> Check:
    cid = f"gpu.{g.index}.memory"
    data = {"total": g.memory_total, "used": g.memory_used, "free": g.memory_free,
            "reserved": g.memory_reserved}
    if g.memory_total is None or g.memory_used is None:
        return Check(cid, Status.SKIP, f"memory not reported ({g.errors.get('memory', '?')})", None, data)
    # The driver's own reservation is counted in "used" but nobody can free it.
    taken = g.memory_used - (g.memory_reserved or 0)
    share = taken / g.memory_total if g.memory_total else 0.0
    msg = (f"{gib(g.memory_total, digits=1)} total, {gib(g.memory_used, digits=1)} used, {gib(g.memory_free, digits=1)} free")
    if share >= MEMORY_WARN_SHARE:
        holders = _holders(g)
        graphics = any(q.kind == "graphics" for q in g.processes or ())
        msg += f": other programs hold {share:.0%}" + (f" ({holders})" if holders else "")
        fix = ("close the programs holding GPU memory" + (f": {holders}" if holders else ""))
        if graphics:
            fix += ("; on a laptop with hybrid graphics, run the desktop on the integrated GPU "
                    "(`sudo prime-select on-demand`, then log out and in)")
        return Check(cid, Status.WARN, msg, fix, dict(data, share_used=round(share, 3)))
    return Check(cid, Status.OK, msg, None, dict(data, share_used=round(share, 3)))


def _processes(g: gpu.GpuInfo) -> Check:
    cid = f"gpu.{g.index}.processes"
    if g.processes is None:
        err = g.errors.get("processes.compute") or g.errors.get("processes.graphics") or "?"
        return Check(cid, Status.SKIP, f"process list not available ({err})", None, {"error": err})
    if not g.processes:
        return Check(cid, Status.OK, "no process holds GPU memory", None, {"processes": []})
    rows = [{"pid": q.pid, "name": q.name, "used_bytes": q.used_bytes, "kind": q.kind}
            for q in g.processes]
    return Check(cid, Status.OK, f"{len(rows)} process(es): {_holders(g, limit=5)}", None,
                 {"processes": rows})


# --------------------------------------------------------------------------- toolkit

def check_toolkit_driver(facts: Facts, *, root: Path = Path("/")) -> Check:
    """cuda.driver: the driver is new enough for the toolkit /usr/local/cuda points at.

    Without a known link (a pasted `nvcc --version`), the toolkit that nvcc reports is judged.
    """
    from provisioner import compat

    tk = facts.linked_toolkit
    v: CudaVersion | None = tk.version if tk is not None else None
    what_tk = "the linked"
    if v is None and facts.cuda is None and facts.toolkit_version:
        try:
            v, what_tk = CudaVersion.parse(facts.toolkit_version), "nvcc's"
        except ProvisionError:
            v = None
    if v is None:
        return Check("cuda.driver", Status.SKIP, "no linked toolkit with a known version", None, {})
    info = facts.info or gpu.DriverInfo("no-library")
    os_id = facts.os_id
    need = compat.toolkit_min_driver(v)
    family = compat.family_min_driver(v)
    data: dict[str, Any] = {"toolkit": str(v), "needs": str(need[0]) if need else None,
                            "source": need[1] if need else None,
                            "family_min": str(family[0]) if family else None}
    if info.status != "ok" or info.driver_version is None:
        what = f"needs driver >= {need[0]}" if need else "minimum driver unknown"
        if info.status == "ok" and info.cuda is not None and (v.major, v.minor) > (info.cuda.major, info.cuda.minor):
            return Check("cuda.driver", Status.FAIL,
                         f"the driver supports CUDA up to {info.cuda.short}, {what_tk} toolkit is {v.short}",
                         driver_install_fix(os_id), data)
        return Check("cuda.driver", Status.SKIP, f"CUDA {v.short} toolkit {what}; no driver to compare",
                     None, data)
    drv = info.driver_version
    data["driver"] = str(drv)
    if need is None:
        # A toolkit newer than the table: fall back to the CUDA version the driver reports.
        if info.cuda is not None and (v.major, v.minor) > (info.cuda.major, info.cuda.minor):
            return Check("cuda.driver", Status.FAIL,
                         f"driver {drv} supports CUDA up to {info.cuda.short}, {what_tk} toolkit is {v.short}",
                         driver_install_fix(os_id), data)
        return Check("cuda.driver", Status.OK,
                     f"driver {drv} (CUDA {info.cuda.short if info.cuda else '?'}); no minimum-driver "
                     f"row for CUDA {v.short}", None, data)
    if drv >= need[0]:
        return Check("cuda.driver", Status.OK,
                     f"driver {drv} >= {need[0]}, the minimum for CUDA {v.short}", None, data)
    fix = driver_install_fix(os_id, at_least=str(need[0]))
    older = _older_toolkit(drv, v, facts)
    if older:
        fix += f"; or point /usr/local/cuda at a toolkit this driver runs: {_provision(root, f'cuda switch {older}')}"
    if family is not None and drv >= family[0]:
        return Check("cuda.driver", Status.WARN,
                     f"driver {drv} is older than CUDA {v.short}'s own driver (>= {need[0]}); it meets the "
                     f"{v.major}.x minor-version-compatibility floor (>= {family[0]}), so programs built "
                     "with this toolkit run with a limited feature set (no PTX JIT of newer code)",
                     fix, data)
    return Check("cuda.driver", Status.FAIL,
                 f"driver {drv} is too old for {what_tk} CUDA {v.short} toolkit (needs >= {need[0]}"
                 + (f"; {v.major}.x needs at least {family[0]}" if family else "") + ")",
                 fix, data)


def _older_toolkit(drv: Any, current: CudaVersion, facts: Facts) -> str | None:
    from provisioner import compat

    fits = []
    for t in facts.cuda.toolkits if facts.cuda is not None else ():
        if t.version is None or not t.complete or t.version == current:
            continue
        need = compat.toolkit_min_driver(t.version)
        if need is not None and drv >= need[0]:
            fits.append(t.version)
    return max(fits).short if fits else None


# --------------------------------------------------------------------------- environment

@dataclass(frozen=True)
class EnvContext:
    """What the env checks need besides the probe: where the env is and which profiles fix it."""

    target: EnvTarget | None = None
    profile: Profile | None = None            # ranges to check against (chosen as the issue says)
    profile_requested: bool = False           # --profile given
    fix_profile: Profile | None = None        # the profile this machine should use (for fixes)
    root: Path = Path("/")
    os_id: tuple[str, ...] = ()


def _pip(ctx: EnvContext) -> str:
    py = str(ctx.target.python) if ctx.target else "python"
    return f"{shlex.quote(py)} -m pip"


def _torch_fix(ctx: EnvContext, profile: Profile | None, *, replace: bool = True) -> str | None:
    """Install `profile`'s torch build in the env, in place (plus the fresh-env alternative)."""
    if profile is None:
        return None
    py = str(ctx.target.python) if ctx.target else "python"
    install = shlex.join(profile.install_commands(py)[0])
    fresh = _provision(ctx.root, f"env create --profile {profile.name}")
    if not replace:
        return f"{install}  (or a fresh env: {fresh})"
    # An installed 2.13.0+cpu satisfies `torch==2.13.0`, so pip would keep it: uninstall first.
    companions = " ".join(["torch"] + [n for n, v in (("torchvision", profile.torchvision),
                                                       ("torchaudio", profile.torchaudio)) if v])
    return f"{_pip(ctx)} uninstall -y {companions} && {install}  (or a fresh env: {fresh})"


def _packages_fix(ctx: EnvContext, names: Sequence[str]) -> str | None:
    profile = ctx.profile
    if profile is None:
        return f"{_pip(ctx)} install -U " + " ".join(names)
    from provisioner.profiles import spec_text

    reqs = []
    for name in names:
        spec = profile.packages.get(name)
        reqs.append(shlex.quote(f"{name}{spec_text(spec)}" if spec is not None and str(spec) else name))
    return f"{_pip(ctx)} install " + " ".join(reqs)


def _line(v: CudaVersion | None) -> tuple[int, int] | None:
    return (v.major, v.minor) if v is not None else None


def arch_supported(arch_list: Sequence[str], cc: tuple[int, int]) -> bool:
    """Whether a binary with these `sm_XY` / `compute_XY` targets runs on compute capability `cc`.

    A cubin for sm_XY runs on X.Z with Z >= Y (binary compatibility within a major; the
    arch-specific sm_90a/sm_100f variants do not carry over); PTX (compute_XY) is JIT-compiled for
    any newer GPU.
    """
    for entry in arch_list:
        kind, _, digits = entry.partition("_")
        if not digits or not digits[:-1].isdigit():
            continue
        if not digits[-1].isdigit():
            continue   # sm_90a, sm_100f: tied to that exact architecture family
        target = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and target[0] == cc[0] and target[1] <= cc[1]:
            return True
        if kind == "compute" and target <= cc:
            return True
    return False


def _gpus(info: gpu.DriverInfo) -> tuple[gpu.GpuInfo, ...]:
    return info.gpus if info.status == "ok" else ()


def check_env(probe: Mapping[str, Any] | None, info: gpu.DriverInfo, profile: Profile | None,
              *, ctx: EnvContext | None = None, probe_error: str | None = None) -> list[Check]:
    """env.python, env.torch, env.torch_cuda, env.torch_arch, env.packages, env.bitsandbytes."""
    ctx = ctx or EnvContext(profile=profile)
    if ctx.profile is not profile:
        ctx = EnvContext(ctx.target, profile, ctx.profile_requested, ctx.fix_profile, ctx.root, ctx.os_id)
    where = ctx.target.describe() if ctx.target else "the environment"
    ids = ("env.torch", "env.torch_cuda", "env.torch_arch", "env.packages", "env.bitsandbytes")
    if probe is None:
        msg = f"cannot run the Python of {where}: {probe_error or 'no result'}"
        fresh = _provision(ctx.root, "env create --profile "
                           + (ctx.fix_profile.name if ctx.fix_profile else "auto"))
        return [Check("env.python", Status.FAIL, msg, f"recreate it: {fresh}", {"error": probe_error}),
                *(Check(i, Status.SKIP, "the environment's Python did not run", None, {}) for i in ids)]
    py = probe.get("python") or {}
    pkgs: Mapping[str, str | None] = probe.get("packages") or {}
    if probe.get("partial"):
        # What a paste shows of an environment: judge what is there, leave the rest unjudged.
        return _check_pasted_env(probe, pkgs, info, ctx)
    checks = [Check("env.python", Status.OK, f"Python {py.get('version', '?')} in {where}", None,
                    {"python": py, "prefix": str(ctx.target.prefix) if ctx.target else py.get("prefix"),
                     "kind": ctx.target.kind if ctx.target else None,
                     "probe_seconds": probe.get("seconds")})]
    torch: Mapping[str, Any] = probe.get("torch") or {}
    checks.append(_check_torch(pkgs, torch, ctx, probe_error))
    checks.append(_check_torch_cuda(torch, info, ctx))
    checks.append(_check_torch_arch(torch, info, ctx))
    checks.append(_check_packages(pkgs, ctx))
    checks.append(_check_bnb(pkgs, torch, probe.get("bitsandbytes"), info, ctx))
    return checks


def _check_pasted_env(probe: Mapping[str, Any], pkgs: Mapping[str, str | None], info: gpu.DriverInfo,
                      ctx: EnvContext) -> list[Check]:
    """env.* for an environment known only from pasted text (pip list, collect_env, ...).

    A package the paste does not list is unknown, not missing; torch is judged when the paste
    shows its build (a +cuXYZ/+cpu label, collect_env's "CUDA used to build PyTorch").
    """
    torch: Mapping[str, Any] = probe.get("torch") or {}
    checks: list[Check] = []
    version = pkgs.get("torch") or torch.get("version")
    if version is None:
        checks.append(Check("env.torch", Status.SKIP, "the paste does not show torch", None, {}))
    elif not torch.get("build"):
        checks.append(Check("env.torch", Status.SKIP,
                            f"torch {version}: the paste does not show which build (CUDA or CPU)", None,
                            {"version": version}))
    else:
        checks.append(_check_torch(pkgs, torch, ctx, None))
        checks.append(_check_torch_cuda(torch, info, ctx))
    installed = {k: v for k, v in pkgs.items() if v}
    if ctx.profile is not None and installed:
        problems = ctx.profile.check_versions(installed)
        shown = ", ".join(f"{n} {v}" for n, v in installed.items())
        if problems:
            checks.append(Check("env.packages", Status.WARN,
                                f"against profile {ctx.profile.name}: " + "; ".join(problems),
                                _provision(ctx.root, f"env create --profile {ctx.profile.name}"),
                                {"profile": ctx.profile.name, "installed": installed, "problems": problems}))
        else:
            checks.append(Check("env.packages", Status.OK,
                                f"{shown} within profile {ctx.profile.name}'s ranges", None,
                                {"profile": ctx.profile.name, "installed": installed}))
    return checks


def _check_torch(pkgs: Mapping[str, str | None], torch: Mapping[str, Any], ctx: EnvContext,
                 probe_error: str | None) -> Check:
    version = pkgs.get("torch")
    fix_profile = ctx.fix_profile or ctx.profile
    if version is None:
        return Check("env.torch", Status.FAIL, "torch is not installed in this environment",
                     _torch_fix(ctx, fix_profile, replace=False), {})
    if not torch.get("imported"):
        error = torch.get("error") or probe_error or "the probe did not finish"
        suffix, known_fix, known_id = _explain(error, profile=fix_profile.name if fix_profile else None)
        return Check("env.torch", Status.FAIL,
                     f"torch {version} is installed but `import torch` fails: {error}{suffix}",
                     known_fix or _torch_fix(ctx, fix_profile),
                     {"version": version, "error": error, "known_message": known_id})
    build = torch.get("build")
    desc = "CPU-only build" if build == "cpu" else (
        f"CUDA {torch.get('cuda')} build" if build == "cuda" else f"{build} build")
    took = (f", import {torch['import_seconds']} s" if torch.get("import_seconds") is not None
            else "" if torch.get("pasted") else ", import ? s")
    return Check("env.torch", Status.OK, f"torch {torch.get('version')} ({desc}){took}", None,
                 {"version": torch.get("version"), "build": build, "cuda": torch.get("cuda"),
                  "import_seconds": torch.get("import_seconds")})


def _check_torch_cuda(torch: Mapping[str, Any], info: gpu.DriverInfo, ctx: EnvContext) -> Check:
    cid = "env.torch_cuda"
    if not torch.get("imported"):
        return Check(cid, Status.SKIP, "torch does not import", None, {})
    gpus = _gpus(info)
    fixp = ctx.fix_profile
    build = torch.get("build")
    data = {"build": build, "cuda": torch.get("cuda"), "cuda_available": torch.get("cuda_available"),
            "device_count": torch.get("device_count"),
            "driver_cuda": info.cuda.short if info.cuda else None}
    wants_cuda = ctx.profile is not None and not ctx.profile.is_cpu and ctx.profile_requested
    if build == "cpu":
        if gpus and not (ctx.profile_requested and ctx.profile is not None and ctx.profile.is_cpu):
            names = ", ".join(sorted({g.name or "?" for g in gpus}))
            cuda_profile = next((p for p in (fixp, ctx.profile) if p is not None and not p.is_cpu), None)
            return Check(cid, Status.FAIL,
                         f"torch {torch.get('version')} is a CPU-only build on a machine with "
                         f"{len(gpus)} NVIDIA GPU(s) ({names}): everything would run on the CPU",
                         _torch_fix(ctx, cuda_profile), data)
        if wants_cuda:
            assert ctx.profile is not None
            return Check(cid, Status.FAIL,
                         f"torch is a CPU-only build; profile {ctx.profile.name} wants the "
                         f"{ctx.profile.variant} build", _torch_fix(ctx, ctx.profile), data)
        if info.status == "ok" or info.status == "no-library":
            why = "no NVIDIA driver" if info.status == "no-library" else "NVML lists no GPU"
            return Check(cid, Status.OK, f"CPU-only build, as fits this machine ({why})", None, data)
        return Check(cid, Status.WARN,
                     f"CPU-only build; the NVIDIA driver is installed but not usable ({info.status}): "
                     "once the driver works, this environment needs a CUDA build", None, data)
    if build != "cuda":
        return Check(cid, Status.WARN, f"torch is a {build} build, not CUDA", None, data)

    wheel = CudaVersion.parse(str(torch.get("cuda")))
    warnings_text = "\n".join(torch.get("warnings") or []) + "\n" + str(torch.get("cuda_error") or "")
    if info.status != "ok":
        return Check(cid, Status.WARN,
                     f"CUDA {wheel.short} build, but there is no usable NVIDIA driver: torch runs on the CPU",
                     driver_install_fix(ctx.os_id), data)
    fix = _torch_fix(ctx, fixp)
    if info.cuda is not None and _line(wheel) > _line(info.cuda):  # type: ignore[operator]
        from provisioner import compat

        family = compat.family_min_driver(wheel)
        drv = info.driver_version
        if wheel.major == info.cuda.major and family and drv is not None and drv >= family[0]:
            return Check(cid, Status.WARN,
                         f"torch is built for CUDA {wheel.short}, newer than the CUDA {info.cuda.short} "
                         f"driver {drv} supports; it runs through minor version compatibility "
                         f"(driver >= {family[0]}), without PTX JIT", fix, data)
        suffix, _, known_id = _explain(warnings_text)
        return Check(cid, Status.FAIL,
                     f"torch is built for CUDA {wheel.short} but driver {drv or '?'} supports only up "
                     f"to CUDA {info.cuda.short}: torch cannot use the GPU{suffix}",
                     fix, dict(data, known_message=known_id))
    if gpus and torch.get("cuda_available") is False:
        suffix, known_fix, known_id = _explain(warnings_text, profile=fixp.name if fixp else None)
        detail = (torch.get("warnings") or [torch.get("cuda_error") or "no reason given"])[0]
        return Check(cid, Status.FAIL,
                     f"CUDA {wheel.short} build, but torch.cuda.is_available() is False: {detail}{suffix}",
                     known_fix or fix, dict(data, known_message=known_id))
    if torch.get("kernel_ok") is False:
        err = str(torch.get("kernel_error") or "")
        suffix, known_fix, known_id = _explain(err, profile=fixp.name if fixp else None)
        return Check(cid, Status.FAIL, f"a CUDA kernel failed to run: {err}{suffix}",
                     known_fix or fix, dict(data, known_message=known_id))
    n = torch.get("device_count") or 0
    seen = "" if torch.get("pasted") else f"; {n} device(s) visible to torch"
    return Check(cid, Status.OK,
                 f"CUDA {wheel.short} build; the driver supports CUDA {info.cuda.short if info.cuda else '?'}"
                 + seen, None, data)


def _check_torch_arch(torch: Mapping[str, Any], info: gpu.DriverInfo, ctx: EnvContext) -> Check:
    cid = "env.torch_arch"
    if not torch.get("imported") or torch.get("build") != "cuda":
        return Check(cid, Status.SKIP, "no CUDA build of torch", None, {})
    gpus = [g for g in _gpus(info) if g.cc is not None]
    if not gpus:
        return Check(cid, Status.SKIP, "no GPU with a known compute capability", None, {})
    archs = list(torch.get("arch_list") or [])
    if not archs:
        return Check(cid, Status.SKIP, "torch reports no arch list", None, {})
    missing = [g for g in gpus if not arch_supported(archs, g.cc)]  # type: ignore[arg-type]
    data = {"arch_list": archs, "gpus": {str(g.index): g.sm for g in gpus}}
    if missing:
        fixp = ctx.fix_profile
        what = ", ".join(f"GPU {g.index} {g.name} ({g.sm})" for g in missing)
        return Check(cid, Status.FAIL,
                     f"torch {torch.get('version')} has no kernels for {what}; it was compiled for "
                     f"{' '.join(archs)}: every CUDA op fails with \"no kernel image is available\"",
                     _torch_fix(ctx, fixp), data)
    sms = ", ".join(sorted({g.sm or '?' for g in gpus}))
    return Check(cid, Status.OK, f"the wheel's arch list covers {sms}", None, data)


def _check_packages(pkgs: Mapping[str, str | None], ctx: EnvContext) -> Check:
    cid = "env.packages"
    profile = ctx.profile
    if profile is None:
        return Check(cid, Status.SKIP, "no profile to compare with", None, {})
    installed = {k: v for k, v in pkgs.items() if v}
    problems = profile.check_versions(installed)
    missing = [n for n in profile.packages if not pkgs.get(n) and n != "bitsandbytes"]
    data = {"profile": profile.name, "installed": installed, "problems": problems, "missing": missing}
    if missing:
        problems = [f"missing: {', '.join(missing)}"] + problems
    if problems:
        bad = missing + [n for n in profile.packages if n not in missing and any(
            p.startswith(f"{n} ") for p in problems)]
        torch_bad = any(p.startswith(("torch ", "torchvision ", "torchaudio ")) for p in problems)
        fixes = []
        if torch_bad:
            fixes.append(_torch_fix(ctx, profile) or "")
        if bad:
            fixes.append(_packages_fix(ctx, bad) or "")
        return Check(cid, Status.FAIL, f"against profile {profile.name}: " + "; ".join(problems),
                     " && ".join(f for f in fixes if f) or None, data)
    shown = ", ".join(f"{n} {installed[n]}" for n in profile.packages if n in installed)
    return Check(cid, Status.OK, f"{shown or 'nothing to compare'} within profile {profile.name}'s ranges",
                 None, data)


def _check_bnb(pkgs: Mapping[str, str | None], torch: Mapping[str, Any], bnb: Mapping[str, Any] | None,
               info: gpu.DriverInfo, ctx: EnvContext) -> Check:
    cid = "env.bitsandbytes"
    version = pkgs.get("bitsandbytes")
    fixp = ctx.fix_profile or ctx.profile
    values = {"profile": fixp.name if fixp else None}
    if version is None:
        return Check(cid, Status.FAIL, "bitsandbytes is not installed: no 4-bit loading",
                     _packages_fix(ctx, ["bitsandbytes"]), {})
    if not torch.get("imported"):
        return Check(cid, Status.SKIP, f"bitsandbytes {version} installed; torch does not import", None,
                     {"version": version})
    if not bnb:
        return Check(cid, Status.SKIP, f"bitsandbytes {version} installed; not probed", None, {})
    log = "\n".join(bnb.get("log") or [])
    data = {k: bnb.get(k) for k in ("version", "backend", "native", "library", "native_error",
                                    "matmul", "import_seconds")}
    reinstall = f"{_pip(ctx)} install -U --force-reinstall --no-deps bitsandbytes"
    if not bnb.get("imported"):
        err = str(bnb.get("error"))
        suffix, known_fix, known_id = _explain(err + "\n" + log, **values)
        return Check(cid, Status.FAIL, f"bitsandbytes {version} does not import: {err}{suffix}",
                     known_fix or reinstall, dict(data, known_message=known_id))
    on_gpu = bool(torch.get("cuda_available")) and bool(_gpus(info))
    native = bool(bnb.get("native"))
    lib = bnb.get("library") or "?"
    matmul: Mapping[str, Any] = bnb.get("matmul") or {}
    if on_gpu and (not native or not str(lib).startswith("libbitsandbytes_cuda")):
        err = str(bnb.get("native_error") or f"loaded {lib}")
        suffix, known_fix, known_id = _explain(err + "\n" + log, **values)
        return Check(cid, Status.FAIL,
                     f"bitsandbytes {version} has no working CUDA library for torch's CUDA "
                     f"{torch.get('cuda')}: {err.strip().splitlines()[0] if err.strip() else err}{suffix}",
                     known_fix or f"{_pip(ctx)} install -U bitsandbytes", dict(data, known_message=known_id))
    if not matmul.get("ok"):
        err = str(matmul.get("error") or "no result")
        suffix, known_fix, known_id = _explain(err + "\n" + log, **values)
        return Check(cid, Status.FAIL,
                     f"bitsandbytes {version}: a 4-bit NF4 matmul on {matmul.get('device', '?')} "
                     f"failed: {err}{suffix}", known_fix or reinstall, dict(data, known_message=known_id))
    detail = (f"4-bit NF4 matmul on {matmul.get('device')} matches fp32 within "
              f"{matmul.get('rel_error')}")
    if not native:
        return Check(cid, Status.WARN,
                     f"bitsandbytes {version}: native library not loaded, running on its pure-PyTorch "
                     f"fallback ({bnb.get('native_error') or '?'}); {detail}", reinstall, data)
    return Check(cid, Status.OK, f"bitsandbytes {version}, native library {lib}; {detail}", None, data)


# --------------------------------------------------------------------------- putting it together

def choose_profiles(facts: Facts, environ: Mapping[str, str],
                    profile_name: str | None) -> tuple[Profile | None, Profile | None, list[Check]]:
    """(profile for the range checks, profile whose commands fix this machine, problems as checks).

    Range profile: --profile, else the one matching the env's torch CUDA build, else cpu.
    Fix profile: --profile when this machine can run it, else the one `env create` would choose.
    """
    from provisioner import choose, profiles

    problems: list[Check] = []
    try:
        all_profiles = profiles.load_all(environ)
    except ProvisionError as e:
        return None, None, [Check("profile", Status.FAIL, e.message, e.hint, {})]
    if profile_name:
        # An unknown name is a usage error: let it propagate (exit 2 with the known names).
        rng: Profile | None = profiles.get(profile_name, environ)
    else:
        torch = (facts.probe or {}).get("torch") or {}
        rng = None
        if torch.get("cuda"):
            try:
                rng = profiles.for_cuda(CudaVersion.parse(str(torch["cuda"])), environ)
            except ProvisionError:
                rng = None
        if rng is None:
            rng = all_profiles.get("cpu")
    machine = facts.machine()
    fix: Profile | None = None
    if rng is not None and profile_name and not choose.profile_problems(rng, machine):
        fix = rng
    else:
        try:
            fix = choose.choose_profile(machine, all_profiles).profile
        except ProvisionError:
            fix = None
    if profile_name and rng is not None:
        why = choose.profile_problems(rng, machine)
        if why:
            problems.append(Check("profile", Status.FAIL,
                                  f"profile {rng.name} cannot run on this machine: " + "; ".join(why),
                                  f"use --profile {fix.name}" if fix else None, {"profile": rng.name}))
    return rng, fix, problems


def _is_tool_interpreter(facts: Facts) -> bool:
    """No --env, no activated env, and the interpreter is provision's own, holding no torch (by
    design: the chat stack lives in the environment provision builds, not in the tool's venv)."""
    target, probe = facts.target, facts.probe
    return (target is not None and target.kind == "current" and probe is not None
            and (probe.get("packages") or {}).get("torch") is None)


def _tool_interpreter_checks(facts: Facts, *, root: Path) -> list[Check]:
    assert facts.target is not None
    built = list(facts.built_envs or ())
    if built:
        fix = _provision(root, f"verify --env {built[-1]}")
        msg = (f"no environment given; provision's own interpreter ({facts.target.prefix}) holds no torch "
               f"by design. Environments provision built: {', '.join(built)}")
    else:
        fix = _provision(root, "env create") + "  (or the whole walkthrough: provision up)"
        msg = (f"no environment given; provision's own interpreter ({facts.target.prefix}) holds no torch "
               "by design, and provision has built no environment yet")
    return [Check("env", Status.SKIP, msg, fix, {"interpreter": str(facts.target.python)})]


def recorded_profile(facts: Facts) -> str | None:
    """The profile named in the env's provision record (provision-env.json), if provision built it."""
    name = (facts.record or {}).get("profile")
    return name if isinstance(name, str) and name else None


def evaluate(facts: Facts, *, root: Path | None = None, environ: Mapping[str, str],
             profile_name: str | None) -> list[Check]:
    """Judge the facts: the full, ordered list of checks these facts allow.

    A pure function of the facts (and the profiles): no process, no NVML, no machine file is read
    here. Facts that were not observed (a paste without an nvidia-smi) leave their checks out.
    """
    from provisioner import cuda

    root = Path(facts.root) if root is None else root
    if profile_name is None:
        # An environment `provision env create` built is judged against the profile it was built from.
        profile_name = recorded_profile(facts)
    rng, fixp, profile_checks = choose_profiles(facts, environ, profile_name)
    need_gpu = not (profile_name is not None and rng is not None and rng.is_cpu)
    checks = check_driver(facts, root=root, need_gpu=need_gpu)
    if facts.info is not None and (facts.info.gpus or facts.gpus_complete):
        checks += check_gpus(facts.info)
    if facts.cuda is not None:
        checks.append(cuda.judge_link(facts.cuda, root))
    if facts.cuda is not None or facts.toolkit_version:
        checks.append(check_toolkit_driver(facts, root=root))
    if facts.cuda is not None:
        checks.append(cuda.judge_nvcc_path(facts.cuda, root))
    checks += profile_checks
    info = facts.info or gpu.DriverInfo("no-library")
    if facts.target is None and facts.probe is None:
        if facts.target_error is not None or facts.origin == "live":
            checks.append(Check("env.python", Status.FAIL, facts.target_error or "no environment",
                                facts.target_hint, {}))
        # else: a paste without any environment facts: no env checks
    elif _is_tool_interpreter(facts):
        checks += _tool_interpreter_checks(facts, root=root)
    else:
        ctx = EnvContext(target=facts.target, profile=rng, profile_requested=bool(profile_name),
                         fix_profile=fixp, root=root, os_id=facts.os_id)
        env_checks = check_env(facts.probe, info, rng, ctx=ctx, probe_error=facts.probe_error)
        if facts.origin != "paste":
            # the probe's wall time (interpreter start included) says where verify's seconds go
            env_checks[0] = replace(env_checks[0], data=dict(
                env_checks[0].data, probe_wall_seconds=round(facts.timings.get("env_probe", 0.0), 3)))
        checks += env_checks
    return checks


def run_checks(*, root: Path, environ: Mapping[str, str], env_target: str | None,
               profile_name: str | None) -> list[Check]:
    """Every verify check for this machine and environment (NVML and the env probe run as subprocesses)."""
    facts = gather(root=root, environ=environ, env_target=env_target)
    return evaluate(facts, root=root, environ=environ, profile_name=profile_name)


def smoke_checks(facts: Facts, checks: Sequence[Check], *, environ: Mapping[str, str], model: str | None,
                 quant: str, prompt: str | None, max_new_tokens: int, trust_remote_code: bool,
                 stream_to: Any = None) -> list[Check]:
    """The `--smoke-chat` checks (smoke.*): a real 4-bit chat in the environment, unless it cannot start."""
    from provisioner import smoke

    blocking = [c for c in checks if c.id in ("env.python", "env.torch") and c.status is Status.FAIL]
    if facts.target is None or blocking:
        why = blocking[0].id if blocking else "env.python"
        return [Check("smoke.load", Status.SKIP, f"smoke chat not run: {why} failed", None, {})]
    model = model or smoke.DEFAULT_MODEL
    problem = smoke.local_model_problem(model)
    if problem:
        return [Check("smoke.load", Status.FAIL, problem,
                      "pass a folder holding config.json and the weights, or a hub id", {})]
    kwargs: dict[str, Any] = {"quant": quant, "max_new_tokens": max_new_tokens,
                              "trust_remote_code": trust_remote_code, "environ": environ,
                              "stream_to": stream_to}
    if prompt:
        kwargs["prompt"] = prompt
    result = smoke.run_smoke(facts.target.python, model, **kwargs)
    gpus = _gpus(facts.info or gpu.DriverInfo("no-library"))
    free = gpus[0].memory_free if gpus else None
    return smoke.check_smoke(
        result, estimate_bytes=smoke.estimate_for(model, quant, environ, max_new_tokens=max_new_tokens),
        gpu_present=bool(gpus),
        fit_hint=smoke.fit_hint_for(model, quant, environ, free_bytes=free, max_new_tokens=max_new_tokens),
        bandwidth_bytes_per_s=gpus[0].bandwidth_bytes_per_s if gpus else None)
