"""On a machine with a real NVIDIA GPU (skipped elsewhere): what NVML says and what `provision explain`
reads from this machine's own `nvidia-smi` and `nvcc --version` agree, and verify passes its driver checks."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from provisioner import explain
from provisioner.system import gpu

pytestmark = pytest.mark.gpu


def _live() -> gpu.DriverInfo:
    return gpu.probe({k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_")})


def test_explain_of_this_machines_nvidia_smi_matches_nvml() -> None:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not on PATH")
    info = _live()
    table = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60, check=True).stdout
    facts = explain.explain([("nvidia-smi", table)], environ=dict(os.environ)).facts_summary()
    assert facts["driver"]["version"] == str(info.driver_version)
    assert facts["driver"]["cuda"] == (info.cuda.short if info.cuda else None)
    names = [g["name"] for g in facts["gpus"]]
    assert len(names) == len(info.gpus)
    for shown, real in zip(names, (g.name or "" for g in info.gpus), strict=True):
        assert real.startswith(shown.rstrip(". …").rstrip()), (shown, real)   # nvidia-smi may cut long names
    totals = [g["memory_total_mib"] for g in facts["gpus"]]
    assert totals == [g.memory_total // 2**20 if g.memory_total else None for g in info.gpus]


def test_verify_driver_checks_pass_on_a_real_gpu() -> None:
    from provisioner import facts as facts_mod
    from provisioner.system.checks import check_driver

    facts = facts_mod.gather_machine(root=__import__("pathlib").Path("/"), environ=dict(os.environ))
    checks = {c.id: c for c in check_driver(facts)}
    assert checks["driver"].status.value == "ok", checks["driver"].message
    assert checks["driver.cuda"].status.value == "ok", checks["driver.cuda"].message
