"""NVML (nvidia-ml-py, module `pynvml`) facts about the driver and GPUs, gathered in a subprocess."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from provisioner import proc
from provisioner.errors import CommandError, ProvisionError
from provisioner.versions import CudaVersion, DriverVersion

#: Load this file as libnvidia-ml.so.1 instead of the dynamic linker's choice (a driver outside the
#: linker path, e.g. WSL's /usr/lib/wsl/lib; a missing path reads as "no driver").
LIBRARY_OVERRIDE = "PROVISION_NVML_LIBRARY"

#: NVMLError values (nvml.h) whose meaning decides the driver status.
_NVML_DRIVER_NOT_LOADED = 9
_NVML_LIBRARY_NOT_FOUND = 12
_NVML_LIB_RM_VERSION_MISMATCH = 18

NVIDIA_PCI_VENDOR = "0x10de"

T = TypeVar("T")


class GpuProcess(NamedTuple):
    pid: int
    name: str
    used_bytes: int | None      # None where NVML cannot tell (it says "not available")
    kind: str = "compute"       # "compute" (CUDA) or "graphics" (Xorg, a compositor, a game)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str | None = None
    uuid: str | None = None
    cc: tuple[int, int] | None = None                 # compute capability (major, minor)
    memory_total: int | None = None                   # bytes
    memory_used: int | None = None                    # bytes, including the driver's reservation
    memory_free: int | None = None                    # bytes
    memory_reserved: int | None = None                # bytes the driver keeps (nvmlMemory_v2)
    bus_width_bits: int | None = None
    max_mem_clock_mhz: int | None = None
    processes: tuple[GpuProcess, ...] | None = None   # None: the query failed (see errors)
    errors: Mapping[str, str] = field(default_factory=dict)   # field -> NVML error text

    @property
    def bandwidth_bytes_per_s(self) -> float | None:
        """Peak memory bandwidth: double data rate x memory clock x bus width in bytes."""
        if not self.bus_width_bits or not self.max_mem_clock_mhz:
            return None
        return 2 * self.max_mem_clock_mhz * 1e6 * self.bus_width_bits / 8

    @property
    def sm(self) -> str | None:
        return f"sm_{self.cc[0]}{self.cc[1]}" if self.cc else None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "uuid": self.uuid,
                "cc": list(self.cc) if self.cc else None,
                "memory_total": self.memory_total, "memory_used": self.memory_used,
                "memory_free": self.memory_free, "memory_reserved": self.memory_reserved,
                "bus_width_bits": self.bus_width_bits, "max_mem_clock_mhz": self.max_mem_clock_mhz,
                "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
                "processes": None if self.processes is None else [p._asdict() for p in self.processes],
                "errors": dict(self.errors)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GpuInfo:
        cc = d.get("cc")
        procs = d.get("processes")
        return cls(
            index=int(d["index"]), name=d.get("name"), uuid=d.get("uuid"),
            cc=(int(cc[0]), int(cc[1])) if cc else None,
            memory_total=d.get("memory_total"), memory_used=d.get("memory_used"),
            memory_free=d.get("memory_free"), memory_reserved=d.get("memory_reserved"),
            bus_width_bits=d.get("bus_width_bits"), max_mem_clock_mhz=d.get("max_mem_clock_mhz"),
            processes=None if procs is None else tuple(
                GpuProcess(int(p["pid"]), str(p.get("name") or ""), p.get("used_bytes"),
                           str(p.get("kind") or "compute")) for p in procs),
            errors=dict(d.get("errors") or {}),
        )


@dataclass(frozen=True)
class DriverInfo:
    status: str                        # "ok" | "no-library" | "not-loaded" | "mismatch" | "error"
    error: str | None = None           # NVML's message when status is not "ok"
    driver_version: DriverVersion | None = None
    cuda: CudaVersion | None = None    # newest CUDA the driver supports (nvmlSystemGetCudaDriverVersion_v2)
    nvml_version: str | None = None
    gpus: tuple[GpuInfo, ...] = ()
    library: str | None = None         # the libnvidia-ml file that was loaded
    errors: Mapping[str, str] = field(default_factory=dict)   # system field -> NVML error text
    seconds: float | None = None       # wall time of the probe subprocess

    @property
    def loaded(self) -> bool:
        return self.status == "ok"

    @property
    def library_version(self) -> str | None:
        """The driver version in the loaded library's file name (libnvidia-ml.so.575.57.08)."""
        if not self.library:
            return None
        name = Path(self.library).name
        marker = "libnvidia-ml.so."
        tail = name[len(marker):] if name.startswith(marker) else ""
        return tail if tail.count(".") >= 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error,
                "driver_version": str(self.driver_version) if self.driver_version else None,
                "cuda": self.cuda.short if self.cuda else None, "nvml_version": self.nvml_version,
                "library": self.library, "errors": dict(self.errors),
                "gpus": [g.to_dict() for g in self.gpus]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, seconds: float | None = None) -> DriverInfo:
        errors = dict(d.get("errors") or {})
        driver = None
        if d.get("driver_version"):
            try:
                driver = DriverVersion.parse(str(d["driver_version"]))
            except ProvisionError:
                errors["driver_version"] = f"unparsable driver version {d['driver_version']!r}"
        cuda = None
        raw_cuda = d.get("cuda")
        if isinstance(raw_cuda, int) and raw_cuda > 0:
            cuda = CudaVersion.from_int(raw_cuda)
        elif isinstance(raw_cuda, str) and raw_cuda:
            try:
                cuda = CudaVersion.parse(raw_cuda)
            except ProvisionError:
                errors["cuda"] = f"unparsable CUDA version {raw_cuda!r}"
        return cls(status=str(d.get("status") or "error"), error=d.get("error"),
                   driver_version=driver, cuda=cuda, nvml_version=d.get("nvml_version"),
                   gpus=tuple(GpuInfo.from_dict(g) for g in d.get("gpus") or ()),
                   library=d.get("library"), errors=errors, seconds=seconds)


