"""`provision report`: one file with what a maintainer asks for, with every secret redacted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from provisioner import state
from tests.fixtures_env import BuiltEnv
from tests.fixtures_nvml import FakeMachine, MachineFactory
from tests.helpers_cuda import link_cuda, make_toolkit

TOKEN = "hf_" + "Q" * 34
PIP_URL = "https://builder:hunter2secret@wheels.example/simple"


def _world(tmp_path: Path, fake_machine: MachineFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.8")
    link_cuda(root, "cuda-12.6")
    environ = fake_machine(FakeMachine(driver="560.35.03", cuda=12060))
    environ.update(HF_TOKEN=TOKEN, PIP_INDEX_URL=PIP_URL)
    # What earlier commands left behind: a failure quoting the token and an authenticated URL.
    state.record_failure(environ, ["provision", "model", "download", "x"],
                         f"download from {PIP_URL} failed", "log in again",
                         f"401 Unauthorized: Authorization: Bearer {TOKEN}\n")
    state.write(environ, "last-smoke.json", {"reply": "I am fine, thank you.", "tokens_per_s": 42.0})
    return root, environ


def _report(root: Path, environ: dict[str, str], env: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", "--root", str(root), "report",
                           "--env", str(env), *extra], capture_output=True, text=True, env=environ,
                          timeout=300)


def test_markdown_report_has_every_section_and_no_secret(tmp_path: Path, fake_machine: MachineFactory,
                                                         bare_env_python: Path) -> None:
    root, environ = _world(tmp_path, fake_machine)
    out = tmp_path / "report.md"
    done = _report(root, environ, bare_env_python.parent.parent, "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    text = out.read_text()
    for heading in ("## Checks", "## nvcc --version", "## Driver (NVML)", "## CUDA toolkits",
                    "## Environment: packages and lock", "## Last smoke chat", "## Last failure"):
        assert heading in text, heading
    assert "release 12.6" in text                      # raw nvcc --version of the linked toolkit
    assert "560.35.03" in text                         # NVML's driver facts
    assert "cuda-12.8" in text                         # every toolkit is listed
    assert '"pip"' in text                             # the env's package list
    assert "I am fine, thank you." in text             # last smoke chat
    assert "provision model download x" in text        # the last failure's command line
    for secret in (TOKEN, "hunter2secret", "builder:"):
        assert secret not in text, secret
        assert secret not in done.stdout + done.stderr
    assert "***" in text


def test_json_report_is_one_redacted_document(tmp_path: Path, fake_machine: MachineFactory,
                                              bare_env_python: Path) -> None:
    root, environ = _world(tmp_path, fake_machine)
    done = _report(root, environ, bare_env_python.parent.parent, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["version"] == 1
    assert doc["driver"]["driver_version"] == "560.35.03"
    assert doc["environment_variables"]["HF_TOKEN"] == "***"
    assert {c["id"] for c in doc["checks"]} >= {"driver", "cuda.link", "env.torch"}
    assert TOKEN not in done.stdout and "hunter2secret" not in done.stdout


def test_unwritable_output_is_an_error_not_a_traceback(tmp_path: Path, fake_machine: MachineFactory,
                                                       bare_env_python: Path) -> None:
    root, environ = _world(tmp_path, fake_machine)
    out = tmp_path / "no-such-dir" / "report.md"
    done = _report(root, environ, bare_env_python.parent.parent, "--output", str(out))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-2:] == [
        f"error: cannot write the report to {out}: No such file or directory",
        "hint: pass --output a file in an existing, writable directory (or leave it out to print the report)"]
    assert "Traceback" not in done.stderr and not out.parent.exists()


def test_report_of_a_provision_built_env_has_packages_lock_and_profile(cpu_env: BuiltEnv) -> None:
    """The env `provision env create` built (uv: no pip inside): its packages, its lock, its profile."""
    done = cpu_env.run("report", "--env", str(cpu_env.prefix), "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    env = json.loads(done.stdout)["environment"]
    assert env["prefix"] == str(cpu_env.prefix)
    assert env["packages"].get("torch", "").startswith("2.13.0"), env["packages"]
    assert {"transformers", "accelerate", "bitsandbytes"} <= set(env["packages"])
    assert env["provision.lock.json"]["profile"]["name"] == "cpu"
    assert env["provision-env.json"]["profile"] == "cpu"
    assert json.loads(done.stdout)["profile"]["name"] == "cpu"
