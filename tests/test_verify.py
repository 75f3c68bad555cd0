"""verify: driver/GPU checks through the fake libnvidia-ml, toolkit vs driver, env checks on real venvs, CLI."""
from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from provisioner import known_messages, profiles, verify
from provisioner.env import checks as env_checks
from provisioner.env import target as envtarget
from provisioner.system import gpu
from provisioner.cli import main
from provisioner.report import Check, Status
from tests.fixtures_env import BuiltEnv, run_provision
from tests.helpers_cuda import link_cuda, make_toolkit
from tests.fixtures_nvml import (GIB, GTX_1080_TI, H100, RTX_5090, FakeGpu, FakeMachine, FakeProcess,
                                 MachineFactory)

# ---------------------------------------------------------------------------- builders


def by_id(checks: list[Check]) -> dict[str, Check]:
    return {c.id: c for c in checks}


def run(root: Path, environ: Mapping[str, str], env: Path | str | None,
        profile: str | None = None) -> dict[str, Check]:
    return by_id(verify.run_checks(root=root, environ=environ, env_target=str(env) if env else None,
                                   profile_name=profile))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "proc").mkdir(parents=True)
    (r / "proc" / "modules").write_text("nvidia_uvm 1 0 - Live 0x0\nnvidia 1 1 nvidia_uvm, Live 0x0\n")
    (r / "etc").mkdir()
    (r / "etc" / "os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n')
    return r


# ---------------------------------------------------------------------------- the probe script

# chat_probe: the shared session fixture (tests/fixtures_env.py), the real probe of the chat env


def test_probe_of_chat_env(chat_probe: dict[str, Any]) -> None:
    assert chat_probe["packages"]["torch"].startswith("2.13.0")
    assert chat_probe["packages"]["bitsandbytes"] == "0.50.2"
    t = chat_probe["torch"]
    assert (t["imported"], t["build"], t["cuda"], t["cuda_available"], t["arch_list"]) == (
        True, "cpu", None, False, [])
    b = chat_probe["bitsandbytes"]
    assert (b["imported"], b["native"], b["library"], b["backend"]) == (
        True, True, "libbitsandbytes_cpu.so", "CPU")
    assert b["matmul"]["ok"] and b["matmul"]["device"] == "cpu" and b["matmul"]["rel_error"] < 0.25


def test_probe_without_torch(bare_env_python: Path) -> None:
    target = envtarget.EnvTarget("venv", bare_env_python.parent.parent, bare_env_python)
    report, problem = verify.probe_env(target, dict(os.environ))
    assert problem is None and report is not None
    assert report["packages"]["torch"] is None
    assert report["torch"]["imported"] is False
    assert report["torch"]["error"].startswith("ModuleNotFoundError: No module named 'torch'")
    assert "bitsandbytes" not in report


def test_probe_survives_a_crashing_import(tmp_path: Path, bare_env_python: Path) -> None:
    """A torch whose import kills the interpreter: made as a two-line stub package, because no real
    wheel crashes on demand; the versions still come back (metadata-only rerun) with the crash."""
    prefix = tmp_path / "crashy"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    site = next(prefix.glob("lib/python3*/site-packages"))
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    dist = site / "torch-2.13.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n")
    target = envtarget.EnvTarget("venv", prefix, prefix / "bin" / "python")
    report, problem = verify.probe_env(target, dict(os.environ))
    assert report is not None and report["packages"]["torch"] == "2.13.0"
    assert problem is not None and "killed by signal 9" in problem
    checks = by_id(env_checks.check_env(report, gpu.DriverInfo("no-library"), None,
                                    probe_error=problem))
    assert checks["env.torch"].status is Status.FAIL
    assert "killed by signal 9" in checks["env.torch"].message


# ---------------------------------------------------------------------------- driver and GPUs