def probe(environ: Mapping[str, str], timeout: float = 30) -> DriverInfo:
    """Ask NVML about the driver and GPUs in a child interpreter; never raises for a finding.

    A child process keeps a wedged driver from hanging the tool (the timeout kills it) and lets
    `environ`'s LD_LIBRARY_PATH decide which libnvidia-ml.so.1 loads (glibc reads it at start-up).
    """
    import time

    env = dict(environ)
    # The child must import this package even when the tool runs from a source checkout.
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    start = time.monotonic()
    try:
        done = proc.run([sys.executable, "-m", "provisioner.system.gpu"], env=env, timeout=timeout,
                        check=False)
    except CommandError as e:
        return DriverInfo(status="error", error=f"the NVML query did not finish: {e.message}",
                          seconds=time.monotonic() - start)
    seconds = time.monotonic() - start
    try:
        doc = json.loads(done.stdout)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except ValueError:
        detail = proc.tail(done.stderr or done.stdout, 5).strip()
        return DriverInfo(status="error", seconds=seconds,
                          error=f"the NVML query exited {done.returncode} without a result"
                                + (f": {detail}" if detail else ""))
    return DriverInfo.from_dict(doc, seconds=seconds)


def kernel_modules(root: Path) -> set[str]:
    """Names of the loaded kernel modules (`<root>/proc/modules`); empty when it cannot be read."""
    try:
        text = (root / "proc" / "modules").read_text()
    except OSError:
        return set()
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def kernel_driver_version(root: Path) -> str | None:
    """Version of the loaded nvidia kernel module (`/sys/module/nvidia/version`, else /proc/driver)."""
    try:
        return (root / "sys/module/nvidia/version").read_text().strip() or None
    except OSError:
        pass
    try:
        text = (root / "proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  575.57.08  Sat May 24 ..." (uv parses it alike)
    for line in text.splitlines():
        if "Kernel Module" in line:
            parts = line.split("Kernel Module", 1)[1].split()
            return parts[0] if parts else None
    return None


def nvidia_pci_devices(root: Path) -> list[str]:
    """PCI addresses of NVIDIA display controllers (`<root>/sys/bus/pci/devices/*/vendor`, class 0x03)."""
    found = []
    base = root / "sys/bus/pci/devices"
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    for dev in entries:
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
            klass = (dev / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == NVIDIA_PCI_VENDOR and klass.startswith("0x03"):
            found.append(dev.name)
    return found


# ---- the child side: runs as `python -m provisioner.system.gpu`, prints one JSON object ----

def _field(errors: dict[str, str], key: str, fn: Callable[..., T], *args: Any) -> T | None:
    """Call one NVML query; a failure (NVMLError, NVMLLibraryMismatchError, ...) is recorded, not raised."""
    try:
        return fn(*args)
    except Exception as e:  # pynvml's mismatch error is not an NVMLError subclass
        errors[key] = str(e) or type(e).__name__
        return None


def _loaded_library() -> str | None:
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libnvidia-ml" in line:
                    return line.split()[-1]
    except OSError:
        pass
    return None


def _collect(environ: Mapping[str, str]) -> dict[str, Any]:
    override = environ.get(LIBRARY_OVERRIDE)
    if override:
        import ctypes

        try:
            # glibc later matches pynvml's dlopen("libnvidia-ml.so.1") by soname to this object.
            ctypes.CDLL(override)
        except OSError as e:
            return {"status": "no-library", "error": f"NVML Shared Library Not Found ({e})"}
    try:
        import pynvml
    except ImportError as e:
        return {"status": "error", "error": f"cannot import pynvml (package nvidia-ml-py): {e}"}

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        value = getattr(e, "value", None)
        status = {_NVML_LIBRARY_NOT_FOUND: "no-library", _NVML_DRIVER_NOT_LOADED: "not-loaded",
                  _NVML_LIB_RM_VERSION_MISMATCH: "mismatch"}.get(value, "error")  # type: ignore[arg-type]
        return {"status": status, "error": str(e), "library": _loaded_library()}
    except Exception as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}", "library": _loaded_library()}

    errors: dict[str, str] = {}
    out: dict[str, Any] = {"status": "ok", "library": _loaded_library(), "errors": errors}
    out["driver_version"] = _field(errors, "driver_version", pynvml.nvmlSystemGetDriverVersion)
    out["nvml_version"] = _field(errors, "nvml_version", pynvml.nvmlSystemGetNVMLVersion)
    # _v2 asks libcuda.so.1 itself (and fails when it is missing); the plain call may answer
    # "a known supported version" without libcuda, so it is only the fallback for drivers that
    # predate _v2.
    cuda_errors: dict[str, str] = {}
    out["cuda"] = _field(cuda_errors, "cuda", pynvml.nvmlSystemGetCudaDriverVersion_v2)
    if out["cuda"] is None and "Function Not Found" in cuda_errors.get("cuda", ""):
        out["cuda"] = _field(cuda_errors, "cuda", pynvml.nvmlSystemGetCudaDriverVersion)
    if out["cuda"] is None:
        errors.update(cuda_errors)
    count = _field(errors, "count", pynvml.nvmlDeviceGetCount) or 0
    gpus = [_collect_gpu(pynvml, i) for i in range(count)]
    out["gpus"] = gpus
    _field({}, "shutdown", pynvml.nvmlShutdown)
    return out


def _collect_gpu(pynvml: Any, i: int) -> dict[str, Any]:
    gerr: dict[str, str] = {}
    gpu: dict[str, Any] = {"index": i, "errors": gerr}
    handle = _field(gerr, "handle", pynvml.nvmlDeviceGetHandleByIndex, i)
    if handle is None:
        return gpu
    gpu["name"] = _field(gerr, "name", pynvml.nvmlDeviceGetName, handle)
    gpu["uuid"] = _field(gerr, "uuid", pynvml.nvmlDeviceGetUUID, handle)
    cc = _field(gerr, "cc", pynvml.nvmlDeviceGetCudaComputeCapability, handle)
    gpu["cc"] = list(cc) if cc else None
    mem = _field(gerr, "memory", pynvml.nvmlDeviceGetMemoryInfo, handle)
    if mem is not None:
        gpu.update(memory_total=mem.total, memory_used=mem.used, memory_free=mem.free)
    mem2 = _field({}, "memory_v2", pynvml.nvmlDeviceGetMemoryInfo, handle, pynvml.nvmlMemory_v2)
    if mem2 is not None:
        gpu["memory_reserved"] = mem2.reserved
    gpu["bus_width_bits"] = _field(gerr, "bus_width_bits", pynvml.nvmlDeviceGetMemoryBusWidth, handle)
    gpu["max_mem_clock_mhz"] = _field(gerr, "max_mem_clock_mhz", pynvml.nvmlDeviceGetMaxClockInfo,
                                      handle, pynvml.NVML_CLOCK_MEM)
    gpu["processes"] = _collect_processes(pynvml, handle, gerr)
    return gpu


def _collect_processes(pynvml: Any, handle: Any, gerr: dict[str, str]) -> list[dict[str, Any]] | None:
    """Compute and graphics processes; None when neither list could be read."""
    procs: list[dict[str, Any]] = []
    for kind, query, older in (
            ("compute", pynvml.nvmlDeviceGetComputeRunningProcesses,
             pynvml.nvmlDeviceGetComputeRunningProcesses_v2),
            ("graphics", pynvml.nvmlDeviceGetGraphicsRunningProcesses,
             pynvml.nvmlDeviceGetGraphicsRunningProcesses_v2)):
        found = _field(gerr, f"processes.{kind}", query, handle)
        if found is None and "pyNVML version" in gerr.get(f"processes.{kind}", ""):
            # an older driver without the *_v3 symbol still has *_v2
            found = _field(gerr, f"processes.{kind}", older, handle)
        if found is None:
            continue
        gerr.pop(f"processes.{kind}", None)
        for p in found:
            name = _field({}, "name", pynvml.nvmlSystemGetProcessName, p.pid) or ""
            procs.append({"pid": p.pid, "name": name, "used_bytes": p.usedGpuMemory, "kind": kind})
    if "processes.compute" in gerr and "processes.graphics" in gerr:
        return None
    return procs


def main() -> int:
    print(json.dumps(_collect(os.environ)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
