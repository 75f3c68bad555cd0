"""The interruption matrix: real processes, real signals (SIGINT as a terminal's Ctrl-C sends it to the
process group, SIGTERM, SIGKILL) at every stage boundary. The next run resumes or says exactly what to
run, and nothing is ever reported complete that is not."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.fixtures_env import interrupt_at, isolated_environ, run_provision

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
ENV_STEPS = ["create the venv", "install torch", "install packages", "verify the environment", "record and lock"]


def _verify_ok(root: Path, prefix: Path, env: dict[str, str]) -> bool:
    done = run_provision(["--root", str(root), "--json", "verify", "--env", str(prefix)], env)
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", list(SIGNALS), ids=str)
@pytest.mark.parametrize("step", ENV_STEPS, ids=lambda s: s.replace(" ", "-"))
def test_env_create_interrupted_at_every_step(step: str, sig: str, tmp_path: Path) -> None:
    env = isolated_environ(tmp_path / "home")
    prefix = tmp_path / "env"
    create = ["--root", str(tmp_path), "env", "create", "--prefix", str(prefix)]
    code, err = interrupt_at(create, env, f"] {step} ...", SIGNALS[sig], tmp_path / "stderr.txt")
    if sig == "SIGINT" and code == 130:
        assert "error: interrupted" in err and "env create --force" in err and "Traceback" not in err
    rec = prefix / "provision-env.json"
    complete = rec.is_file() and json.loads(rec.read_text()).get("status") == "complete"
    # never reported complete unless it is: then verify agrees
    if complete:
        assert _verify_ok(tmp_path, prefix, env)
    else:
        listed = json.loads(run_provision(["--root", str(tmp_path), "env", "list", "--json"], env).stdout)["envs"]
        assert all(e["status"] != "complete" for e in listed if e["prefix"] == str(prefix))
    again = run_provision(create, env)
    if again.returncode != 0:
        # ... or it says exactly what to run
        assert "hint: rebuild it with --force" in again.stderr, again.stderr
        again = run_provision([*create, "--force"], env)
    assert again.returncode == 0, again.stderr
    assert json.loads(rec.read_text())["status"] == "complete" and _verify_ok(tmp_path, prefix, env)


@pytest.mark.slow
@pytest.mark.parametrize("sig", list(SIGNALS), ids=str)
@pytest.mark.parametrize("stage", ["env", "smoke"])
def test_up_interrupted_then_resumed(stage: str, sig: str, tmp_path: Path) -> None:
    env = isolated_environ(tmp_path / "home")
    prefix = tmp_path / "env"
    up = ["--root", str(tmp_path), "up", "--model", str(TINY), "--profile", "cpu", "--prefix", str(prefix), "--yes"]
    marker = "] install torch ..." if stage == "env" else "] download:"
    code, err = interrupt_at(up, env, marker, SIGNALS[sig], tmp_path / "stderr.txt")
    assert "Traceback" not in err
    record = tmp_path / "home" / ".local/state/provision/up.json"
    state = json.loads(record.read_text())["stages"] if record.exists() else {}
    assert state.get("smoke", {}).get("status") != "done" or code == 0     # smoke is never recorded early
    again = run_provision(up, env)
    assert again.returncode == 0, again.stderr
    assert "Summary:" in again.stdout and "reply        'I am fine, thank you.'" in again.stdout
    if stage == "smoke":
        assert "[   done] env:" in again.stderr                             # resumed: the env is not rebuilt


@pytest.mark.slow
@pytest.mark.parametrize("sig", list(SIGNALS), ids=str)
@pytest.mark.parametrize("phase", ["downloading", "assembling", "checking"])
def test_cuda_install_interrupted_leaves_no_toolkit_and_the_next_run_installs(phase: str, sig: str, tmp_path: Path,
                                                                              real_cuda: object) -> None:
    from tests.fixtures_cuda import WHEEL_CACHE        # filled by the real_cuda fixture: no network needed here

    root = tmp_path / "root"
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    install = ["--root", str(root), "cuda", "install", "13.0", "--wheel-cache", str(WHEEL_CACHE)]
    code, err = interrupt_at(install, env, phase, SIGNALS[sig], tmp_path / "stderr.txt")
    assert "Traceback" not in err
    local = root / "usr" / "local"
    if not (local / "cuda-13.0" / "bin" / "nvcc").is_file():
        listed = run_provision(["--root", str(root), "--json", "cuda", "list"], env)
        assert all(t["name"] != "cuda-13.0" for t in json.loads(listed.stdout)["toolkits"])   # nothing half-built shows
    again = run_provision(install, env)
    if again.returncode != 0:
        assert "already exists" in again.stderr        # it had finished before the signal landed
    listed = json.loads(run_provision(["--root", str(root), "--json", "cuda", "list"], env).stdout)["toolkits"]
    assert [t["complete"] for t in listed if t["name"] == "cuda-13.0"] == [True]
    assert not list(local.glob(".cuda-13.0.provision-tmp-*"))                                  # no 300 MB left behind


@pytest.mark.slow
@pytest.mark.parametrize("after", ["diagnose", "profile", "toolkit", "env", "fit"])
def test_up_killed_between_any_two_stages_resumes(after: str, tmp_path: Path) -> None:
    """SIGKILL right after each stage finishes (the signals' other forms are above, inside env and smoke)."""
    env = isolated_environ(tmp_path / "home")
    up = ["--root", str(tmp_path), "up", "--model", str(TINY), "--profile", "cpu", "--prefix", str(tmp_path / "env"),
          "--yes"]
    interrupt_at(up, env, f"] {after}:", signal.SIGKILL, tmp_path / "stderr.txt")
    again = run_provision(up, env)
    assert again.returncode == 0, again.stderr
    assert "reply        'I am fine, thank you.'" in again.stdout
    third = run_provision(up, env)
    assert "Nothing to do: every stage was already done" in third.stdout      # and now it is really complete