def test_driver_ok_two_gpus(root: Path, fake_machine: MachineFactory, bare_env_python: Path) -> None:
    env = fake_machine(gpus=(H100, FakeGpu()))
    c = run(root, env, bare_env_python)
    assert c["driver"].status is Status.OK
    assert c["driver"].message == "NVIDIA driver 575.57.08 loaded (NVML 12.575.57.08), 2 GPU(s)"
    assert c["driver.cuda"].message == "driver 575.57.08 supports CUDA up to 12.9"
    assert c["driver.nouveau"].status is Status.OK
    assert c["gpu.0"].message == "NVIDIA H100 80GB HBM3, compute capability 9.0 (sm_90)"
    assert c["gpu.1"].message == "NVIDIA GeForce RTX 4060 Laptop GPU, compute capability 8.9 (sm_89)"
    assert c["gpu.0.bandwidth"].message.startswith("3.35 TB/s peak memory bandwidth (5120-bit bus x 2619 MHz")
    assert c["gpu.1.bandwidth"].message.startswith("256 GB/s peak")
    assert c["gpu.0.bandwidth"].data["bytes_per_s"] == pytest.approx(2 * 2619e6 * 5120 / 8)
    assert c["gpu.1.memory"].status is Status.OK and c["gpu.1.processes"].message == "no process holds GPU memory"


def test_desktop_holds_most_memory(root: Path, fake_machine: MachineFactory, bare_env_python: Path) -> None:
    laptop = FakeGpu(mem_used=6 * GIB, gfx_procs=(FakeProcess(1234, 5 * GIB, "/usr/lib/xorg/Xorg"),
                                                  FakeProcess(2345, 1 * GIB, "/usr/bin/gnome-shell")))
    c = run(root, fake_machine(gpus=(laptop,)), bare_env_python)
    mem = c["gpu.0.memory"]
    assert mem.status is Status.WARN
    assert mem.message == ("8.0 GiB total, 6.0 GiB used, 2.0 GiB free: other programs hold 75% "
                           "(Xorg (pid 1234, 5.0 GiB), gnome-shell (pid 2345, 1.0 GiB))")
    assert mem.fix is not None and "Xorg (pid 1234" in mem.fix and "prime-select on-demand" in mem.fix
    assert c["gpu.0.processes"].message == "2 process(es): Xorg (pid 1234, 5.0 GiB), gnome-shell (pid 2345, 1.0 GiB)"


def test_driver_reservation_is_not_a_warning(root: Path, fake_machine: MachineFactory,
                                             bare_env_python: Path) -> None:
    c = run(root, fake_machine(gpus=(FakeGpu(mem_reserved=3 * GIB),)), bare_env_python)
    assert c["gpu.0.memory"].status is Status.OK


def test_nvml_rm_mismatch(root: Path, fake_machine: MachineFactory, bare_env_python: Path) -> None:
    (root / "sys/module/nvidia").mkdir(parents=True)
    (root / "sys/module/nvidia/version").write_text("570.133.07\n")
    c = run(root, fake_machine(init_rc=18), bare_env_python)
    d = c["driver"]
    assert d.status is Status.FAIL and d.fix == "sudo reboot"
    assert d.message.startswith("NVML/RM version mismatch (user-space library ?, loaded kernel module "
                                "570.133.07): the driver was upgraded")
    assert c["driver.cuda"].status is Status.SKIP and c["gpu"].status is Status.SKIP


def test_no_driver_this_machine(root: Path, no_driver_environ: dict[str, str], bare_env_python: Path) -> None:
    c = run(root, no_driver_environ, bare_env_python)
    d = c["driver"]
    assert d.status is Status.FAIL
    assert "no NVIDIA driver: libnvidia-ml.so.1 cannot be loaded" in d.message
    assert "no NVIDIA GPU was found on the PCI bus either" in d.message
    assert d.fix == "sudo ubuntu-drivers autoinstall && sudo reboot"
    # GPU checks skip; toolkit and environment are still checked
    assert c["gpu"].status is Status.SKIP and c["driver.cuda"].status is Status.SKIP
    assert c["cuda.link"].status is Status.WARN
    assert c["env.torch"].status is Status.FAIL


