"""env.requirements: what torch, transformers, accelerate and bitsandbytes declare they need, against
what the environment has installed.

The first test is the real thing: a venv that sees the chat env's real torch/transformers stack (a
.pth file) with an older tokenizers installed by the real uv in front of it, so `import transformers`
really fails there; verify names the requirement and the fix, and after the fix (done with uv, as the
venv has no pip) both the check and the import pass. The rest run the pure check on probe data."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from provisioner.env.checks import EnvContext, check_requirements
from provisioner.env.target import EnvTarget
from provisioner.report import Status
from tests.fixtures_env import isolated_environ, uv_dir

PY311 = {"version": "3.11.7", "machine": "x86_64", "platform": "linux", "system": "Linux",
         "implementation": "CPython"}


def _site(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _verify(provision_cmd: list[str], prefix: Path, environ: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([*provision_cmd, "verify", "--env", str(prefix), "--json"], env=environ,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return {c["id"]: c for c in json.loads(done.stdout)["checks"]}


@pytest.mark.slow
def test_a_requirement_the_env_breaks_is_named_and_its_fix_works(chat_env_python: Path, tmp_path: Path,
                                                                provision_cmd: list[str]) -> None:
    uv = str(uv_dir() / "uv")
    prefix = tmp_path / "overlay"
    subprocess.run([uv, "venv", "-q", "-p", str(chat_env_python), str(prefix)], check=True)
    python = prefix / "bin" / "python"
    Path(_site(python), "zz_chat_env.pth").write_text(_site(chat_env_python) + "\n")
    environ = isolated_environ(tmp_path / "home")
    subprocess.run([uv, "pip", "install", "-q", "-p", str(python), "tokenizers==0.22.1"], check=True, env=environ)

    real = subprocess.run([str(python), "-c", "import transformers"], capture_output=True, text=True)
    assert real.returncode != 0 and "tokenizers" in real.stderr      # the breakage is real

    c = _verify(provision_cmd, prefix, environ)["env.requirements"]
    assert c["status"] == "fail"
    assert "transformers 5.24.0 requires tokenizers<0.24.0,>=0.23.1, installed 0.22.1" in c["message"]
    assert [p["name"] for p in c["data"]["problems"]] == ["tokenizers"]
    assert c["fix"].endswith("install 'tokenizers<0.24.0,>=0.23.1'")

    wanted = c["fix"].rsplit(" install ", 1)[1].strip("'")
    subprocess.run([uv, "pip", "install", "-q", "-p", str(python), wanted], check=True, env=environ)
    assert subprocess.run([str(python), "-c", "import transformers"], capture_output=True).returncode == 0
    after = _verify(provision_cmd, prefix, environ)["env.requirements"]
    assert after["status"] == "ok", after
    assert after["data"]["checked"] >= 20 and after["data"]["problems"] == []


def _reqs(declared: dict[str, list[str]], installed: dict[str, str | None]) -> dict[str, Any]:
    return {"declared": declared, "installed": installed}


def test_markers_are_judged_for_the_environments_python_not_this_one() -> None:
    reqs = _reqs({"transformers": ["tomli>=2; python_version < '3.11'", "numpy>=1.17",
                                   "pywin32; sys_platform == 'win32'"]},
                 {"tomli": None, "numpy": "2.4.6", "pywin32": None})
    c = check_requirements(reqs, {"transformers": "5.24.0"}, PY311, EnvContext())
    assert c.status is Status.OK and c.data["checked"] == 1
    old = check_requirements(reqs, {"transformers": "5.24.0"}, dict(PY311, version="3.10.14"), EnvContext())
    assert old.status is Status.FAIL
    assert old.message == "transformers 5.24.0 requires tomli>=2, not installed"   # the marker held


def test_local_and_pre_release_versions_count_as_what_they_are() -> None:
    reqs = _reqs({"bitsandbytes": ["torch<3,>=2.4"], "accelerate": ["huggingface_hub>=0.21.0"]},
                 {"torch": "2.13.0+cu126", "huggingface_hub": "1.0.0rc1"})
    c = check_requirements(reqs, {}, PY311, EnvContext())
    assert c.status is Status.OK, c.message
    too_old = check_requirements(_reqs({"bitsandbytes": ["torch<3,>=2.4"]}, {"torch": "2.3.1+cu121"}),
                                 {"bitsandbytes": "0.50.2"}, PY311, EnvContext())
    assert too_old.status is Status.FAIL
    assert too_old.message == "bitsandbytes 0.50.2 requires torch<3,>=2.4, installed 2.3.1+cu121"


def test_a_torch_requirement_is_fixed_from_the_profiles_index_not_plain_pip(tmp_path: Path) -> None:
    from provisioner import profiles

    target = EnvTarget(kind="venv", prefix=tmp_path / "e", python=tmp_path / "e" / "bin" / "python")
    reqs = _reqs({"bitsandbytes": ["torch<3,>=2.4", "numpy>=1.17"]}, {"torch": "2.3.1+cu121", "numpy": "1.16.0"})
    c = check_requirements(reqs, {"bitsandbytes": "0.50.2"}, PY311,
                           EnvContext(target=target, profile=profiles.get("cu126", {})))
    assert c.status is Status.FAIL and c.fix is not None
    assert "--index-url https://download.pytorch.org/whl/cu126" in c.fix   # the profile's torch
    assert "'torch<3,>=2.4'" not in c.fix                                     # not torch from plain pip
    assert c.fix.endswith(" && " + str(target.python) + " -m pip install 'numpy>=1.17'")


def test_many_problems_are_summed_up_and_all_kept_in_the_data() -> None:
    declared = {"transformers": [f"dep{i}>=1" for i in range(5)]}
    c = check_requirements(_reqs(declared, {f"dep{i}": "0.1" for i in range(5)}), {"transformers": "5.0"},
                           PY311, EnvContext())
    assert c.message.endswith("; and 2 more") and len(c.data["problems"]) == 5


@pytest.mark.parametrize("reqs", [None, {}, {"declared": "garbage"}])
def test_a_probe_without_the_requirements_skips(reqs: Any) -> None:
    assert check_requirements(reqs, {}, PY311, EnvContext()).status is Status.SKIP


def test_unparsable_lines_and_versions_are_not_ours_to_judge() -> None:
    reqs = _reqs({"accelerate": ["not a requirement !!", "psutil"]}, {"psutil": "not-a-version"})
    c = check_requirements(reqs, {}, PY311, EnvContext())
    assert c.status is Status.OK and c.data["checked"] == 1
