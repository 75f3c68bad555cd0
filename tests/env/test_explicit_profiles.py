"""A named profile (or a lock) on a machine that cannot check it: planned and built for the target with
one warning line; a machine that shows it cannot run the build still refuses; a dry run runs no conda
command; the GPU checks after the build are left to `provision verify` on the target."""
from __future__ import annotations

import copy
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from provisioner import env as envmod
from provisioner import profiles
from provisioner.cli import main
from provisioner.env import checks as env_checks
from provisioner.env import create
from provisioner.env import target as envtarget
from provisioner.env.choose import GpuFact, MachineFacts
from provisioner.errors import ProvisionError
from provisioner.report import Check, Status
from provisioner.system import gpu
from provisioner.versions import CudaVersion, DriverVersion
from tests.env.test_lock import make_lock
from tests.fixtures_env import STANDIN, isolated_environ
from tests.fixtures_nvml import GTX_1080_TI, FakeMachine, MachineFactory

NO_GPU = MachineFacts()
PASCAL_580 = MachineFacts("ok", DriverVersion.parse("580.95.05"), CudaVersion.parse("13.0"),
                          (GpuFact(0, "GTX 1080 Ti", (6, 1)),))
CU126_WARNING = ("warning: no NVIDIA driver/GPU visible here (no libnvidia-ml.so.1 found): profile cu126 needs "
                 "driver >= 525.60.13 and a GPU of compute capability 5.0-9.x; `provision verify` on the "
                 "target machine checks it")


def gpu_less(tmp_path: Path, *, conda_bin: Path | None = None, root: Path | None = None) -> dict[str, str]:
    """An environ with no loadable libnvidia-ml.so.1 (even where a real driver exists), the stand-in
    conda on PATH (logging its argv to tmp_path/conda.log), and uv kept off PATH (pip installs)."""
    bin_dir = conda_bin or tmp_path / "conda-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if not (bin_dir / "conda").exists():
        (bin_dir / "conda").symlink_to(STANDIN)
    env = isolated_environ(Path(os.environ["HOME"]), uv=False, extra_path=[bin_dir])
    env.update(PROVISION_NVML_LIBRARY=str(tmp_path / "no-driver" / "libnvidia-ml.so.1"),
               STANDIN_LOG=str(tmp_path / "conda.log"), STANDIN_ROOT=str(root or tmp_path / "conda-root"))
    return env


def conda_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "conda.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def invoke(args: list[str], env: dict[str, str]) -> Result:
    result = CliRunner().invoke(main, args, env=env)
    assert "Traceback" not in result.output
    return result