def test_driver_too_old_for_linked_toolkit(root: Path, fake_machine: MachineFactory,
                                           bare_env_python: Path) -> None:
    make_toolkit(root, "12.8.93")
    make_toolkit(root, "12.4.131")
    link_cuda(root, "cuda-12.8")
    c = run(root, fake_machine(driver="515.65.01", cuda=11070), bare_env_python)
    assert c["cuda.link"].status is Status.OK
    d = c["cuda.driver"]
    assert d.status is Status.FAIL
    assert d.message == ("driver 515.65.01 is too old for the linked CUDA 12.8 toolkit "
                         "(needs >= 570.26; 12.x needs at least 525.60.13)")
    assert d.fix == "sudo apt install nvidia-driver-570 && sudo reboot"
    assert d.data["source"].startswith("CUDA 12.8 GA >= 570.26: NVIDIA")


def test_driver_in_minor_version_compat_range(root: Path, fake_machine: MachineFactory,
                                              bare_env_python: Path) -> None:
    make_toolkit(root, "12.8.93")
    make_toolkit(root, "12.4.131")
    link_cuda(root, "cuda-12.8")
    c = run(root, fake_machine(driver="550.54.15", cuda=12040), bare_env_python)
    d = c["cuda.driver"]
    assert d.status is Status.WARN and "minor-version-compatibility floor (>= 525.60.13)" in d.message
    # an installed toolkit this driver runs is offered
    assert d.fix is not None and d.fix.endswith(f"provision --root {root} cuda switch 12.4")


def test_driver_new_enough(root: Path, fake_machine: MachineFactory, bare_env_python: Path) -> None:
    make_toolkit(root, "12.8.93")
    link_cuda(root, "cuda-12.8")
    c = run(root, fake_machine(driver="575.57.08"), bare_env_python)
    assert c["cuda.driver"].status is Status.OK
    assert c["cuda.driver"].message == "driver 575.57.08 >= 570.26, the minimum for CUDA 12.8"


# ---------------------------------------------------------------------------- environment verdicts

def _info(fake_machine: MachineFactory, machine: FakeMachine | None = None, **kw: Any) -> gpu.DriverInfo:
    return gpu.probe(fake_machine(machine, **kw))


def _ctx(probe: Mapping[str, Any], info: gpu.DriverInfo, python: Path,
         profile: str | None = None) -> env_checks.EnvContext:
    """The env context verify builds: range profile, fix profile (as evaluate() chooses them)."""
    facts = verify.Facts(info=info, modules=frozenset(), kernel_driver=None, pci_gpus=(), os_id=("ubuntu",),
                         target=envtarget.EnvTarget("venv", python.parent.parent, python),
                         probe=probe)
    rng, fixp, _ = verify.choose_profiles(facts, os.environ, profile)
    return env_checks.EnvContext(target=facts.target, profile=rng, profile_requested=profile is not None,
                             fix_profile=fixp, root=Path("/"), os_id=("ubuntu",))


def _env_checks(probe: Mapping[str, Any], info: gpu.DriverInfo, python: Path,
                profile: str | None = None) -> dict[str, Check]:
    ctx = _ctx(probe, info, python, profile)
    return by_id(env_checks.check_env(probe, info, ctx.profile, ctx=ctx))


