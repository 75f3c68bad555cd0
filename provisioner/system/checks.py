"""Checks of the driver and the GPUs (driver, driver.cuda, driver.nouveau, gpu.N.*): pure functions of Facts."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provisioner.facts import Facts
from provisioner.known_messages import explain
from provisioner.report import Check, Status
from provisioner.system import gpu
from provisioner.units import gib

#: Warn when something other than us already holds this share of a GPU's memory.
MEMORY_WARN_SHARE = 0.25
#: bitsandbytes' 4-bit (NF4/FP4) kernels need compute capability 6.0+ from 0.48 (installation docs).
BNB_4BIT_MIN_CC = (6, 0)


def _rate(bps: float) -> str:
    return f"{bps / 1e12:.2f} TB/s" if bps >= 1e12 else f"{bps / 1e9:.0f} GB/s"


def _cc(cc: tuple[int, int] | None) -> str:
    return "?" if cc is None else f"{cc[0]}.{cc[1]}"


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
    fail = Status.FAIL if need_gpu else Status.WARN
    return [_driver(facts, info, fail, need_gpu), _driver_cuda(info, facts.os_id),
            _nouveau(facts.modules, info, fail, driver_install_fix(facts.os_id))]


def _driver(facts: Facts, info: gpu.DriverInfo, fail: Status, need_gpu: bool) -> Check:
    pci = facts.pci_gpus or ()
    kernel = facts.kernel_driver
    nouveau = facts.modules is not None and "nouveau" in facts.modules
    data: dict[str, Any] = {"status": info.status, "error": info.error,
                            "driver_version": str(info.driver_version) if info.driver_version else None,
                            "nvml_version": info.nvml_version, "library": info.library,
                            "kernel_module": kernel, "pci_gpus": list(pci),
                            "seconds": round(info.seconds, 3) if info.seconds is not None else None}
    if info.status == "ok":
        n = len(info.gpus)
        who = f"NVIDIA driver {info.driver_version}" if info.driver_version else "an NVIDIA driver"
        msg = f"{who} loaded" + (f" (NVML {info.nvml_version})" if info.nvml_version else "") + f", {n} GPU(s)"
        if n == 0 and not facts.gpus_complete:
            return Check("driver", Status.OK, f"{who} loaded", None, data)
        if n == 0:
            return Check("driver", fail, msg + ": NVML lists no GPU",
                         "check `nvidia-smi -L` and dmesg; a GPU that fell off the bus needs a reboot", data)
        return Check("driver", Status.OK, msg, None, data)
    if info.status == "no-library":
        where = (f"an NVIDIA GPU is on the PCI bus ({', '.join(pci)})" if pci
                 else "no NVIDIA GPU was found on the PCI bus either")
        msg = f"no NVIDIA driver: libnvidia-ml.so.1 cannot be loaded ({info.error}); {where}"
        if nouveau:
            msg += "; the open-source nouveau driver is loaded instead"
        if not need_gpu:
            msg += " (the cpu profile does not need one)"
        return Check("driver", fail, msg, driver_install_fix(facts.os_id), data)
    if info.status == "not-loaded":
        msg = ("the NVIDIA driver's libraries are installed but its kernel module is not loaded "
               f"({info.error})")
        fix = ("sudo modprobe nvidia  (if it fails: `mokutil --sb-state` for Secure Boot, reinstall the driver "
               "for this kernel, reboot)")
        if nouveau:
            msg, fix = msg + "; nouveau holds the GPU", _NOUVEAU_FIX
        return Check("driver", fail, msg, fix, data)
    if info.status == "mismatch":
        lib = info.library_version
        versions = f" (user-space library {lib or '?'}, loaded kernel module {kernel or '?'})" if kernel or lib else ""
        return Check("driver", fail, f"NVML/RM version mismatch{versions}: the driver was upgraded but the old "
                     f"kernel module is still loaded ({info.error})", "sudo reboot", data)
    suffix, known_fix, _ = explain(info.error)
    return Check("driver", fail, f"NVML failed: {info.error}{suffix}",
                 known_fix or "run `nvidia-smi` and check `sudo dmesg | grep -i nvrm`", data)


def _driver_cuda(info: gpu.DriverInfo, os_id: Sequence[str]) -> Check:
    """driver.cuda: the newest CUDA this driver runs, from libcuda itself (nvmlSystemGetCudaDriverVersion_v2)."""
    if info.status != "ok":
        return Check("driver.cuda", Status.SKIP, "no usable driver to ask", None, {})
    if info.cuda is not None:
        who = f"driver {info.driver_version}" if info.driver_version else "the driver"
        return Check("driver.cuda", Status.OK, f"{who} supports CUDA up to {info.cuda.short}", None,
                     {"cuda": info.cuda.short})
    err = info.errors.get("cuda", "unknown")
    if "Not Found" in err or "Library" in err:
        branch = info.driver_version.branch if info.driver_version else None
        return Check("driver.cuda", Status.FAIL,
                     f"libcuda.so.1 cannot be loaded ({err}): no CUDA program can use the GPU",
                     libcuda_fix(os_id, branch), {"error": err})
    return Check("driver.cuda", Status.WARN, f"the CUDA version the driver supports is unknown ({err})",
                 None, {"error": err})


def _nouveau(modules: frozenset[str] | None, info: gpu.DriverInfo, fail: Status, install: str) -> Check:
    if modules is None:
        return Check("driver.nouveau", Status.SKIP, "/proc/modules cannot be read", None, {})
    if "nouveau" in modules and "nvidia" in modules:
        return Check("driver.nouveau", Status.WARN, "both nouveau and nvidia kernel modules are loaded",
                     _NOUVEAU_FIX, {"modules": ["nouveau", "nvidia"]})
    if "nouveau" in modules:
        return Check("driver.nouveau", fail,
                     "the nouveau kernel module is loaded: it claims the GPU, so the NVIDIA driver cannot "
                     "(nouveau has no CUDA)",
                     _NOUVEAU_FIX + ("" if info.status == "ok" else f"; then {install}"), {"modules": ["nouveau"]})
    return Check("driver.nouveau", Status.OK, "nouveau is not loaded", None, {})


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
