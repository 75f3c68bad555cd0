"""gpu: real pynvml in a subprocess against the fake libnvidia-ml.so.1; kernel modules and PCI under a root."""
from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.system import gpu
from provisioner.versions import CudaVersion, DriverVersion
from tests.fixtures_nvml import GIB, H100, FakeGpu, FakeMachine, FakeProcess, MachineFactory


def test_driver_ok(fake_machine: MachineFactory, fake_nvml_dir: Path) -> None:
    info = gpu.probe(fake_machine(driver="575.57.08", cuda=12090))
    assert info.status == "ok" and info.error is None
    assert info.driver_version == DriverVersion.parse("575.57.08")
    assert info.cuda == CudaVersion(12, 9)
    assert info.nvml_version == "12.575.57.08"
    assert info.library == str(fake_nvml_dir / "libnvidia-ml.so.1")
    (g,) = info.gpus
    assert (g.name, g.cc, g.memory_total, g.processes) == (
        "NVIDIA GeForce RTX 4060 Laptop GPU", (8, 9), 8 * GIB, ())
    assert g.errors == {} and info.errors == {}


def test_two_different_gpus(fake_machine: MachineFactory) -> None:
    machine = FakeMachine(gpus=(FakeGpu(), FakeGpu(name="NVIDIA GeForce GTX 1080 Ti", cc="6.1",
                                                   mem_total=11 * GIB, mem_used=1 * GIB)))
    info = gpu.probe(fake_machine(machine))
    assert [(g.index, g.name, g.cc, g.memory_total) for g in info.gpus] == [
        (0, "NVIDIA GeForce RTX 4060 Laptop GPU", (8, 9), 8 * GIB),
        (1, "NVIDIA GeForce GTX 1080 Ti", (6, 1), 11 * GIB)]
    assert info.gpus[1].memory_free == 10 * GIB
    assert info.gpus[0].uuid != info.gpus[1].uuid


@pytest.mark.parametrize(("fake", "expected"), [
    pytest.param(H100, 2 * 2619e6 * 5120 / 8, id="h100-3.35TBps"),
    pytest.param(FakeGpu(), 2 * 8001e6 * 128 / 8, id="rtx4060-laptop-256GBps"),
])
def test_bandwidth_arithmetic(fake_machine: MachineFactory, fake: FakeGpu, expected: float) -> None:
    (g,) = gpu.probe(fake_machine(gpus=(fake,))).gpus
    assert (g.bus_width_bits, g.max_mem_clock_mhz) == (fake.bus_width, fake.max_mem_clock)
    assert g.bandwidth_bytes_per_s == pytest.approx(expected)
    if fake is H100:
        assert g.bandwidth_bytes_per_s == pytest.approx(3.352e12, rel=1e-3)


def test_desktop_holding_memory(fake_machine: MachineFactory) -> None:
    desktop = FakeGpu(mem_used=6 * GIB, mem_reserved=256 << 20,
                      gfx_procs=(FakeProcess(1234, 5 * GIB, "/usr/lib/xorg/Xorg"),
                                 FakeProcess(2345, None, "/usr/bin/gnome-shell")),
                      procs=(FakeProcess(999, 1 * GIB, "python3"),))
    (g,) = gpu.probe(fake_machine(gpus=(desktop,))).gpus
    # NVML v1 counts the driver's reservation as used
    assert g.memory_used == 6 * GIB + (256 << 20) and g.memory_reserved == 256 << 20
    assert g.memory_free == 8 * GIB - g.memory_used
    assert set(g.processes or ()) == {
        gpu.GpuProcess(999, "python3", 1 * GIB, "compute"),
        gpu.GpuProcess(1234, "/usr/lib/xorg/Xorg", 5 * GIB, "graphics"),
        gpu.GpuProcess(2345, "/usr/bin/gnome-shell", None, "graphics")}


@pytest.mark.parametrize(("init_rc", "status", "error"), [
    pytest.param(18, "mismatch", "RM has detected an NVML/RM version mismatch.", id="rm-mismatch"),
    pytest.param(9, "not-loaded", "Driver Not Loaded", id="module-not-loaded"),
    pytest.param(999, "error", "Unknown Error", id="unknown"),
])
def test_init_failures(fake_machine: MachineFactory, init_rc: int, status: str, error: str) -> None:
    info = gpu.probe(fake_machine(init_rc=init_rc))
    assert (info.status, info.error, info.gpus, info.driver_version) == (status, error, (), None)
    assert info.library is not None and info.library.endswith("libnvidia-ml.so.1")


