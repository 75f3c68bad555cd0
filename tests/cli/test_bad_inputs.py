"""Inputs that should not pass: one clear refusal with a meaningful exit code, before anything runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers_cuda import unprivileged

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"


def _run(tmp_path: Path, *args: str, drop_caps: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "provisioner", *args]
    environ = dict(os.environ, PROVISION_NVML_LIBRARY=str(tmp_path / "none.so"), **env)
    return subprocess.run(unprivileged(argv) if drop_caps else argv, capture_output=True, text=True, timeout=120,
                          env=environ, cwd=tmp_path)


@pytest.mark.parametrize("args", [
    ["model", "fit", str(TINY), "--batch", "100000000000000000000"],
    ["model", "fit", str(TINY), "--context", "99999999999"],
    ["model", "fit", str(TINY), "--gpu-memory", "1e30"],
    ["up", "--gpu-memory", "-3", "--dry-run", "--profile", "cpu"],
    ["up", "--model", "./no-such-model-folder", "--dry-run", "--profile", "cpu"],
    ["up", "--max-new-tokens", "99999999999", "--dry-run"],
], ids=lambda a: " ".join(a[:4]))
def test_out_of_range_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    done = _run(tmp_path, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Plan:" not in done.stderr     # refused before any stage
    assert "GiB" not in done.stdout                                             # no 20-digit figure printed


def test_an_explicit_python_no_interpreter_offers_is_refused(tmp_path: Path) -> None:
    done = _run(tmp_path, "env", "create", "--profile", "cpu", "--python", "3.7", "--backend", "venv", "--dry-run",
                "--prefix", str(tmp_path / "e"), PATH="/usr/bin:/bin")
    assert done.returncode == 2
    assert "error: --python 3.7: no python3.7 on PATH" in done.stderr and "--backend conda" in done.stderr


def test_hints_name_commands_the_tool_then_accepts(tmp_path: Path) -> None:
    foreign = tmp_path / "notenv"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    done = _run(tmp_path, "--json", "verify", "--env", str(foreign))
    assert done.returncode == 1
    fix = next(line for line in done.stdout.splitlines() if '"fix"' in line and "env create" in line)
    suggested = fix.split("build one elsewhere (")[1].split(")")[0]          # the command the hint names ...
    again = _run(tmp_path, *suggested.removeprefix("provision ").split(), "--profile", "cpu", "--dry-run")
    assert again.returncode == 0, again.stderr                                 # ... is one env create accepts
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _run(tmp_path, "--json", "verify", "--env", str(empty))
    assert f"build one there: provision env create --prefix {empty}" in done.stdout
    assert _run(tmp_path, "env", "create", "--prefix", str(empty), "--profile", "cpu", "--dry-run").returncode == 0


def test_a_permission_error_exits_4(tmp_path: Path) -> None:
    home = tmp_path / "ro-home"
    home.mkdir()
    (home / ".bashrc").write_text("# mine\n")
    home.chmod(0o555)
    (home / ".bashrc").chmod(0o444)
    try:
        done = _run(tmp_path, "cuda", "shell-init", "--shell", "bash", "--apply", drop_caps=True, HOME=str(home))
    finally:
        home.chmod(0o755)
    assert done.returncode == 4, done.stderr
    assert "error: cannot write" in done.stderr and "Permission denied" in done.stderr
    assert (home / ".bashrc").read_text() == "# mine\n"
