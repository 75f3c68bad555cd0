"""env create for real: venvs built with uv and the local CPU torch wheel, the conda path through
stand-in front-ends, an interrupted build, an unreachable index, and a lock round trip."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from provisioner import env as envmod
from tests.fixtures_env import REPO, BuiltEnv, CondaStandin, interrupt_at, isolated_environ, run_provision


def record(prefix: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((prefix / envmod.RECORD_NAME).read_text())
    return doc


def listed(built_environ: dict[str, str], root: Path) -> dict[str, dict[str, object]]:
    done = run_provision(["--root", str(root), "env", "list", "--json"], built_environ, check=True)
    return {e["prefix"]: e for e in json.loads(done.stdout)["envs"]}


# --- one real environment from the cpu profile ---------------------------------------------------

@pytest.mark.slow
def test_create_builds_a_verified_env(cpu_env: BuiltEnv) -> None:
    prefix = cpu_env.prefix
    assert f"Environment: {prefix} (venv, new)" in cpu_env.stdout
    assert "Profile:     cpu: no NVIDIA GPU/driver detected -> the CPU build of torch" in cpu_env.stdout
    for n, title in enumerate(["create the venv", "install torch", "install packages",
                               "verify the environment", "record and lock"], 1):
        assert f"[{n}/5] {title}: done in" in cpu_env.stderr
    assert f"Created {prefix} (profile cpu)" in cpu_env.stdout
    rec = record(prefix)
    assert rec["status"] == "complete" and rec["torch_installed"] == "2.13.0+cpu"

    lock = json.loads((prefix / "provision.lock.json").read_text())
    assert lock["profile"]["name"] == "cpu"
    assert lock["torch"]["requirements"] == ["torch==2.13.0+cpu"]
    assert {"transformers", "accelerate", "bitsandbytes"} <= set(lock["packages"])
    assert lock["environment"]["installer"] == "uv" and lock["machine"]["driver_status"] != "ok"

    # `verify` agrees, judging the env by the profile it was built from (cpu needs no driver)
    done = cpu_env.run("verify", "--env", str(prefix))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "env.bitsandbytes" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.slow
def test_second_create_is_a_quick_noop(cpu_env: BuiltEnv) -> None:
    before = (cpu_env.prefix / envmod.RECORD_NAME).stat().st_mtime_ns
    start = time.monotonic()
    done = cpu_env.run("env", "create", "--prefix", str(cpu_env.prefix))
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert f"Environment {cpu_env.prefix} is up to date: profile cpu, torch==2.13.0+cpu" in done.stdout
    assert "install torch" not in done.stderr            # pip/uv never ran
    assert seconds < 5, f"an up-to-date env took {seconds:.1f} s"
    assert (cpu_env.prefix / envmod.RECORD_NAME).stat().st_mtime_ns == before


@pytest.mark.slow
def test_list_shows_it(cpu_env: BuiltEnv) -> None:
    entry = listed(cpu_env.environ, cpu_env.root)[str(cpu_env.prefix)]
    assert entry == {"name": "chat", "prefix": str(cpu_env.prefix), "backend": "venv",
                     "profile": "cpu", "torch": "2.13.0+cpu", "status": "complete"}


@pytest.mark.slow
def test_from_lock_round_trip(cpu_env: BuiltEnv, tmp_path: Path) -> None:
    lock_file = tmp_path / "chat.lock.json"
    done = cpu_env.run("env", "export", "--prefix", str(cpu_env.prefix), "--output", str(lock_file))
    assert done.returncode == 0 and f"wrote {lock_file}" in done.stderr
    original = json.loads(lock_file.read_text())

    copy = tmp_path / "copy"
    done = cpu_env.run("env", "create", "--from-lock", str(lock_file), "--prefix", str(copy), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == "created" and doc["profile"] == "cpu"
    assert doc["plan"]["packages"] == [f"{n}=={v}" for n, v in sorted(original["packages"].items())
                                       if n != "pip"]
    rebuilt = json.loads((copy / "provision.lock.json").read_text())
    assert rebuilt["torch"] == original["torch"]
    assert {k: v for k, v in rebuilt["packages"].items() if k != "pip"} == \
        {k: v for k, v in original["packages"].items() if k != "pip"}

    done = cpu_env.run("env", "create", "--from-lock", str(lock_file), "--prefix", str(copy))
    assert done.returncode == 0 and "is up to date" in done.stdout

    # the same lock, claiming a CUDA build: this machine (no GPU) cannot check it, so it is planned for
    # the target with one warning (tests/env/test_explicit_profiles.py has the refusals)
    original["profile"].update(name="cu126", variant="cu126", cuda="12.6", driver_min="525.60.13",
                               compute_capabilities=["6.0", "8.0"])
    original["torch"]["requirements"] = ["torch==2.13.0+cu126"]
    lock_file.write_text(json.dumps(original))
    done = cpu_env.run("env", "create", "--from-lock", str(lock_file), "--prefix", str(tmp_path / "cuda"),
                       "--dry-run")
    assert done.returncode == 0, done.stderr
    assert ("warning: no NVIDIA driver/GPU visible here (no libnvidia-ml.so.1 found): the lock's cu126 build "
            "(profile cu126) needs driver >= 525.60.13") in done.stderr
    assert f"Profile:     cu126 as locked in {lock_file}" in done.stdout
    assert not (tmp_path / "cuda").exists()


# --- failures ------------------------------------------------------------------------------------

def test_unreachable_index_fails_clearly_and_nothing_is_complete(tmp_path: Path) -> None:
    env = isolated_environ(tmp_path / "home")
    prefix = tmp_path / "env"
    done = run_provision(["--root", str(tmp_path), "env", "create", "--prefix", str(prefix),
                          "--index-url", "https://127.0.0.1:9/simple"], env)
    assert done.returncode == 1
    assert f"error: install torch failed; {prefix} is left half-built" in done.stderr
    assert "127.0.0.1:9" in done.stderr and "Traceback" not in done.stderr
    # the installer's own last words, indented under the command line, come before the hint
    assert re.search(r"\n`[^`]* install [^`]*--index-url https://127\.0\.0\.1:9/simple[^`]*` exited \d+\n"
                     r"(    .*\n)*    .*127\.0\.0\.1:9.*\n(    .*\n)*hint: ", done.stderr), done.stderr
    assert "hint: check that https://127.0.0.1:9/simple is reachable" in done.stderr
    rec = record(prefix)
    assert rec["status"] == "building" and "install torch" in str(rec["error"])
    assert not (prefix / "provision.lock.json").exists()
    assert listed(env, tmp_path)[str(prefix)]["status"] == "building"
    again = run_provision(["--root", str(tmp_path), "env", "create", "--prefix", str(prefix)], env)
    assert again.returncode == 1
    assert "is half-built: an earlier `env create` for profile cpu did not finish (it failed: " \
           "install torch failed" in again.stderr


@pytest.mark.slow
def test_interrupted_install_is_half_built_and_force_recovers(tmp_path: Path) -> None:
    env = isolated_environ(tmp_path / "home")
    prefix = tmp_path / "env"
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "provisioner", "--root", str(tmp_path), "env",
                                  "create", "--prefix", str(prefix)], env=env, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # kill it while the installer runs: the record already says "building"
        while "[2/5] install torch ..." not in err.read_text():
            assert child.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the install never started"
            time.sleep(0.05)
        time.sleep(0.2)
        assert child.poll() is None, "the build finished before it could be interrupted"
        assert record(prefix)["status"] == "building"
    finally:
        os.killpg(child.pid, signal.SIGKILL)       # the CLI and the installer it started
        child.wait()

    assert listed(env, tmp_path)[str(prefix)]["status"] == "building"
    done = run_provision(["--root", str(tmp_path), "env", "create", "--prefix", str(prefix)], env)
    assert done.returncode == 1
    assert (f"error: {prefix} is half-built: an earlier `env create` for profile cpu did not finish "
            "(it was interrupted)") in done.stderr
    assert "hint: rebuild it with --force" in done.stderr

    done = run_provision(["--root", str(tmp_path), "env", "create", "--prefix", str(prefix), "--force"],
                         env)
    assert done.returncode == 0, done.stderr
    assert f"Environment: {prefix} (venv, replacing the existing one)" in done.stdout
    assert "[1/6] remove the environment: done" in done.stderr
    assert record(prefix)["status"] == "complete"
    assert listed(env, tmp_path)[str(prefix)]["status"] == "complete"


@pytest.mark.slow
def test_health_comes_from_the_environment_not_its_record(tmp_path: Path) -> None:
    """Killed during its own verify step, the env is not ready for verify either; once built, a
    package folder moved away makes it damaged, not "up to date"."""
    env = isolated_environ(tmp_path / "home")
    prefix = tmp_path / "env"
    create = ["--root", str(tmp_path), "env", "create", "--prefix", str(prefix)]
    interrupt_at(create, env, "verify the environment ...", signal.SIGKILL, tmp_path / "stderr.txt")
    assert record(prefix)["status"] == "building"
    done = run_provision(["--root", str(tmp_path), "--json", "verify", "--env", str(prefix)], env)
    checks = {c["id"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 1 and checks["env.record"]["status"] == "fail"
    assert checks["env.torch"]["status"] == "ok"          # the packages alone would have passed
    assert checks["env.record"]["fix"] == f"provision --root {tmp_path} env create --prefix {prefix} --force"

    assert run_provision([*create, "--force"], env).returncode == 0
    site = next((prefix / "lib").glob("python3*/site-packages"))
    (site / "torch").rename(tmp_path / "torch-moved-away")
    done = run_provision(create, env)
    assert done.returncode == 1, done.stdout
    assert f"error: {prefix} is damaged: torch 2.13.0+cpu: " in done.stderr and "files are missing" in done.stderr
    assert "hint: rebuild it with --force" in done.stderr
    verify = run_provision(["--root", str(tmp_path), "--json", "verify", "--env", str(prefix)], env)
    assert {c["id"]: c for c in json.loads(verify.stdout)["checks"]}["env.torch"]["status"] == "fail"
    assert run_provision([*create, "--force"], env).returncode == 0
    assert run_provision(create, env).returncode == 0      # healthy again: up to date


# --- the conda path, through stand-in front-ends ------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["conda", "mamba", "micromamba"])
def test_conda_backends_run_the_exact_commands(conda_standin: Callable[[str], CondaStandin],
                                               tmp_path: Path, flavor: str) -> None:
    # No conda can be installed here (see tests/bin/conda): a stand-in records its argv and makes
    # the prefix a real venv; pip, the verify checks and the lock then run for real inside it.
    sim = conda_standin(flavor)
    done = run_provision(["--root", str(tmp_path), "env", "create", "--installer", "pip"], sim.environ)
    assert done.returncode == 0, done.stdout + done.stderr
    prefix = sim.root / "envs" / "llm"
    channel = ["-c", "conda-forge"] if flavor == "micromamba" else []
    assert sim.calls() == [[flavor, "info", "--json"],
                           [flavor, "create", "-y", "-n", "llm", "python=3.11", "pip", *channel]]
    assert f"Environment: {prefix} (conda env 'llm') ({flavor}, new)" in done.stdout
    assert f"{prefix}/bin/python -m pip install --disable-pip-version-check torch==2.13.0+cpu" in done.stdout
    assert "Use it: conda activate llm" in done.stdout
    rec = record(prefix)
    assert (rec["status"], rec["backend"], rec["conda_name"]) == ("complete", flavor, "llm")

    again = run_provision(["--root", str(tmp_path), "env", "create", "--installer", "pip"], sim.environ)
    assert again.returncode == 0 and "is up to date" in again.stdout

    done = run_provision(["env", "remove", "llm"], sim.environ)
    assert done.returncode == 0, done.stderr
    assert sim.calls()[-1] == [flavor, "env", "remove", "-y", "-p", str(prefix)]
    assert not prefix.exists()
