"""The `provision` module's arguments, run by the real ansible-core on localhost (no SSH needed):
Ansible's argument spec refuses what it can, the tool refuses the rest with its own error and hint."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.ansible_run import BIN, COLLECTION, Ansible, missing
from tests.helpers_cuda import link_cuda, make_toolkit, tree_digest

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ansible]:
    yield Ansible(tmp_path_factory.mktemp("controller"))


def test_built_tarball_installs(tmp_path: Path) -> None:
    """`ansible-galaxy collection build` then install the tarball (the e2e installs from the folder)."""
    built = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", str(COLLECTION),
                            "--output-path", str(tmp_path)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = tmp_path.glob("provisioner-gpu-*.tar.gz")
    installed = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", str(tarball),
                                "-p", str(tmp_path / "collections")], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    module = tmp_path / "collections/ansible_collections/provisioner/gpu/plugins/modules/provision.py"
    assert module.read_text() == (COLLECTION / "plugins/modules/provision.py").read_text()
    doc = subprocess.run([str(BIN / "ansible-doc"), "-M", str(module.parent), "provision"],
                         capture_output=True, text=True)
    assert doc.returncode == 0 and "env_present" in doc.stdout, doc.stderr


@pytest.mark.parametrize(("args", "says"), [
    pytest.param({"state": "installed"}, "value of state must be one of: verified, env_present, up", id="state"),
    pytest.param({"state": "up", "quant": "fp3"}, "value of quant must be one of: auto, nf4, int8, none", id="choice"),
    pytest.param({"state": "verified", "colour": "red"}, "Unsupported parameters", id="unknown"),
    pytest.param({"state": "up", "context": "many"}, "context", id="type"),
    pytest.param({"executable": "x", "python": "/y"}, "mutually exclusive", id="exclusive"),
])
def test_the_argument_spec_refuses(controller: Ansible, args: dict[str, object], says: str) -> None:
    played, result = controller.module(args)
    assert result["failed"] is True and says in str(result["msg"])
    assert "Traceback" not in played.output


def test_a_bad_value_fails_with_the_tools_error_and_hint(controller: Ansible, tmp_path: Path) -> None:
    played, result = controller.module({"state": "env_present", "root": str(tmp_path), "profile": "cu999"})
    assert result["failed"] is True
    error = result["error"]
    assert error["message"].startswith("no profile named 'cu999'") and error["exit_code"] == 2
    assert error["hint"].startswith("known profiles: ")
    assert result["msg"].startswith("error: no profile named 'cu999'") and "\nhint: known profiles" in result["msg"]
    assert "Traceback" not in played.output


def test_a_missing_tool_is_named(controller: Ansible) -> None:
    _, result = controller.module({"executable": "/nonexistent/provision"})
    assert result["msg"] == ("error: provision executable /nonexistent/provision not found on the host\n"
                             "hint: install the tool (role provisioner.gpu.provision) or set `executable`")


def test_check_mode_and_diff_of_the_cuda_link(controller: Ansible, tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.8")
    link_cuda(root, "cuda-12.8")
    args = {"state": "verified", "root": str(root), "cuda": "12.6"}
    before = tree_digest(root)
    _, checked = controller.module(args, "--check", "--diff")
    assert tree_digest(root) == before
    assert checked["changed"] is True and "verify" in checked
    assert checked["diff"] == {"before_header": f"/usr/local/cuda (root {root})",
                               "after_header": f"/usr/local/cuda (root {root})",
                               "before": "/usr/local/cuda -> cuda-12.8\n", "after": "/usr/local/cuda -> cuda-12.6\n"}
    # no GPU here: verify fails the host after the switch; a second run has nothing to switch
    nvml = {"PROVISION_NVML_LIBRARY": str(tmp_path / "no-driver/libnvidia-ml.so.1")}
    _, ran = controller.module(args, environ=nvml)
    assert ran["changed"] is True and ran["msg"].startswith("1 check(s) failed: driver: no NVIDIA driver")
    assert (root / "usr/local/cuda").readlink() == Path("cuda-12.6")
    _, again = controller.module(args, environ=nvml)
    assert again["changed"] is False


def test_up_in_check_mode_plans_and_builds_nothing(controller: Ansible, tmp_path: Path, isolated_home: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    before = tree_digest(root) + tree_digest(isolated_home / ".local/share")
    played, result = controller.module({"state": "up", "root": str(root), "profile": "cpu", "model": "qwen2.5-0.5b"},
                                       "--check", environ={"PROVISION_NVML_LIBRARY": str(tmp_path / "none.so")})
    assert tree_digest(root) + tree_digest(isolated_home / ".local/share") == before, played.output
    assert result["changed"] is True and result.get("failed") is not True, result.get("msg")
    assert result["document"]["dry_run"] is True
    assert {s["name"]: s["status"] for s in result["document"]["plan"]}["env"] == "todo"
    assert "--dry-run" in result["commands"][0]
