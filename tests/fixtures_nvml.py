"""Fixtures for the nvml/verify tests: a fake libnvidia-ml.so.1 built from C, machine environs, broken envs."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FAKE_SOURCE = Path(__file__).parent / "fake_nvml" / "fake_nvml.c"
GIB = 1 << 30


@dataclass(frozen=True)
class FakeProcess:
    pid: int
    used_bytes: int | None      # None: NVML reports "not available"
    name: str = ""


@dataclass(frozen=True)
class FakeGpu:
    """One GPU as the fake library reports it (defaults: an RTX 4060 Laptop GPU, 8 GiB, 256 GB/s)."""

    name: str = "NVIDIA GeForce RTX 4060 Laptop GPU"
    cc: str = "8.9"
    mem_total: int = 8 * GIB
    mem_used: int = 0
    mem_reserved: int = 0
    bus_width: int = 128           # bits
    max_mem_clock: int = 8001      # MHz
    procs: Sequence[FakeProcess] = ()        # compute processes
    gfx_procs: Sequence[FakeProcess] = ()    # graphics processes (Xorg, gnome-shell, ...)
    unsupported: Sequence[str] = ()          # NVML function names that answer NOT_SUPPORTED

    def settings(self, index: int) -> dict[str, str]:
        def procs(items: Sequence[FakeProcess]) -> str:
            return ",".join(f"{p.pid}:{'-' if p.used_bytes is None else p.used_bytes}"
                            + (f":{p.name}" if p.name else "") for p in items)

        values = {"GPU_NAME": self.name, "CC": self.cc, "MEM_TOTAL": str(self.mem_total),
                  "MEM_USED": str(self.mem_used), "MEM_RESERVED": str(self.mem_reserved),
                  "BUS_WIDTH": str(self.bus_width), "MAX_MEM_CLOCK": str(self.max_mem_clock),
                  "PROCS": procs(self.procs), "GFX_PROCS": procs(self.gfx_procs),
                  "UNSUPPORTED": ",".join(self.unsupported)}
        # An empty per-GPU value falls back to the unsuffixed one in the C code; none is set,
        # so an empty string means "none" here.
        return {f"FAKE_NVML_{k}_{index}": v for k, v in values.items()}


H100 = FakeGpu(name="NVIDIA H100 80GB HBM3", cc="9.0", mem_total=80 * GIB, bus_width=5120,
               max_mem_clock=2619)
GTX_1080_TI = FakeGpu(name="NVIDIA GeForce GTX 1080 Ti", cc="6.1", mem_total=11 * GIB,
                      bus_width=352, max_mem_clock=5505)
RTX_5090 = FakeGpu(name="NVIDIA GeForce RTX 5090", cc="12.0", mem_total=32 * GIB, bus_width=512,
                   max_mem_clock=14001)


@dataclass(frozen=True)
class FakeMachine:
    """What NVML says about a machine: driver, the CUDA version it supports, its GPUs, failures."""

    driver: str = "575.57.08"
    cuda: int = 12090                     # 1000*major + 10*minor, as NVML encodes it
    gpus: Sequence[FakeGpu] = field(default_factory=lambda: (FakeGpu(),))
    init_rc: int = 0                      # 9 driver not loaded, 18 NVML/RM mismatch
    cuda_v2_rc: int = 0                   # 12: libcuda.so.1 missing
    unsupported: Sequence[str] = ()
    old_driver: bool = False              # the build without *_v3 / _v2 symbols
    init_delay_ms: int = 0                # nvmlInit hangs this long (a wedged driver)

    def settings(self) -> dict[str, str]:
        out = {"FAKE_NVML_DRIVER_VERSION": self.driver, "FAKE_NVML_CUDA_VERSION": str(self.cuda),
               "FAKE_NVML_GPU_COUNT": str(len(self.gpus)), "FAKE_NVML_INIT_RC": str(self.init_rc),
               "FAKE_NVML_CUDA_V2_RC": str(self.cuda_v2_rc),
               "FAKE_NVML_INIT_DELAY_MS": str(self.init_delay_ms),
               "FAKE_NVML_UNSUPPORTED": ",".join(self.unsupported)}
        for i, gpu in enumerate(self.gpus):
            out.update(gpu.settings(i))
        return out


def _compile(out_dir: Path, *defines: str) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "gcc is needed to build the fake libnvidia-ml.so.1"
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", *defines,
                    "-Wl,-soname,libnvidia-ml.so.1", "-o", str(out_dir / "libnvidia-ml.so.1"),
                    str(FAKE_SOURCE)], check=True)
    return out_dir


@pytest.fixture(scope="session")
def fake_nvml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the compiled fake libnvidia-ml.so.1 (current driver)."""
    return _compile(tmp_path_factory.mktemp("fake-nvml"))


