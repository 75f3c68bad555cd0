"""`provision up` end to end on this machine's CPU: the tiny Qwen2 answers, a rerun does nothing,
an interrupted run resumes; it stops before a download that cannot fit, and prints the sudo line
instead of switching a toolkit it may not touch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner import env as envmod
from tests.fixtures_env import REPO, BuiltEnv, isolated_environ, run_provision
from tests.fixtures_nvml import GIB, FakeGpu, FakeMachine, MachineFactory
from tests.helpers_cuda import link_cuda, make_toolkit, unprivileged

TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"
TINY_REPLY = "I am fine, thank you."


def _up_args(root: Path, prefix: Path, *extra: str) -> list[str]:
    return ["--root", str(root), "up", "--model", str(TINY), "--profile", "cpu", "--torch", "2.13.0",
            "--prefix", str(prefix), "--yes", *extra]


def _world(tmp_path: Path) -> tuple[Path, Path]:
    """HOME (the autouse fixture's) and an empty --root under tmp_path."""
    home, root = tmp_path / "home", tmp_path / "root"
    home.mkdir(exist_ok=True)
    root.mkdir()
    return home, root


@pytest.mark.slow
def test_up_interrupted_then_resumed_then_a_noop(tmp_path: Path) -> None:
    home, root = _world(tmp_path)
    environ = isolated_environ(home)
    prefix = tmp_path / "envs" / "llm"
    args = [sys.executable, "-m", "provisioner", *_up_args(root, prefix)]

    # 1. Kill `up` while it installs into the environment (the record says "building").
    child = subprocess.Popen(args, env=environ, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            rec = envmod.read_record(prefix) or {}
            if rec.get("status") == "building" and (prefix / "bin" / "python").exists():
                time.sleep(1.0)          # let the installer get going
                break
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            time.sleep(0.1)
        else:
            pytest.fail("up never started building the environment")
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert envmod.env_status(prefix, environ) == "building"

    # 2. A rerun sees the half-built environment, rebuilds it, and ends with the known reply.
    done = run_provision(_up_args(root, prefix), environ)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "half-built" in done.stderr
    assert "Traceback" not in done.stderr
    assert f"reply        {TINY_REPLY!r}" in done.stdout
    for line in ("GPU          none (CPU)", "profile      cpu", f"environment  {prefix}",
                 "precision    nf4", "peak RSS (runtime included); GPU estimate", "first token", "speed"):
        assert line in done.stdout, line
    assert f"provision chat --env {prefix} --quant nf4 {TINY}" in done.stdout
    assert envmod.env_status(prefix, environ) == "complete"

    # 3. On a finished machine `up` only re-checks, in a few seconds.
    start = time.monotonic()
    again = run_provision(_up_args(root, prefix, "--json"), environ)
    seconds = time.monotonic() - start
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["ok"] is True and doc["did_work"] is False
    assert {s["name"]: s["status"] for s in doc["stages"]} == {
        "diagnose": "done", "profile": "done", "toolkit": "skipped", "env": "done", "fit": "done",
        "download": "skipped", "smoke": "done"}
    assert doc["summary"]["reply"] == TINY_REPLY
    assert seconds < 10, seconds

    # 4. `provision chat` with no arguments talks to what `up` set up (its env, model, precision).
    chat = subprocess.run([sys.executable, "-m", "provisioner", "--root", str(root), "chat", "--greedy"],
                          input="Hello! How are you?\n", env=environ, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr
    assert TINY_REPLY in chat.stdout
    assert f"using the environment `provision up` built: {prefix}" in chat.stderr


def test_chat_without_any_environment_says_how_to_get_one(tmp_path: Path) -> None:
    environ = isolated_environ(tmp_path / "home")
    done = subprocess.run([sys.executable, "-m", "provisioner", "chat", str(TINY)], input="hi\n",
                          env=environ, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no environment to chat in" in done.stderr and "hint: pass --env" in done.stderr
    assert "Traceback" not in done.stderr


def test_dry_run_shows_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    home, root = _world(tmp_path)
    environ = isolated_environ(home)
    prefix = tmp_path / "envs" / "llm"
    done = run_provision(_up_args(root, prefix, "--dry-run"), environ)
    assert done.returncode == 0, done.stderr
    assert "to do  env" in done.stderr and "skipped  download  the model is a local folder" in done.stderr
    assert not prefix.exists()
    assert not (home / ".local" / "state" / "provision" / "up.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["gpu-memory-option", "nvml-free-memory"])
def test_up_stops_before_downloading_a_model_that_cannot_fit(how: str, cpu_env: BuiltEnv,
                                                             fake_machine: MachineFactory,
                                                             tmp_path: Path) -> None:
    environ = dict(cpu_env.environ)
    extra: list[str] = []
    if how == "gpu-memory-option":
        extra = ["--gpu-memory", "2"]
    else:
        # An 8 GiB laptop GPU whose desktop already holds 6.5 GiB (fake NVML facts).
        environ.update({k: v for k, v in fake_machine(FakeMachine(
            driver="575.57.08", cuda=12090,
            gpus=(FakeGpu(mem_total=8 * GIB, mem_used=int(6.5 * GIB)),))).items()
            if k.startswith("FAKE_NVML_") or k == "LD_LIBRARY_PATH"})
    local_dir = tmp_path / "model"
    done = run_provision(["--root", str(cpu_env.root), "up", "--model", "Qwen/Qwen2.5-7B-Instruct",
                          "--profile", "cpu", "--prefix", str(cpu_env.prefix), "--local-dir", str(local_dir),
                          "--yes", *extra], environ)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "does not fit" in done.stderr and "nothing was downloaded" in done.stderr, done.stderr
    assert "hint:" in done.stderr
    assert "download" not in [line.split("]")[-1].split(":")[0].strip()
                              for line in done.stderr.splitlines() if line.startswith("[")]
    assert not local_dir.exists()
    assert "Traceback" not in done.stderr


def test_up_prints_the_sudo_line_when_the_toolkit_link_is_not_writable(
        tmp_path: Path, fake_machine: MachineFactory) -> None:
    # Fake 12.x toolkit trees (no 12.x nvcc can be installed here); the link points at 12.8 and the
    # cu126 profile wants 12.6. The stages run in a real process without root's capabilities.
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.8")
    link_cuda(root, "cuda-12.8")
    os.chmod(root / "usr" / "local", 0o555)
    environ = fake_machine(FakeMachine(driver="575.57.08", cuda=12090))
    code = (
        "import os, sys; from pathlib import Path\n"
        "from provisioner import up\n"
        "o = up.UpOptions(model='x', profile='cu126', yes=True)\n"
        "u = up.Up(o, root=Path(sys.argv[1]), environ=dict(os.environ), say=print, confirm=lambda q: True)\n"
        "r = u.run(until='toolkit').stages[-1]\n"
        "print('STATUS', r.status); print('MESSAGE', r.message)\n"
    )
    try:
        done = subprocess.run(unprivileged([sys.executable, "-c", code, str(root)]), env=environ,
                              capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        os.chmod(root / "usr" / "local", 0o755)
    assert done.returncode == 0, done.stderr
    assert "STATUS warn" in done.stdout
    assert f"sudo provision --root {root} cuda switch 12.6" in done.stdout   # the root it was run under
    assert os.readlink(root / "usr" / "local" / "cuda") == "cuda-12.8"   # nothing was switched


def test_up_asks_before_downloading_torch_and_refuses_without_a_terminal(tmp_path: Path) -> None:
    home, root = _world(tmp_path)
    environ = isolated_environ(home)
    prefix = tmp_path / "envs" / "llm"
    # An index (not a local wheel) would serve torch: without --yes, `up` must ask, and with stdin
    # not a terminal it refuses before anything is created.
    done = run_provision(["--root", str(root), "up", "--model", str(TINY), "--profile", "cpu",
                          "--prefix", str(prefix), "--index-url", "https://wheels.example/whl/cpu"],
                         environ)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Install torch==2.13.0+cpu from https://wheels.example/whl/cpu" in done.stderr
    assert "hint: re-run with --yes" in done.stderr
    assert not prefix.exists()
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------- audit additions

def test_unknown_profile_is_refused_before_the_plan(tmp_path: Path) -> None:
    home, root = _world(tmp_path)
    prefix = tmp_path / "envs" / "llm"
    done = run_provision(["--root", str(root), "up", "--model", str(TINY), "--profile", "cu1266",
                          "--prefix", str(prefix), "--dry-run"], isolated_environ(home))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: no profile named 'cu1266' (did you mean 'cu126'?)",
        "hint: known profiles: cpu, cu118, cu121, cu124, cu126, cu126-torch27, cu128, cu129, cu130, cu132; "
        "or use --profile auto"]
    assert done.stdout == "" and not prefix.exists()


def test_a_damaged_record_only_costs_a_rerun(tmp_path: Path) -> None:
    home, root = _world(tmp_path)
    record = home / ".local" / "state" / "provision" / "up.json"
    record.parent.mkdir(parents=True)
    for text in ("[1, 2]", '{"stages": ["env"]}', '{"stages": {"env": "done"}}', "{not json"):
        record.write_text(text)
        done = run_provision(_up_args(root, tmp_path / "envs" / "llm", "--dry-run"), isolated_environ(home))
        assert done.returncode == 0, done.stderr
        assert "to do  env" in done.stderr and "Traceback" not in done.stderr


def test_json_failure_is_still_one_document(tmp_path: Path) -> None:
    home, root = _world(tmp_path)
    done = run_provision(["--root", str(root), "up", "--model", str(TINY), "--cuda", "12.99",
                          "--prefix", str(tmp_path / "envs" / "llm"), "--yes", "--json"], isolated_environ(home))
    assert done.returncode == 2, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["version"], doc["ok"], doc["did_work"]) == (1, False, False)
    assert [(s["name"], s["status"]) for s in doc["stages"]] == [("diagnose", "done"), ("profile", "failed")]
    assert doc["error"]["message"] == "no profile for CUDA 12.99" and doc["error"]["hint"]
    assert "error: no profile for CUDA 12.99" in done.stderr and "Traceback" not in done.stderr


def test_toolkit_refusal_is_a_warning_with_the_fix(tmp_path: Path, fake_machine: MachineFactory) -> None:
    """/usr/local/cuda is a real directory: `cuda switch` refuses, so `up` says why and how, changes
    nothing, and goes on (the torch wheel brings its own CUDA runtime)."""
    from provisioner import up
    from tests.helpers_cuda import tree_digest

    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.8", name="cuda")
    before = tree_digest(root)
    asked: list[str] = []
    u = up.Up(up.UpOptions(model="x", profile="cu126"), root=root,
              environ=fake_machine(FakeMachine(driver="575.57.08", cuda=12090)), say=lambda _m: None,
              confirm=lambda q: asked.append(q) or True)
    r = u.run(until="toolkit").stages[-1]
    assert r.status == "warn", r
    assert r.message.startswith("not switched to CUDA 12.6: /usr/local/cuda is a real directory holding CUDA 12.8")
    assert "sudo mv /usr/local/cuda /usr/local/cuda-12.8" in str(r.data["fix"])
    assert asked == []          # nothing to confirm: the switch was refused before asking
    assert tree_digest(root) == before