def _cuda_torch(probe: Mapping[str, Any], cuda: str, archs: list[str], *, available: bool,
                warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The chat env's real probe with its torch section as a CUDA build reports it: no CUDA wheel
    can be installed here (multi-GB, no GPU), so the CUDA side of the verdicts runs on this data."""
    p = copy.deepcopy(dict(probe))
    tag = "cu" + cuda.replace(".", "")
    p["packages"]["torch"] = f"2.13.0+{tag}"
    p["torch"].update(version=f"2.13.0+{tag}", cuda=cuda, build="cuda", cuda_available=available,
                      device_count=1 if available else 0, arch_list=archs, warnings=list(warnings),
                      kernel_ok=True if available else None)
    return p


CU126_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CU128_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def test_cpu_wheel_on_gpu_machine(chat_probe: dict[str, Any], chat_env_python: Path,
                                  fake_machine: MachineFactory) -> None:
    info = _info(fake_machine)
    c = _env_checks(chat_probe, info, chat_env_python)
    tc = c["env.torch_cuda"]
    assert tc.status is Status.FAIL
    assert tc.message == ("torch 2.13.0+cpu is a CPU-only build on a machine with 1 NVIDIA GPU(s) "
                          "(NVIDIA GeForce RTX 4060 Laptop GPU): everything would run on the CPU")
    fix_profile = _ctx(chat_probe, info, chat_env_python).fix_profile
    assert fix_profile is not None and not fix_profile.is_cpu
    py = str(chat_env_python)
    assert tc.fix is not None
    assert tc.fix.startswith(f"{py} -m pip uninstall -y torch")
    assert f"{py} -m pip install torch=={fix_profile.torch}" in tc.fix
    assert f"--index-url {fix_profile.torch_index_url}" in tc.fix
    assert fix_profile.torch_index_url.endswith("/" + fix_profile.variant)
    assert f"provision env create --profile {fix_profile.name}" in tc.fix
    # the rest of the stack is fine against the cpu profile (the one matching the wheel)
    assert c["env.packages"].status is Status.OK and c["env.bitsandbytes"].status is Status.OK
    assert c["env.torch_arch"].status is Status.SKIP


def test_cpu_wheel_without_driver_is_right(chat_probe: dict[str, Any], chat_env_python: Path) -> None:
    c = _env_checks(chat_probe, gpu.DriverInfo("no-library"), chat_env_python)
    assert c["env.torch_cuda"].status is Status.OK
    assert c["env.torch_cuda"].message == "CPU-only build, as fits this machine (no NVIDIA driver)"
    assert [c[i].status for i in ("env.python", "env.torch", "env.packages", "env.requirements",
                                  "env.bitsandbytes")] == [Status.OK] * 5
    assert c["env.bitsandbytes"].message.startswith(
        "bitsandbytes 0.50.2, native library libbitsandbytes_cpu.so; 4-bit NF4 matmul on cpu matches fp32")


def test_requested_cuda_profile_with_cpu_wheel(chat_probe: dict[str, Any], chat_env_python: Path) -> None:
    c = _env_checks(chat_probe, gpu.DriverInfo("no-library"), chat_env_python, profile="cu126")
    assert c["env.torch_cuda"].status is Status.FAIL
    assert c["env.torch_cuda"].message == "torch is a CPU-only build; profile cu126 wants the cu126 build"
    pk = c["env.packages"]
    assert pk.status is Status.FAIL and "is the cpu build; profile cu126 wants the cu126 build" in pk.message
    assert pk.fix is not None and "/whl/cu126" in pk.fix


def test_wheel_cuda_newer_than_driver(chat_probe: dict[str, Any], chat_env_python: Path,
                                      fake_machine: MachineFactory) -> None:
    info = _info(fake_machine, driver="575.57.08", cuda=12090)
    probe = _cuda_torch(chat_probe, "13.0", CU128_ARCHS, available=False, warnings=[
        "CUDA initialization: The NVIDIA driver on your system is too old (found version 12090). "
        "Please update your GPU driver by downloading and installing a new version"])
    c = _env_checks(probe, info, chat_env_python)
    tc = c["env.torch_cuda"]
    assert tc.status is Status.FAIL
    assert tc.message.startswith("torch is built for CUDA 13.0 but driver 575.57.08 supports only up to "
                                 "CUDA 12.9: torch cannot use the GPU (cause: The torch wheel was built "
                                 "for a newer CUDA than the installed driver supports")
    fixp = _ctx(probe, info, chat_env_python).fix_profile
    assert fixp is not None and fixp.cuda is not None and fixp.cuda <= info.cuda  # type: ignore[operator]
    assert tc.fix is not None and f"--index-url {fixp.torch_index_url}" in tc.fix
    assert tc.data["known_message"] == "torch-driver-too-old"


def test_wheel_minor_newer_runs_by_minor_version_compat(chat_probe: dict[str, Any], chat_env_python: Path,
                                                        fake_machine: MachineFactory) -> None:
    info = _info(fake_machine, driver="560.35.03", cuda=12060)
    probe = _cuda_torch(chat_probe, "12.8", CU128_ARCHS, available=True)
    tc = _env_checks(probe, info, chat_env_python)["env.torch_cuda"]
    assert tc.status is Status.WARN and "minor version compatibility (driver >= 525.60.13)" in tc.message


@pytest.mark.parametrize(("card", "archs", "sm"), [
    pytest.param(GTX_1080_TI, CU128_ARCHS, "sm_61", id="pascal-on-cu128"),
    pytest.param(RTX_5090, CU126_ARCHS, "sm_120", id="blackwell-on-cu126"),
])
def test_gpu_arch_not_in_wheel(chat_probe: dict[str, Any], chat_env_python: Path,
                               fake_machine: MachineFactory, card: FakeGpu, archs: list[str], sm: str) -> None:
    info = _info(fake_machine, gpus=(card,), driver="575.57.08", cuda=12090)
    probe = _cuda_torch(chat_probe, "12.6" if archs is CU126_ARCHS else "12.8", archs, available=True)
    c = _env_checks(probe, info, chat_env_python)
    ta = c["env.torch_arch"]
    assert ta.status is Status.FAIL
    assert ta.message.startswith(f"torch 2.13.0+cu12{'6' if archs is CU126_ARCHS else '8'} has no kernels "
                                 f"for GPU 0 {card.name} ({sm})")
    fixp = _ctx(probe, info, chat_env_python).fix_profile
    assert fixp is not None and fixp.supports_cc(info.gpus[0].cc)  # type: ignore[arg-type]
    assert ta.fix is not None and f"--index-url {fixp.torch_index_url}" in ta.fix


def test_gpu_arch_covered(chat_probe: dict[str, Any], chat_env_python: Path, fake_machine: MachineFactory) -> None:
    info = _info(fake_machine, gpus=(H100, FakeGpu()))
    probe = _cuda_torch(chat_probe, "12.6", CU126_ARCHS, available=True)
    c = _env_checks(probe, info, chat_env_python)
    assert c["env.torch_arch"].status is Status.OK
    assert c["env.torch_arch"].message == "the wheel's arch list covers sm_89, sm_90"


@pytest.mark.parametrize(("archs", "cc", "ok"), [
    pytest.param(["sm_80", "sm_86"], (8, 9), True, id="sm86-runs-on-8.9"),
    pytest.param(["sm_80", "sm_90"], (8, 9), True, id="sm80-runs-on-8.9"),
    pytest.param(["sm_90a"], (9, 0), False, id="arch-specific-sm90a"),
    pytest.param(["sm_75", "compute_120"], (12, 1), True, id="ptx-jit"),
    pytest.param(["sm_75", "sm_80"], (7, 0), False, id="volta-missing"),
    pytest.param(["sm_90"], (10, 0), False, id="other-major"),
])
def test_arch_supported(archs: list[str], cc: tuple[int, int], ok: bool) -> None:
    assert env_checks.arch_supported(archs, cc) is ok


def test_bnb_without_cuda_library(chat_probe: dict[str, Any], chat_env_python: Path,
                                  fake_machine: MachineFactory) -> None:
    info = _info(fake_machine)
    probe = _cuda_torch(chat_probe, "12.6", CU126_ARCHS, available=True)
    probe["bitsandbytes"].update(native=False, library=None, backend="CUDA", native_error=(
        "\n🚨 CUDA VERSION MISMATCH 🚨\nRequested CUDA version:          12.6\n"
        "Detected PyTorch CUDA version:   12.6\nAvailable pre-compiled versions: \n"))
    c = _env_checks(probe, info, chat_env_python)["env.bitsandbytes"]
    assert c.status is Status.FAIL
    assert c.message.startswith("bitsandbytes 0.50.2 has no working CUDA library for torch's CUDA 12.6: "
                                "🚨 CUDA VERSION MISMATCH 🚨 (cause: bitsandbytes ships no binary")
    assert c.fix is not None and c.fix.startswith("pip install -U bitsandbytes")


# ---------------------------------------------------------------------------- real broken environments

def test_env_without_torch(root: Path, no_driver_environ: dict[str, str], bare_env_python: Path) -> None:
    c = run(root, no_driver_environ, bare_env_python.parent.parent)
    t = c["env.torch"]
    assert t.status is Status.FAIL and t.message == "torch is not installed in this environment"
    cpu = profiles.get("cpu", no_driver_environ)
    assert t.fix == (f"{bare_env_python} -m pip install torch=={cpu.torch} --index-url {cpu.torch_index_url}"
                     f"  (or a fresh env: provision --root {root} env create --profile cpu)")
    assert c["env.bitsandbytes"].status is Status.FAIL
    assert [c[i].status for i in ("env.torch_cuda", "env.torch_arch")] == [Status.SKIP] * 2


def test_env_without_bitsandbytes(root: Path, no_driver_environ: dict[str, str], no_bnb_env_python: Path) -> None:
    c = run(root, no_driver_environ, no_bnb_env_python.parent.parent)
    b = c["env.bitsandbytes"]
    spec = profiles.spec_text(profiles.get("cpu", no_driver_environ).packages["bitsandbytes"])
    assert b.status is Status.FAIL and b.message == "bitsandbytes is not installed: no 4-bit loading"
    assert b.fix == f"{no_bnb_env_python} -m pip install 'bitsandbytes{spec}'"
    assert c["env.torch"].status is Status.OK and c["env.packages"].status is Status.OK


def test_env_with_broken_torch(root: Path, no_driver_environ: dict[str, str],
                               broken_torch_env_python: Path) -> None:
    c = run(root, no_driver_environ, broken_torch_env_python.parent.parent)
    t = c["env.torch"]
    assert t.status is Status.FAIL
    assert t.message == ("torch 2.13.0+cpu is installed but `import torch` fails: ImportError: "
                         "libtorch_cpu.so: cannot open shared object file: No such file or directory")
    assert t.fix is not None and t.fix.startswith(f"{broken_torch_env_python} -m pip uninstall -y torch && ")
    assert c["env.bitsandbytes"].status is Status.SKIP


def test_unknown_env_name(root: Path, no_driver_environ: dict[str, str]) -> None:
    env = dict(no_driver_environ, PATH="/nonexistent")
    c = run(root, env, "nosuch-env")
    assert c["env.python"].status is Status.FAIL
    assert c["env.python"].message.startswith("no environment named 'nosuch-env'")
    assert c["env.python"].fix is not None and "provision env create --name nosuch-env" in c["env.python"].fix


# ---------------------------------------------------------------------------- known messages

@pytest.mark.parametrize(("text", "known_id"), [
    pytest.param("CUDA Setup failed despite GPU being available. Please run python -m bitsandbytes",
                 "bnb-setup-failed-gpu", id="bnb-setup"),
    pytest.param("RuntimeError: CUDA error: no kernel image is available for execution on the device",
                 "no-kernel-image", id="no-kernel-image"),
    pytest.param("The NVIDIA driver on your system is too old (found version 12040).",
                 "torch-driver-too-old", id="driver-too-old"),
    pytest.param("Failed to initialize NVML: Driver/library version mismatch", "nvml-rm-mismatch",
                 id="nvml-mismatch"),
    pytest.param("Some modules are dispatched on the CPU or the disk. Make sure you have enough GPU RAM",
                 "accelerate-cpu-dispatch", id="cpu-dispatch"),
    pytest.param("The installed version of bitsandbytes was compiled without GPU support.", "bnb-cpu-only",
                 id="bnb-cpu"),
    pytest.param("🚨 CUDA SETUP ERROR: Missing dependency: libcudart.so.12 🚨", "bnb-missing-cudart",
                 id="libcudart"),
    pytest.param("NVML Shared Library Not Found", "nvml-library-not-found", id="no-nvml"),
    pytest.param("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "cuda-oom", id="oom"),
    pytest.param("TypeError: Qwen2ForCausalLM.__init__() got an unexpected keyword argument 'load_in_4bit'",
                 "transformers-load-in-4bit-kwarg", id="load-in-4bit"),
    pytest.param("AssertionError: Torch not compiled with CUDA enabled", "torch-cpu-build", id="torch-cpu"),
])
def test_known_messages(text: str, known_id: str) -> None:
    found = known_messages.match(text)
    assert found is not None and found.id == known_id
    assert found.cause and found.fix and found.source


def test_known_messages_table() -> None:
    table = known_messages.table()
    assert len({k.id for k in table}) == len(table) >= 20
    assert known_messages.match("everything is fine") is None and known_messages.match(None) is None
    found = known_messages.match("no kernel image is available for execution on the device")
    assert found is not None
    assert found.fix_with(profile="cu126").endswith("provision env create --profile cu126")
    assert "{profile}" in found.fix_with()


# ---------------------------------------------------------------------------- the command

def invoke(args: list[str], environ: Mapping[str, str]) -> Any:
    result = CliRunner().invoke(main, args, env=dict(environ), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def test_cli_exit_0_and_table(root: Path, no_driver_environ: dict[str, str], chat_env_python: Path) -> None:
    """No driver, but the cpu profile asked for: nothing fails, so exit 0."""
    r = invoke(["--root", str(root), "verify", "--profile", "cpu", "--env", str(chat_env_python.parent.parent)],
               no_driver_environ)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["status", "check", "finding"]
    assert any(line.startswith("warn    driver ") and "(the cpu profile does not need one)" in line
               for line in lines)
    assert lines[-1].startswith("OK: ") and "0 failed" in lines[-1]


def test_cli_doctor_alias_exit_1(root: Path, no_driver_environ: dict[str, str], bare_env_python: Path) -> None:
    args = ["--root", str(root), "{}", "--env", str(bare_env_python.parent.parent)]
    v = invoke([a.replace("{}", "verify") for a in args], no_driver_environ)
    d = invoke([a.replace("{}", "doctor") for a in args], no_driver_environ)
    assert v.exit_code == d.exit_code == 1
    assert v.stdout == d.stdout
    assert "FAIL    driver " in v.stdout and "fix: sudo ubuntu-drivers autoinstall && sudo reboot" in v.stdout
    assert v.stdout.rstrip().splitlines()[-1].startswith("FAILED: ")


def test_cli_unknown_profile_is_usage_error(root: Path, no_driver_environ: dict[str, str],
                                            bare_env_python: Path) -> None:
    r = invoke(["--root", str(root), "verify", "--profile", "cu1266", "--env",
                str(bare_env_python.parent.parent)], no_driver_environ)
    assert r.exit_code == 2
    assert "error: no profile named 'cu1266'" in r.stderr and "hint: " in r.stderr


def test_whole_json_document(root: Path, fake_machine: MachineFactory, chat_env_python: Path) -> None:
    """`provision --root R verify --json --env CHAT` in a real process: one document on stdout."""
    make_toolkit(root, "12.8.93")
    link_cuda(root, "cuda-12.8")
    desktop = FakeGpu(mem_used=3 * GIB, gfx_procs=(FakeProcess(1234, 3 * GIB, "/usr/lib/xorg/Xorg"),))
    env = fake_machine(gpus=(desktop,), driver="560.35.03", cuda=12060)
    env["PATH"] = "/usr/bin:/bin"
    done = subprocess.run([sys.executable, "-m", "provisioner", "--root", str(root), "verify", "--json",
                           "--env", str(chat_env_python.parent.parent)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    doc = json.loads(done.stdout)          # exactly one document, nothing else on stdout
    assert set(doc) == {"version", "ok", "checks"}
    assert (doc["version"], doc["ok"]) == (1, False)
    for check in doc["checks"]:
        assert set(check) == {"id", "status", "message", "fix", "data"}
        assert isinstance(check["message"], str) and isinstance(check["data"], dict)
        assert check["fix"] is None or isinstance(check["fix"], str)
    got = {c["id"]: c for c in doc["checks"]}
    assert [(c["id"], c["status"]) for c in doc["checks"]] == [
        ("driver", "ok"), ("driver.cuda", "ok"), ("driver.nouveau", "ok"),
        ("gpu.0", "ok"), ("gpu.0.memory", "warn"), ("gpu.0.bandwidth", "ok"), ("gpu.0.processes", "ok"),
        ("cuda.link", "ok"), ("cuda.driver", "warn"), ("cuda.nvcc_path", "warn"),
        ("env.python", "ok"), ("env.torch", "ok"), ("env.torch_cuda", "fail"), ("env.torch_arch", "skip"),
        ("env.packages", "ok"), ("env.requirements", "ok"), ("env.bitsandbytes", "ok")]
    assert got["driver"]["message"] == "NVIDIA driver 560.35.03 loaded (NVML 12.560.35.03), 1 GPU(s)"
    assert got["driver"]["fix"] is None
    assert got["driver.cuda"]["data"] == {"cuda": "12.6"}
    assert got["gpu.0"]["data"]["cc"] == [8, 9] and got["gpu.0"]["data"]["bandwidth_bytes_per_s"] == 256032000000.0
    assert got["gpu.0.memory"]["message"] == ("8.0 GiB total, 3.0 GiB used, 5.0 GiB free: other programs "
                                              "hold 38% (Xorg (pid 1234, 3.0 GiB))")
    assert got["gpu.0.memory"]["data"] == {"total": 8 * GIB, "used": 3 * GIB, "free": 5 * GIB,
                                           "reserved": 0, "share_used": 0.375}
    assert got["cuda.link"]["message"].startswith("/usr/local/cuda -> cuda-12.8")
    assert got["cuda.driver"]["fix"].startswith("sudo apt install nvidia-driver-570 && sudo reboot")
    assert got["env.python"]["message"] == (f"Python {platform.python_version()} in venv "
                                            f"{chat_env_python.parent.parent}")
    assert got["env.torch"]["data"]["build"] == "cpu"
    assert got["env.torch_cuda"]["fix"].startswith(f"{chat_env_python} -m pip uninstall -y torch")
    assert got["env.bitsandbytes"]["data"]["library"] == "libbitsandbytes_cpu.so"
    assert got["env.bitsandbytes"]["data"]["matmul"]["ok"] is True


def test_smoke_chat_wiring(root: Path, no_driver_environ: dict[str, str], bare_env_python: Path,
                           chat_probe: dict[str, Any], chat_env_python: Path, tmp_path: Path) -> None:
    """--smoke-chat: skipped when torch is missing; a bad local model folder fails before loading."""
    r = invoke(["--root", str(root), "verify", "--json", "--env", str(bare_env_python), "--smoke-chat",
                "--model", str(tmp_path / "no-model")], no_driver_environ)
    smoke = {c["id"]: c for c in json.loads(r.stdout)["checks"]}["smoke.load"]
    assert (smoke["status"], smoke["message"]) == ("skip", "smoke chat not run: env.torch failed")

    facts = verify.Facts(info=gpu.DriverInfo("no-library"), modules=None, kernel_driver=None, pci_gpus=(),
                         target=envtarget.EnvTarget("venv", chat_env_python.parent.parent, chat_env_python),
                         probe=chat_probe)
    (check,) = verify.smoke_checks(facts, [], environ=no_driver_environ, model=str(tmp_path / "no-model"),
                                   quant="nf4", prompt=None, max_new_tokens=8, trust_remote_code=False)
    assert (check.id, check.status) == ("smoke.load", Status.FAIL)
    assert check.message == f"model folder {tmp_path / 'no-model'} does not exist"


def test_without_env_the_tools_own_interpreter_is_not_judged_as_a_chat_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # provision's own venv holds no torch by design: no --env means "nothing to check" and the way
    # to get an environment, not five failures about a venv that was never meant to hold torch.
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    done = subprocess.run([sys.executable, "-m", "provisioner", "--root", str(tmp_path), "verify", "--json"],
                          capture_output=True, text=True, timeout=120)
    checks = {c["id"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["env"]["status"] == "skip"
    assert "holds no torch by design" in checks["env"]["message"]
    assert checks["env"]["fix"].startswith("provision --root")
    assert "env create" in checks["env"]["fix"]
    assert not any(k.startswith("env.torch") for k in checks)


@pytest.mark.slow
def test_without_env_it_points_at_the_environments_provision_built(cpu_env: BuiltEnv) -> None:
    environ = {k: v for k, v in cpu_env.environ.items() if k != "VIRTUAL_ENV"}
    done = run_provision(["--root", str(cpu_env.root), "verify", "--json"], environ)
    env_check = next(c for c in json.loads(done.stdout)["checks"] if c["id"] == "env")
    assert str(cpu_env.prefix) in env_check["message"]
    # other tests may have built more environments in the same HOME: the fix names one of them
    named = env_check["fix"].split("verify --env ", 1)[1]
    assert named in env_check["message"]