def warnings(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


# --- the command -------------------------------------------------------------------------

def test_named_cuda_profile_dry_run_on_a_gpu_less_machine(tmp_path: Path) -> None:
    env = gpu_less(tmp_path)
    result = invoke(["--root", str(tmp_path), "env", "create", "--backend", "conda", "--name", "llm",
                     "--profile", "cu126", "--dry-run"], env)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Environment: conda env 'llm' in conda's envs directory (conda, new)" in out
    assert "Machine:     no usable NVIDIA driver (no-library), no linked toolkit" in out
    assert "Profile:     cu126: requested with --profile cu126" in out
    conda = tmp_path / "conda-bin" / "conda"
    python = "'<conda envs dir>/llm/bin/python'"
    assert f"  1. create the conda environment\n       {conda} create -y -n llm python=3.11 pip\n" in out
    assert (f"  2. install torch\n       {python} -m pip install --disable-pip-version-check "
            "torch==2.13.0+cu126 torchvision==0.28.0+cu126 --index-url https://download.pytorch.org/whl/cu126\n"
            in out)
    assert "  3. install packages\n" in out and "'bitsandbytes>=0.46.1'" in out.split("  3. install packages")[1]
    assert ("Note: a dry run runs no conda command, so the build asks `conda info --json` for the envs "
            "directory (shown as <conda envs dir>), and checks there whether 'llm' exists already") in out
    # one warning line, on stderr: what could not be checked here, and where it will be
    assert warnings(result) == [CU126_WARNING]
    assert conda_calls(tmp_path) == []                  # the stand-in logs every argv it gets
    assert not (tmp_path / "conda-root").exists()


def test_dry_run_json_carries_the_warning(tmp_path: Path) -> None:
    env = gpu_less(tmp_path)
    result = invoke(["--root", str(tmp_path), "env", "create", "--backend", "conda", "--profile", "cu126",
                     "--dry-run", "--json"], env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    plan = doc["plan"]
    assert (doc["status"], plan["profile"], plan["prefix"], plan["conda_name"]) == ("planned", "cu126", None, "llm")
    assert plan["warnings"] == [CU126_WARNING.removeprefix("warning: ")]
    assert plan["choice"]["unchecked"] == plan["warnings"][0] and plan["refused"] is None
    assert plan["torch"]["requirements"] == ["torch==2.13.0+cu126", "torchvision==0.28.0+cu126"]
    assert warnings(result) == [CU126_WARNING]
    assert conda_calls(tmp_path) == []


def test_cuda_option_and_venv_too(tmp_path: Path) -> None:
    env = gpu_less(tmp_path)
    result = invoke(["--root", str(tmp_path), "env", "create", "--backend", "venv", "--cuda", "13.0",
                     "--prefix", str(tmp_path / "env"), "--dry-run"], env)
    assert result.exit_code == 0, result.output
    assert "Profile:     cu130: requested with --cuda 13.0" in result.stdout
    assert "torch==2.13.0+cu130" in result.stdout
    assert warnings(result) == [
        "warning: no NVIDIA driver/GPU visible here (no libnvidia-ml.so.1 found): profile cu130 needs driver "
        ">= 580.65.06 and a GPU of compute capability 7.5-10.x, 12.0 or newer; `provision verify` on the "
        "target machine checks it"]
    assert not (tmp_path / "env").exists()


def test_auto_keeps_choosing_from_this_machine(tmp_path: Path) -> None:
    result = invoke(["--root", str(tmp_path), "env", "create", "--backend", "venv", "--prefix",
                     str(tmp_path / "env"), "--dry-run"], gpu_less(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Profile:     cpu: no NVIDIA GPU/driver detected -> the CPU build of torch" in result.stdout
    assert warnings(result) == []


# --- a machine that shows it cannot run the named build still refuses ------------------------------

def test_visible_contradiction_refused_after_the_dry_run_plan(tmp_path: Path, fake_machine: MachineFactory) -> None:
    env = fake_machine(FakeMachine(driver="580.95.05", cuda=13000, gpus=(GTX_1080_TI,)))
    args = ["--root", str(tmp_path), "env", "create", "--profile", "cu130", "--prefix", str(tmp_path / "env")]
    why = ("error: profile cu130 cannot run on this machine: its torch 2.13.0 cu130 wheel has no kernels for "
           "sm_61 (GPU 0 NVIDIA GeForce GTX 1080 Ti)")
    dry = invoke([*args, "--dry-run"], env)
    assert dry.exit_code == 1
    assert "Profile:     cu130: requested with --profile cu130" in dry.stdout        # the plan, shown
    assert "torch==2.13.0+cu130" in dry.stdout
    assert why in dry.stderr and "hint: upgrade the NVIDIA driver, or pick a profile" in dry.stderr
    assert warnings(dry) == []
    real = invoke(args, env)
    assert real.exit_code == 1 and why in real.stderr
    assert real.stdout == ""                                                         # refused before any plan
    assert not (tmp_path / "env").exists()


def test_driver_without_gpu_still_checks_the_driver(tmp_path: Path, fake_machine: MachineFactory) -> None:
    env = fake_machine(FakeMachine(driver="470.256.02", cuda=11040, gpus=()))
    args = ["--root", str(tmp_path), "env", "create", "--backend", "venv", "--prefix", str(tmp_path / "env")]
    old = invoke([*args, "--profile", "cu126", "--dry-run"], env)
    assert old.exit_code == 1
    assert "error: profile cu126 cannot run on this machine: needs driver >= 525.60.13, this machine has " \
           "470.256.02" in old.stderr
    fits = invoke([*args, "--profile", "cu118", "--dry-run"], env)
    assert fits.exit_code == 0, fits.output
    assert warnings(fits) == ["warning: NVIDIA driver 470.256.02 reports no GPU here: profile cu118 needs a GPU "
                              "of compute capability 5.0-9.x; `provision verify` on the target machine checks it"]


# --- locks: the same rule ------------------------------------------------------------------------

def lock_plan(tmp_path: Path, profile: str, facts: MachineFacts, *, dry_run: bool = False) -> envmod.CreatePlan:
    lock_file = make_lock(tmp_path / "lock", profile)
    return envmod.plan_create(envmod.CreateOptions(from_lock=lock_file, prefix=tmp_path / "env", backend="venv",
                                                   dry_run=dry_run),
                              root=tmp_path, environ=dict(os.environ), facts=facts)


def test_lock_for_a_gpu_machine_planned_on_a_gpu_less_one(tmp_path: Path) -> None:
    (tmp_path / "lock").mkdir()
    plan = lock_plan(tmp_path, "cu126", NO_GPU)
    assert plan.warnings == (
        "no NVIDIA driver/GPU visible here (no libnvidia-ml.so.1 found): the lock's cu126 build (profile cu126) "
        "needs driver >= 525.60.13 and a GPU of compute capability 5.0-9.x; `provision verify` on the target "
        "machine checks it",)
    assert plan.torch_requirements == ("torch==2.13.0+cu126",) and plan.refusal is None


def test_lock_the_machine_contradicts_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lock").mkdir()
    with pytest.raises(ProvisionError, match="is a cu130 build of profile cu130 that this machine cannot run: "
                                             "its torch 2.13.0 cu130 wheel has no kernels for sm_61"):
        lock_plan(tmp_path, "cu130", PASCAL_580)
    plan = lock_plan(tmp_path, "cu130", PASCAL_580, dry_run=True)      # a dry run shows the plan first
    assert plan.refusal is not None and plan.to_dict()["refused"] == plan.refusal.message
    assert plan.warnings == ()
    with pytest.raises(ProvisionError, match="that this machine cannot run"):
        envmod.apply_create(plan, environ=dict(os.environ))
    assert not (tmp_path / "env").exists()


# --- where a dry run puts a conda env without running conda ----------------------------------------

def test_envs_dir_from_conda_envs_path(tmp_path: Path) -> None:
    env = gpu_less(tmp_path)
    env["CONDA_ENVS_PATH"] = os.pathsep.join([str(tmp_path / "my-envs"), str(tmp_path / "other")])
    result = invoke(["--root", str(tmp_path), "env", "create", "--backend", "conda", "--profile", "cpu",
                     "--dry-run"], env)
    assert result.exit_code == 0, result.output
    prefix = tmp_path / "my-envs" / "llm"
    assert f"Environment: {prefix} (conda env 'llm') (conda, new)" in result.stdout
    assert (f"Note: conda's envs directory {tmp_path / 'my-envs'} is read from CONDA_ENVS_PATH (a dry run runs "
            "no conda command); the build asks `conda info --json`") in result.stdout
    assert conda_calls(tmp_path) == []


def test_envs_dir_of_the_installation_matches_what_conda_says(tmp_path: Path) -> None:
    """A conda installation's layout (ROOT/bin/conda beside ROOT/conda-meta): the dry run's prefix is
    where the build, which asks the stand-in, puts it too."""
    base = tmp_path / "miniforge3"
    (base / "conda-meta").mkdir(parents=True)
    env = gpu_less(tmp_path, conda_bin=base / "bin", root=base)
    options = envmod.CreateOptions(backend="conda", profile="cu126", dry_run=True)
    dry = envmod.plan_create(options, root=tmp_path, environ=env, facts=NO_GPU)
    assert dry.prefix == base / "envs" / "llm" and not dry.location.pending
    assert conda_calls(tmp_path) == []
    real = envmod.plan_create(envmod.CreateOptions(backend="conda", profile="cu126"), root=tmp_path,
                              environ=env, facts=NO_GPU)
    assert real.prefix == dry.prefix
    assert conda_calls(tmp_path) == [["conda", "info", "--json"]]

    # what is there already is judged in the dry run too: provision never takes over a foreign folder
    (base / "envs" / "llm").mkdir(parents=True)
    (base / "envs" / "llm" / "data.txt").write_text("mine")
    with pytest.raises(ProvisionError, match="already exists and was not created by provision"):
        envmod.plan_create(options, root=tmp_path, environ=env, facts=NO_GPU)


def test_a_condarc_with_envs_dirs_leaves_it_to_the_build(tmp_path: Path) -> None:
    base = tmp_path / "miniforge3"
    (base / "conda-meta").mkdir(parents=True)
    env = gpu_less(tmp_path, conda_bin=base / "bin", root=base)
    Path(env["HOME"], ".condarc").write_text("channels: [conda-forge]\nenvs_dirs:\n  - /somewhere/else\n")
    dry = envmod.plan_create(envmod.CreateOptions(backend="conda", dry_run=True), root=tmp_path, environ=env,
                             facts=NO_GPU)
    assert dry.location.pending and dry.to_dict()["prefix"] is None
    assert conda_calls(tmp_path) == []
    with pytest.raises(ProvisionError, match="a dry run's plan cannot be applied"):
        envmod.apply_create(dry, environ=env)


# --- after the build: the GPU checks are the target's; the package and build checks still run --------

def as_cu126(probe: dict[str, Any]) -> dict[str, Any]:
    """The chat env's probe with torch as the cu126 build reports itself on a machine without a GPU: no CUDA
    wheel can be installed here (several GB), so the CUDA side runs on this data."""
    p = copy.deepcopy(probe)
    p["packages"]["torch"] = "2.13.0+cu126"
    p["torch"].update(version="2.13.0+cu126", cuda="12.6", build="cuda", cuda_available=False, device_count=0,
                      arch_list=["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"])
    return p


def judged(probe: dict[str, Any], python: Path, *, on_target: str | None) -> dict[str, Check]:
    cu126 = profiles.get("cu126", os.environ)
    ctx = env_checks.EnvContext(target=envtarget.EnvTarget("venv", python.parent.parent, python), profile=cu126,
                                profile_requested=True, fix_profile=cu126, on_target=on_target)
    return {c.id: c for c in env_checks.check_env(probe, gpu.DriverInfo("no-library"), cu126, ctx=ctx)}


WHY = "no NVIDIA driver/GPU visible here (no libnvidia-ml.so.1 found)"


def test_gpu_checks_are_left_to_the_target(chat_probe: dict[str, Any], chat_env_python: Path) -> None:
    c = judged(as_cu126(chat_probe), chat_env_python, on_target=WHY)
    on_target = f": {WHY}; `provision verify` on the target machine checks it"
    assert c["env.torch_cuda"].status is Status.SKIP
    assert c["env.torch_cuda"].message == "CUDA 12.6 build, not run on a GPU here" + on_target
    assert c["env.torch_arch"].status is Status.SKIP
    assert c["env.torch_arch"].message == "the wheel's architectures against the GPUs" + on_target
    assert c["env.bitsandbytes"].status is Status.SKIP
    assert c["env.bitsandbytes"].message == ("bitsandbytes 0.50.2 imports; its CUDA library and a 4-bit matmul on "
                                             "the GPU are not run here" + on_target)
    # what does not need the GPU is judged as anywhere
    assert [c[i].status for i in ("env.python", "env.torch")] == [Status.OK, Status.OK]
    assert c["env.torch"].message.startswith("torch 2.13.0+cu126 (CUDA 12.6 build)")
    assert c["env.packages"].status is Status.OK
    assert not [k for k, v in c.items() if v.status is Status.FAIL]
    # the same environment judged as this machine's own: the missing driver is this machine's problem
    assert judged(as_cu126(chat_probe), chat_env_python, on_target=None)["env.torch_cuda"].status is Status.WARN


def test_package_checks_still_fail_the_build(chat_probe: dict[str, Any], chat_env_python: Path) -> None:
    cpu_torch = judged(chat_probe, chat_env_python, on_target=WHY)
    assert cpu_torch["env.torch_cuda"].status is Status.FAIL
    assert cpu_torch["env.torch_cuda"].message == "torch is a CPU-only build; profile cu126 wants the cu126 build"
    no_bnb = as_cu126(chat_probe)
    no_bnb["packages"]["bitsandbytes"] = None
    assert judged(no_bnb, chat_env_python, on_target=WHY)["env.bitsandbytes"].status is Status.FAIL


def test_the_build_verify_step_runs_the_real_probe(tmp_path: Path, chat_env_python: Path) -> None:
    """create's verify step on a plan of cu126 made on a GPU-less machine, against a real environment
    (the chat env: a CPU torch): it is judged, not waved through."""
    plan = envmod.plan_create(envmod.CreateOptions(prefix=tmp_path / "env", profile="cu126", backend="venv"),
                              root=tmp_path, environ=dict(os.environ), facts=NO_GPU)
    assert plan.unchecked is not None
    prefix = chat_env_python.parent.parent
    plan = replace(plan, location=replace(plan.location, prefix=prefix), python=chat_env_python)
    checks = {c.id: c for c in create.env_checks(plan, dict(os.environ))}
    assert checks["env.torch_cuda"].status is Status.FAIL
    assert checks["env.torch_arch"].status is Status.SKIP
