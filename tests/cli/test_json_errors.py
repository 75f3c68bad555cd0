"""Under --json every failure is still one document on stdout, with the human lines on stderr."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"

# (arguments, exit code); {tmp} is a fresh temporary folder, the root is an empty tree
CASES = [
    (["cuda", "switch", "99.9"], 1),
    (["cuda", "switch", "notaversion"], 2),
    (["cuda", "rollback"], 1),
    (["cuda", "shell-init", "--shell", "tcsh"], 2),
    (["profile", "show", "nosuch"], 2),
    (["env", "create", "--profile", "nosuch", "--dry-run", "--prefix", "{tmp}/e"], 2),
    (["env", "create", "--profile", "cpu", "--find-links", "{tmp}/none", "--dry-run", "--prefix", "{tmp}/e"], 2),
    (["env", "remove", "{tmp}/nothing-here"], 1),
    (["env", "export"], 1),
    (["model", "fit", "{tmp}/no-such-folder/"], 2),
    (["model", "fit", str(TINY), "--context", "0"], 2),
    (["model", "download", "a/b.", "--dry-run"], 2),
    (["model", "download", "Qwen/Qwen2.5-0.5B-Instruct", "--dry-run", "--endpoint", "http://127.0.0.1:9"], 1),
    (["chat", "--env", "{tmp}/no-env", str(TINY)], 1),
    (["explain", "{tmp}/missing.txt"], 2),
    (["up", "--profile", "nosuch", "--dry-run"], 2),
    (["up", "--name", "a", "--prefix", "{tmp}/b", "--dry-run"], 2),
    (["report", "--output", "{tmp}/no/such/dir/r.md"], 1),
    (["env", "create", "--python", "three", "--dry-run", "--profile", "cpu", "--prefix", "{tmp}/e"], 2),
    (["nosuchcommand"], 2),
]


@pytest.mark.parametrize(("args", "code"), CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_failure_is_one_json_document(args: list[str], code: int, tmp_path: Path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    root = tmp_path / "root"
    root.mkdir()
    env = dict(os.environ, PROVISION_NVML_LIBRARY=str(tmp_path / "none.so"))
    done = subprocess.run([sys.executable, "-m", "provisioner", "--root", str(root), "--json", *argv],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == code, (done.stdout, done.stderr)
    doc = json.loads(done.stdout)              # exactly one document, nothing else on stdout
    assert doc["version"] == 1 and doc["ok"] is False
    err = doc["error"]
    assert err["message"] and err["exit_code"] == code
    assert "error:" in done.stderr.lower() and "Traceback" not in done.stderr


def test_the_subcommand_flag_works_the_same(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "provisioner", "--root", str(tmp_path), "cuda", "switch", "99.9",
                           "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and json.loads(done.stdout)["error"]["exit_code"] == 1


def test_a_command_that_already_printed_its_document_prints_no_second_one(tmp_path: Path) -> None:
    # verify prints its checks document and exits 1: stdout must stay one document
    done = subprocess.run([sys.executable, "-m", "provisioner", "--root", str(tmp_path), "--json", "verify",
                           "--env", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PROVISION_NVML_LIBRARY=str(tmp_path / "none.so")))
    assert done.returncode == 1
    assert "checks" in json.loads(done.stdout)
