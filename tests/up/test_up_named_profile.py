"""`up --profile cu126` on a machine without a GPU: the profile stage warns (once) instead of refusing,
the environment is built for the target, and the smoke chat is left to the target's GPU."""
from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner, Result

from provisioner import up
from provisioner.cli import main
from provisioner.env.choose import MachineFacts
from provisioner.up import stages
from tests.fixtures_env import REPO, isolated_environ, run_provision

TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"
WARNING = ("no NVIDIA driver/GPU visible here (no libnvidia-ml.so.1 found): profile cu126 needs driver >= "
           "525.60.13 and a GPU of compute capability 5.0-9.x; `provision verify` on the target machine checks it")
SMOKE_SKIPPED = ("not run here: the smoke chat of profile cu126 needs the target's GPU (no NVIDIA driver/GPU "
                 "visible here (no libnvidia-ml.so.1 found)); on the target machine run `provision verify`, then "
                 "`provision up` with the same options")


def gpu_less(tmp_path: Path) -> dict[str, str]:
    """No loadable libnvidia-ml.so.1, even where a real driver exists; uv on PATH, no conda."""
    env = isolated_environ(Path(os.environ["HOME"]))
    env["PROVISION_NVML_LIBRARY"] = str(tmp_path / "no-driver" / "libnvidia-ml.so.1")
    return env


def dry_plan(tmp_path: Path, *extra: str) -> dict[str, dict[str, str]]:
    result: Result = CliRunner().invoke(main, ["--root", str(tmp_path), "up", "--model", str(TINY), "--prefix",
                                               str(tmp_path / "env"), "--dry-run", "--json", *extra],
                                        env=gpu_less(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return {row["name"]: row for row in json.loads(result.stdout)["plan"]}


def test_dry_run_plan_of_a_named_cuda_profile(tmp_path: Path) -> None:
    plan = dry_plan(tmp_path, "--profile", "cu126")
    assert (plan["profile"]["status"], plan["profile"]["message"]) == ("warn", f"cu126, as named; warning: {WARNING}")
    assert plan["env"]["status"] == "todo"
    assert (plan["smoke"]["status"], plan["smoke"]["message"]) == ("skipped", SMOKE_SKIPPED)
    assert not (tmp_path / "env").exists()


def test_dry_run_plan_of_auto_and_cpu_is_unchanged(tmp_path: Path) -> None:
    for extra in ((), ("--profile", "cpu")):
        plan = dry_plan(tmp_path, *extra)
        assert plan["profile"]["status"] == "check"
        assert plan["smoke"]["status"] == "todo"


def test_profile_and_smoke_stages_on_a_gpu_less_machine(tmp_path: Path) -> None:
    said: list[str] = []
    runner = up.Up(up.UpOptions(model=str(TINY), profile="cu126"), root=tmp_path, environ=gpu_less(tmp_path),
                   say=said.append, confirm=lambda _q: False)
    runner.state.machine = MachineFacts()                 # what the diagnose stage finds here
    outcome = stages.ChooseProfile().run(runner)
    assert outcome.status == "warn"
    assert outcome.message == "cu126: requested with --profile cu126; not checked on this machine (the plan's warning)"
    assert outcome.data["unchecked"] == WARNING
    assert runner.state.profile is not None and runner.state.profile.name == "cu126"
    # the smoke chat stops before needing an environment or a model: nothing to run it on here
    smoke = stages.Smoke().run(runner)
    assert (smoke.status, smoke.message) == ("skipped", SMOKE_SKIPPED)
    assert said == []


def test_up_builds_the_named_profile_instead_of_refusing(tmp_path: Path) -> None:
    """A real `up --profile cu126` here: past the profile stage (warned, not refused) into the build, which
    stops at the torch install because the index given is a closed port (no CUDA wheel is downloaded)."""
    prefix = tmp_path / "env"
    done = run_provision(["--root", str(tmp_path), "up", "--model", str(TINY), "--profile", "cu126",
                          "--prefix", str(prefix), "--yes", "--index-url", "https://127.0.0.1:9/simple"],
                         gpu_less(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    # the warning once, in the plan printed before the run; the stage's line points back at it
    assert done.stderr.count(WARNING) == 1
    assert f"warn  profile   cu126, as named; warning: {WARNING}" in done.stderr
    assert "[   warn] profile: cu126: requested with --profile cu126; not checked on this machine" in done.stderr
    assert "cannot run on this machine" not in done.stderr
    assert f"error: install torch failed; {prefix} is left half-built" in done.stderr
    assert "torch==2.13.0+cu126" in done.stderr
    assert "Traceback" not in done.stderr
