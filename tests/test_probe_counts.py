"""Each command reads the machine once: `nvcc --version` once per toolkit and NVML once, counted by a
logging fake nvcc and the fake libnvidia-ml (both append a line per call)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures_env import BuiltEnv, run_provision
from tests.fixtures_nvml import FakeMachine, MachineFactory
from tests.helpers_cuda import link_cuda, make_toolkit

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"


def _counting(tmp_path: Path, base: dict[str, str], fake_machine: MachineFactory) -> tuple[Path, dict[str, str], Path]:
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.8")
    link_cuda(root, "cuda-12.6")
    log = tmp_path / "calls.log"
    # A driver that lists no GPU: the walkthrough then runs on the CPU build, and every stage runs.
    nvml = {k: v for k, v in fake_machine(FakeMachine(gpus=())).items()
            if k.startswith("FAKE_NVML_") or k == "LD_LIBRARY_PATH"}
    environ = dict(base, **nvml, NVCC_CALL_LOG=str(log), FAKE_NVML_INIT_LOG=str(log),
                   XDG_STATE_HOME=str(tmp_path / "state"),
                   PATH="/usr/local/cuda/bin:" + base.get("PATH", "/usr/bin:/bin"))
    return root, environ, log


def _counts(log: Path) -> tuple[list[str], int]:
    calls = log.read_text().splitlines() if log.exists() else []
    nvcc = sorted(Path(c.split()[0]).parent.parent.name for c in calls if "nvcc" in c)
    return nvcc, calls.count("nvmlInit")


@pytest.mark.slow
def test_up_reads_the_machine_once(tmp_path: Path, cpu_env: BuiltEnv, fake_machine: MachineFactory) -> None:
    root, environ, log = _counting(tmp_path, cpu_env.environ, fake_machine)
    done = run_provision(["--root", str(root), "--json", "up", "--model", str(TINY), "--profile", "cpu",
                          "--prefix", str(cpu_env.prefix), "--yes"], environ)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [s["name"] for s in doc["stages"]] == ["diagnose", "profile", "toolkit", "env", "fit", "download",
                                                  "smoke"]
    assert doc["summary"]["reply"]
    assert _counts(log) == (["cuda-12.6", "cuda-12.8"], 1)


def test_report_reads_the_machine_once(tmp_path: Path, bare_env_python: Path, fake_machine: MachineFactory) -> None:
    root, environ, log = _counting(tmp_path, {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
                                   fake_machine)
    done = run_provision(["--root", str(root), "--json", "report", "--env", str(bare_env_python.parent.parent)],
                         environ)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert "release 12.6" in doc["cuda"]["nvcc_version"]          # the link's nvcc output, from that one run
    assert _counts(log) == (["cuda-12.6", "cuda-12.8"], 1)


def test_verify_reads_the_machine_once(tmp_path: Path, bare_env_python: Path, fake_machine: MachineFactory) -> None:
    root, environ, log = _counting(tmp_path, {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
                                   fake_machine)
    done = run_provision(["--root", str(root), "--json", "verify", "--env", str(bare_env_python.parent.parent)],
                         environ)
    assert done.returncode == 1, done.stderr                      # no torch in the bare env
    checks = {c["id"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["cuda.link"]["status"] == "ok"
    assert _counts(log) == (["cuda-12.6", "cuda-12.8"], 1)