@pytest.fixture(scope="session")
def fake_nvml_old_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake built as an old driver: no nvmlSystemGetCudaDriverVersion_v2, no *_v3 process queries."""
    return _compile(tmp_path_factory.mktemp("fake-nvml-old"), "-DFAKE_NVML_OLD_DRIVER")


def _base_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("FAKE_NVML_") and k not in ("LD_LIBRARY_PATH", "PROVISION_NVML_LIBRARY")}


MachineFactory = Callable[..., dict[str, str]]


@pytest.fixture
def fake_machine(fake_nvml_dir: Path, fake_nvml_old_dir: Path) -> MachineFactory:
    """fake_machine(FakeMachine(...)) or fake_machine(**FakeMachine fields) -> an environ for `gpu.probe`."""

    def make(machine: FakeMachine | None = None, **fields: object) -> dict[str, str]:
        m = machine or FakeMachine(**fields)  # type: ignore[arg-type]
        env = _base_environ()
        env["LD_LIBRARY_PATH"] = str(fake_nvml_old_dir if m.old_driver else fake_nvml_dir)
        env.update(m.settings())
        return env

    return make


@pytest.fixture
def no_driver_environ(tmp_path: Path) -> dict[str, str]:
    """An environ in which no libnvidia-ml.so.1 can load, even on a machine that has a real driver."""
    env = _base_environ()
    env["PROVISION_NVML_LIBRARY"] = str(tmp_path / "no-driver" / "libnvidia-ml.so.1")
    return env


# ---- environments derived from the shared chat env, broken the way real ones break ----

def _site_packages(prefix: Path) -> Path:
    found = sorted(prefix.glob("lib/python3*/site-packages"))
    assert found, f"no site-packages under {prefix}"
    return found[0]


def derive_env(base_python: Path, dest: Path, *, drop: Sequence[str] = (),
               missing_torch_libs: Sequence[str] = ()) -> Path:
    """A real venv at `dest` whose site-packages links to `base_python`'s entries (no copy of torch).

    `drop`: top-level entries left out (name prefixes, so "bitsandbytes" drops its dist-info too),
    like an install that never happened. `missing_torch_libs`: files left out of torch/lib, like an
    interrupted or half-cleaned install; `import torch` then fails for real.
    """
    python = dest / "bin" / "python"
    if python.exists():
        return python
    base_prefix = base_python.parent.parent
    subprocess.run([str(base_python), "-m", "venv", "--without-pip", str(dest)], check=True)
    src, dst = _site_packages(base_prefix), _site_packages(dest)
    for entry in src.iterdir():
        if any(entry.name.startswith(d) for d in drop):
            continue
        if entry.name == "torch" and missing_torch_libs:
            torch_dir = dst / "torch"
            torch_dir.mkdir()
            for part in entry.iterdir():
                if part.name == "lib":
                    (torch_dir / "lib").mkdir()
                    for lib in part.iterdir():
                        if lib.name not in missing_torch_libs:
                            (torch_dir / "lib" / lib.name).symlink_to(lib)
                else:
                    (torch_dir / part.name).symlink_to(part)
            continue
        target = dst / entry.name
        if not target.exists():
            target.symlink_to(entry)
    return python


@pytest.fixture(scope="session")
def no_bnb_env_python(chat_env_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat env without bitsandbytes (torch, transformers, accelerate present)."""
    return derive_env(chat_env_python, tmp_path_factory.mktemp("envs") / "no-bnb", drop=("bitsandbytes",))


@pytest.fixture(scope="session")
def broken_torch_env_python(chat_env_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat env with torch/lib/libtorch_cpu.so gone: metadata says torch 2.13.0, import fails."""
    return derive_env(chat_env_python, tmp_path_factory.mktemp("envs") / "broken-torch",
                      missing_torch_libs=("libtorch_cpu.so",))
