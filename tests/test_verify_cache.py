"""verify answers a repeated run from the env-probe cache, probes again when any key part changes,
and with --smoke-chat probes and chats in one process of the environment.

Each run of the environment's Python is counted by a .pth file in its site-packages (the interpreter
executes it at start-up; it appends the argv to a log): the count, not a clock, shows whether the
probe ran. The environment is the shared chat env seen through a derived venv (tests.fixtures_nvml
.derive_env), so installing into it touches nothing shared.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.env.test_sources import make_wheel
from tests.fixtures_env import run_provision, uv_dir
from tests.fixtures_nvml import H100, FakeGpu, FakeMachine, MachineFactory, derive_env
from tests.helpers_cuda import link_cuda, make_toolkit

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny-qwen2"
# site.py reads a venv's .pth files twice (lib64 is a link to lib): count each process once
COUNTER = ("import os, sys; p = os.environ.get('ENV_PYTHON_RUNS'); "
           "p and not hasattr(sys, '_run_counted') and "
           "(setattr(sys, '_run_counted', 1) or open(p, 'a').write(' '.join(sys.argv) + '\\n'))\n")


@dataclass
class World:
    root: Path
    prefix: Path
    environ: dict[str, str]
    log: Path
    wheels: Path
    seen: int = 0
    runs: list[str] = field(default_factory=list)

    def verify(self, *extra: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
        """`provision --json verify --env PREFIX ...`: (the env.python check's data, the env's
        python runs it caused)."""
        done = run_provision(["--root", str(self.root), "--json", "verify", "--env", str(self.prefix), *extra],
                             dict(self.environ, **(env or {})))
        assert done.returncode in (0, 1), done.stderr
        assert "Traceback" not in done.stderr
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        runs, self.seen = lines[self.seen:], len(lines)
        self.doc = json.loads(done.stdout)
        self.stderr = done.stderr
        checks = {c["id"]: c for c in self.doc["checks"]}
        self.checks = checks
        return checks["env.python"]["data"], runs

    def pip(self, *args: str) -> None:
        subprocess.run([str(uv_dir() / "uv"), "pip", *args, "--python", str(self.prefix / "bin" / "python")],
                       check=True, capture_output=True, env=self.environ)


@pytest.fixture
def world(tmp_path: Path, chat_env_python: Path, fake_machine: MachineFactory) -> World:
    python = derive_env(chat_env_python, tmp_path / "env")
    prefix = python.parent.parent
    site = next(prefix.glob("lib/python3*/site-packages"))
    (site / "zz_count_runs.pth").write_text(COUNTER)
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.8")
    link_cuda(root, "cuda-12.6")
    log = tmp_path / "runs.log"
    environ = dict(fake_machine(FakeMachine(gpus=(FakeGpu(),))), ENV_PYTHON_RUNS=str(log))
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tinydist", "1.0", "py3-none-any")
    make_wheel(wheels, "tinydist", "2.0", "py3-none-any")
    return World(root, prefix, environ, log, wheels)


def probes(runs: Sequence[str]) -> int:
    return sum("probe_env.py" in r or "smoke_chat.py" in r for r in runs)


def test_a_repeated_verify_is_answered_from_the_cache(world: World) -> None:
    first, runs = world.verify()
    assert probes(runs) == 1 and len(runs) == 1
    assert first["probe_cache"]["hit"] is False and first["probe_cache"]["reason"] == "nothing cached"
    assert first["probe_cache"]["stored"] is True and first["probe_wall_seconds"] > 0
    verdicts = {k: (c["status"], c["message"], c["fix"]) for k, c in world.checks.items()}

    again, runs = world.verify()
    assert runs == []                                           # the env's Python did not run at all
    assert again["probe_cache"]["hit"] is True
    assert again["probe_cache"]["probed_at"] == first["probe_cache"]["probed_at"]
    assert again["probe_wall_seconds"] == 0
    assert world.stderr.startswith(f"environment facts from the cache (probed {first['probe_cache']['probed_at']})")
    assert {k: (c["status"], c["message"], c["fix"]) for k, c in world.checks.items()} == verdicts

    fresh, runs = world.verify("--fresh")
    assert probes(runs) == 1 and fresh["probe_cache"]["reason"] == "--fresh"
    _, runs = world.verify(env={"PROVISION_FRESH": "1"})
    assert probes(runs) == 1


def test_each_env_side_change_is_probed_again(world: World) -> None:
    world.verify()
    local = ("--no-index", "--find-links", str(world.wheels))
    for what, pip_args in (("install", ("install", *local, "tinydist==1.0")),
                           ("upgrade", ("install", *local, "tinydist==2.0")),
                           ("uninstall", ("uninstall", "tinydist"))):
        world.pip(*pip_args)
        data, runs = world.verify()
        assert probes(runs) == 1, what
        assert data["probe_cache"]["reason"].startswith("the installed distributions"), (what, data)
        _, runs = world.verify()
        assert runs == [], what                                 # the new answer was kept
    data, runs = world.verify(env={"CUDA_VISIBLE_DEVICES": "0"})
    assert probes(runs) == 1 and data["probe_cache"]["reason"] == "the environment variables changed"


def test_each_machine_side_change_is_probed_again(world: World, fake_machine: MachineFactory) -> None:
    world.verify()
    newer = {k: v for k, v in fake_machine(FakeMachine(driver="580.65.06", gpus=(FakeGpu(),))).items()
             if k.startswith("FAKE_NVML_")}
    data, runs = world.verify(env=newer)
    assert probes(runs) == 1 and data["probe_cache"]["reason"] == "the driver changed"
    world.environ.update(newer)
    two = {k: v for k, v in fake_machine(FakeMachine(driver="580.65.06", gpus=(FakeGpu(), H100))).items()
           if k.startswith("FAKE_NVML_")}
    data, runs = world.verify(env=two)
    assert probes(runs) == 1 and data["probe_cache"]["reason"] == "the GPUs changed"
    world.environ.update(two)
    _, runs = world.verify()
    assert runs == []
    (world.root / "usr/local/cuda").unlink()
    link_cuda(world.root, "cuda-12.8")
    data, runs = world.verify()
    assert probes(runs) == 1 and data["probe_cache"]["reason"] == "the /usr/local/cuda link changed"


def test_smoke_chat_probes_and_chats_in_one_process(world: World) -> None:
    data, runs = world.verify("--smoke-chat", "--model", str(TINY), "--max-new-tokens", "16")
    assert len(runs) == 1 and "smoke_chat.py" in runs[0] and "--probe-out" in runs[0]
    statuses = {k: c["status"] for k, c in world.checks.items()}
    assert statuses["env.torch"] == statuses["env.bitsandbytes"] == "ok"
    assert statuses["smoke.load"] == statuses["smoke.reply"] == "ok", world.checks["smoke.load"]
    assert world.checks["smoke.reply"]["message"].startswith('replied "I am fine, thank you."')
    assert data["probe_cache"] == {"hit": False, "probed_at": data["probe_cache"]["probed_at"],
                                   "reason": "probed in the smoke chat's process", "stored": True}
    # that process's probe is cached like any other
    again, runs = world.verify()
    assert runs == [] and again["probe_cache"]["hit"] is True


def test_smoke_chat_in_an_env_without_torch_does_not_try_to_load(world: World, bare_env_python: Path) -> None:
    world.prefix = bare_env_python.parent.parent
    world.verify("--smoke-chat", "--model", str(TINY))
    assert world.checks["env.torch"]["status"] == "fail"
    assert (world.checks["smoke.load"]["status"], world.checks["smoke.load"]["message"]) == (
        "skip", "smoke chat not run: env.torch failed")
    assert world.checks["env.python"]["data"]["probe_cache"]["stored"] is False   # a failing env is not kept