def test_library_missing(no_driver_environ: dict[str, str]) -> None:
    info = gpu.probe(no_driver_environ)
    assert info.status == "no-library"
    assert info.error is not None and info.error.startswith("NVML Shared Library Not Found")
    assert not info.loaded and info.gpus == ()


def test_library_missing_plain_linker_path(fake_machine: MachineFactory, tmp_path: Path) -> None:
    """No override: the linker's own search fails (skipped where a real driver is installed)."""
    import ctypes.util

    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("a real libnvidia-ml is installed on this machine")
    env = fake_machine()
    env["LD_LIBRARY_PATH"] = str(tmp_path)
    info = gpu.probe(env)
    assert (info.status, info.error) == ("no-library", "NVML Shared Library Not Found")


def test_libcuda_missing(fake_machine: MachineFactory) -> None:
    info = gpu.probe(fake_machine(cuda_v2_rc=12))
    assert info.status == "ok" and info.cuda is None
    assert info.errors["cuda"] == "NVML Shared Library Not Found"


def test_process_query_unsupported(fake_machine: MachineFactory) -> None:
    info = gpu.probe(fake_machine(unsupported=("nvmlDeviceGetComputeRunningProcesses_v3",
                                               "nvmlDeviceGetGraphicsRunningProcesses_v3")))
    (g,) = info.gpus
    assert g.processes is None
    assert g.errors == {"processes.compute": "Not Supported", "processes.graphics": "Not Supported"}
    assert g.name is not None  # one failed field does not hide the others


def test_old_driver_missing_symbols(fake_machine: MachineFactory) -> None:
    """pynvml's unversioned process call raises NVMLLibraryMismatchError (not an NVMLError)."""
    info = gpu.probe(fake_machine(old_driver=True))
    assert info.status == "ok"
    assert info.cuda == CudaVersion(12, 9)       # from the pre-_v2 call
    (g,) = info.gpus
    assert g.processes is None and set(g.errors) == {"processes.compute", "processes.graphics"}


def test_wedged_driver_times_out(fake_machine: MachineFactory) -> None:
    info = gpu.probe(fake_machine(init_delay_ms=20000), timeout=1)
    assert info.status == "error"
    assert info.error is not None and "timed out after 1 s" in info.error


def test_round_trip(fake_machine: MachineFactory) -> None:
    info = gpu.probe(fake_machine(gpus=(H100, FakeGpu())))
    again = gpu.DriverInfo.from_dict(info.to_dict(), seconds=info.seconds)
    assert again == info


def test_kernel_modules_and_versions(tmp_path: Path) -> None:
    assert gpu.kernel_modules(tmp_path) == set()
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/modules").write_text(
        "nouveau 2420736 2 - Live 0x0000000000000000\ndrm 1 1 nouveau, Live 0x0\n")
    assert gpu.kernel_modules(tmp_path) == {"nouveau", "drm"}
    assert gpu.kernel_driver_version(tmp_path) is None
    (tmp_path / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.133.07  Fri Mar 14 2025\nGCC version: gcc 12\n")
    assert gpu.kernel_driver_version(tmp_path) == "570.133.07"
    (tmp_path / "sys/module/nvidia").mkdir(parents=True)
    (tmp_path / "sys/module/nvidia/version").write_text("575.57.08\n")
    assert gpu.kernel_driver_version(tmp_path) == "575.57.08"


def test_nvidia_pci_devices(tmp_path: Path) -> None:
    for addr, vendor, klass in (("0000:00:02.0", "0x8086", "0x030000"),   # Intel iGPU
                                ("0000:01:00.0", "0x10de", "0x030000"),   # NVIDIA VGA
                                ("0000:01:00.1", "0x10de", "0x040300")):  # its HDMI audio
        dev = tmp_path / "sys/bus/pci/devices" / addr
        dev.mkdir(parents=True)
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "class").write_text(klass + "\n")
    assert gpu.nvidia_pci_devices(tmp_path) == ["0000:01:00.0"]
    assert gpu.nvidia_pci_devices(tmp_path / "nothing") == []
