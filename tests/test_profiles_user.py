"""A broken user profile is skipped with one warning naming file and key; only naming it fails; and
`profile validate` with no argument lists every problem of every profile in one run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(config), PROVISION_NVML_LIBRARY=str(config / "none.so"))
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def _broken(config: Path) -> Path:
    d = config / "provision" / "profiles"
    d.mkdir(parents=True)
    (d / "cu126.yaml").write_text('name: cu126\ncuda: 12.6\ntorch: {version: "2.7"}\n')   # overrides a bundled one
    (d / "mine.yaml").write_text("name: other\n")
    (d / "typo.yaml").write_text("name: typo\n  bad: [indent\n")
    return d


def test_broken_user_profiles_are_skipped_with_one_warning_each(tmp_path: Path) -> None:
    d = _broken(tmp_path)
    listed = _run(tmp_path, "profile", "list")
    assert listed.returncode == 0, listed.stderr
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 3
    assert any(f"{d / 'cu126.yaml'}: " in w and "missing required key" in w for w in warnings)
    assert any("mine.yaml" in w and "+" in w and "more" in w for w in warnings)
    assert "cu126" in listed.stdout                        # the bundled cu126 still serves
    plan = _run(tmp_path, "env", "create", "--profile", "cpu", "--dry-run", "--prefix", str(tmp_path / "e"))
    assert plan.returncode == 0, plan.stderr


def test_naming_a_broken_user_profile_fails_with_its_problems(tmp_path: Path) -> None:
    _broken(tmp_path)
    done = _run(tmp_path, "env", "create", "--profile", "cu126", "--dry-run", "--prefix", str(tmp_path / "e"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cu126.yaml: missing required key 'python'" in done.stderr
    assert "fix or remove the user profile" in done.stderr


def test_validate_without_arguments_checks_every_profile_in_one_run(tmp_path: Path) -> None:
    _broken(tmp_path)
    done = _run(tmp_path, "--json", "profile", "validate")
    assert done.returncode == 2
    files = {Path(f["path"]).name: f for f in json.loads(done.stdout)["files"]}
    assert {"cu126.yaml", "mine.yaml", "typo.yaml", "cpu.yaml"} <= set(files)
    bad = sorted(name for name, f in files.items() if not f["ok"])
    assert bad == ["cu126.yaml", "mine.yaml", "typo.yaml"]
    assert len(files["mine.yaml"]["problems"]) >= 5           # every problem, not only the first
