"""The collection end to end: real ansible-core, three hosts over real SSH, one fleet report.

Each host is this machine seen through its own sshd in its own network namespace (127.0.0.1 ports
where namespaces cannot be made: the fixture says which), with its own --root and XDG dirs:
  gpu      a GPU through the fake NVML library; /usr/local/cuda -> cuda-12.8, 12.6 installed too
  cpu      no GPU (no NVML library loads); /usr/local/cuda -> cuda-12.6
  realdir  a GPU; /usr/local/cuda is a real directory, which provision refuses to switch
The play asks every host for CUDA 12.6 (`provision_cuda`) and verifies it, with forks=3.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CACHE
from tests.fixtures_env import uv_dir
from tests.fixtures_nvml import H100, FakeMachine
from tests.fleet import sshhosts
from tests.fleet.ansible_run import Ansible, Played, missing, write_inventory
from tests.helpers_cuda import link_cuda, make_toolkit, tree_digest

PLAYBOOK = "provisioner.gpu.fleet"
WHY_NOT = sshhosts.missing_tools() or missing()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


@dataclass
class Fleet:
    hosts: sshhosts.Hosts
    ansible: Ansible
    inventory: Path
    base: Path

    def digests(self) -> dict[str, str]:
        """Each host's root and its config/data dirs (the state provision keeps), hashed."""
        return {h.name: tree_digest(h.root) + tree_digest(h.home / ".config") + tree_digest(h.home / ".local/share")
                for h in self.hosts.hosts}

    def results(self, name: str) -> Path:
        return self.base / name

    def play(self, results: str, *args: str, extra: Mapping[str, object] | None = None,
             playbook: str | Path = PLAYBOOK) -> Played:
        """`playbook` with the `extra` vars, each host's result saved in results(`results`)."""
        return self.ansible.playbook(playbook, self.inventory, *args,
                                     extra={**(extra or {}), "provision_results_dir": str(self.results(results))})

    def rerun_changes_nothing(self, host: str, results: str, extra: Mapping[str, object]) -> None:
        """The same play again on `host`: nothing changes, nothing fails."""
        again = self.play(results, "--limit", host, extra=extra)
        assert again.recap[host]["changed"] == 0 and again.recap[host]["failed"] == 0, again.output


def _environment(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share"),
            "XDG_STATE_HOME": str(home / ".local/state"), "XDG_CACHE_HOME": str(home / ".cache"),
            "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, fake_nvml_dir: Path) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    with sshhosts.ssh_hosts(base, ["gpu", "cpu", "realdir"]) as hosts:
        print(f"hosts reached over SSH through {hosts.isolation}")
        gpu, cpu, realdir = (hosts.by_name(n) for n in ("gpu", "cpu", "realdir"))
        make_toolkit(gpu.root, "12.6")
        make_toolkit(gpu.root, "12.8")
        link_cuda(gpu.root, "cuda-12.8")
        make_toolkit(cpu.root, "12.6")
        link_cuda(cpu.root, "cuda-12.6")
        make_toolkit(realdir.root, "12.4", name="cuda")
        with_gpu = {"LD_LIBRARY_PATH": str(fake_nvml_dir), **FakeMachine().settings(),
                    # /usr/local/cuda/bin on PATH, as `cuda shell-init` puts it: nvcc resolves through the link
                    "PATH": "/usr/local/cuda/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        envs = {
            "gpu": {**_environment(gpu.home), **with_gpu},
            "cpu": {**_environment(cpu.home), "PROVISION_NVML_LIBRARY": str(cpu.directory / "no-driver/libnvidia-ml.so.1"),
                    # env_present builds here: uv, and the wheels the other tests cached (no network in a namespace)
                    "PATH": f"{uv_dir()}:/usr/sbin:/usr/bin:/sbin:/bin", "UV_CACHE_DIR": str(CACHE / "uv-cache"),
                    "PIP_CACHE_DIR": str(CACHE / "pip-cache"), "UV_HTTP_RETRIES": "0", "UV_OFFLINE": "1",
                    # this machine's own pip/uv settings (a local wheel folder, say): an sshd session lacks them
                    **{k: v for k, v in os.environ.items()
                       if k.startswith(("PIP_", "UV_")) and k not in ("PIP_CACHE_DIR", "UV_CACHE_DIR")}},
            "realdir": {**_environment(realdir.home), "LD_LIBRARY_PATH": str(fake_nvml_dir),
                        **FakeMachine(gpus=(H100,)).settings()},
        }
        inventory = write_inventory(base / "inventory.json", [
            {"name": h.name, "ansible_host": h.address, "ansible_port": h.port, "provision_root": str(h.root),
             "provision_environment": envs[h.name]} for h in hosts.hosts],
            {"ansible_user": "root", "ansible_ssh_private_key_file": str(hosts.key),
             "ansible_python_interpreter": sys.executable, "provision_cuda": "12.6"})
        yield Fleet(hosts, Ansible(base / "controller", forks=3), inventory, base)


def _report(results: Path) -> dict[str, dict[str, object]]:
    from click.testing import CliRunner

    from provisioner.cli import main

    done = CliRunner().invoke(main, ["fleet", "report", "--json", str(results)])
    assert "Traceback" not in done.output
    return {h["host"]: h for h in json.loads(done.stdout)["hosts"]}


def test_check_then_run_then_rerun(fleet: Fleet) -> None:
    # --check --diff: what would change, and nothing changes on any host
    before = fleet.digests()
    checked = fleet.play("check", "--check", "--diff")
    assert fleet.digests() == before, checked.output
    assert checked.recap["gpu"]["changed"] == 1, checked.output
    assert checked.recap["cpu"]["changed"] == 0 and checked.recap["realdir"]["changed"] == 0, checked.output
    assert "-/usr/local/cuda -> cuda-12.8" in checked.output and "+/usr/local/cuda -> cuda-12.6" in checked.output
    assert json.loads((fleet.results("check") / "gpu.json").read_text())["cuda"]["dry_run"] is True
    assert os.readlink(fleet.hosts.by_name("gpu").root / "usr/local/cuda") == "cuda-12.8"

    # the real run: only the gpu host changes (its link); three hosts, three verdicts
    ran = fleet.play("first", "--diff")
    assert "Traceback" not in ran.output
    assert {h: r["changed"] for h, r in ran.recap.items()} == {"gpu": 1, "cpu": 0, "realdir": 0}, ran.output
    assert os.readlink(fleet.hosts.by_name("gpu").root / "usr/local/cuda") == "cuda-12.6"
    assert ran.recap["gpu"]["failed"] == 0 and ran.recap["cpu"]["failed"] == 1 and ran.recap["realdir"]["failed"] == 1
    rows = _report(fleet.results("first"))
    assert {h: r["verdict"] for h, r in rows.items()} == {"gpu": "ok", "cpu": "FAIL", "realdir": "error"}
    assert rows["gpu"]["gpu"] == "NVIDIA GeForce RTX 4060 Laptop GPU (8 GiB)"
    assert rows["gpu"]["toolkit_link"] == "cuda-12.6 (12.6.85)" and rows["gpu"]["driver"] == "575.57.08"
    assert rows["cpu"]["gpu"] == "none" and rows["cpu"]["driver"] == "none"
    assert rows["cpu"]["differs"] == {"driver": "fail", "driver.cuda": "skip", "gpu": "skip", "gpu.0": "missing"}
    # the realdir host: the tool's own error and hint, and still its facts from verify
    assert str(rows["realdir"]["reason"]).startswith("/usr/local/cuda is a real directory holding CUDA 12.4.131")
    assert "hint: provision never deletes it" in str(rows["realdir"]["reason"])
    assert rows["realdir"]["gpu"] == "NVIDIA H100 80GB HBM3 (80 GiB)"
    assert rows["realdir"]["toolkit_link"] == "real directory (12.4.131)"
    assert "Traceback" not in (fleet.results("first") / "realdir.json").read_text()
    # the same table in the play's own output (the playbook's last play prints it)
    assert "provision fleet report" in ran.output and "realdir" in ran.output

    # a second run changes nothing anywhere
    again = fleet.play("second")
    assert {h: r["changed"] for h, r in again.recap.items()} == {"gpu": 0, "cpu": 0, "realdir": 0}, again.output


def test_a_host_cut_mid_run_is_a_row_that_says_so(fleet: Fleet) -> None:
    """The first play reaches every host, then cuts one off; the fleet playbook runs after it."""
    cpu = fleet.hosts.by_name("cpu")
    cut = fleet.base / "cut.yml"
    cut.write_text(json.dumps([
        {"name": "every host answers", "hosts": "all", "gather_facts": False,
         "tasks": [{"name": "ping", "ansible.builtin.ping": {}}]},
        {"name": "then one host is cut off", "hosts": "localhost", "gather_facts": False, "connection": "local",
         "tasks": [{"name": "cut cpu", "ansible.builtin.command": {"argv": fleet.hosts.cut(cpu)}}]},
        {"import_playbook": PLAYBOOK},
    ]))
    try:
        played = fleet.play("cut", playbook=cut)
    finally:
        fleet.hosts.restore(cpu)
    assert played.recap["cpu"]["ok"] >= 1, played.output           # it answered the ping first
    assert played.recap["gpu"]["failed"] == 0 and played.recap["gpu"]["unreachable"] == 0, played.output
    rows = _report(fleet.results("cut"))
    assert rows["cpu"]["verdict"] == "unreachable"
    assert "ssh" in str(rows["cpu"]["reason"]).lower()
    assert rows["gpu"]["verdict"] == "ok" and rows["realdir"]["verdict"] == "error"


def test_env_present_on_one_host(fleet: Fleet) -> None:
    """state: env_present builds the cpu host's environment (cached wheels), once; --check builds nothing."""
    cpu = fleet.hosts.by_name("cpu")
    prefix = cpu.directory / "envs" / "llm"
    extra = {"provision_state": "env_present", "provision_env": str(prefix), "provision_profile": "cpu",
             "provision_cuda": ""}
    checked = fleet.play("env-check", "--limit", "cpu", "--check", "--diff", extra=extra)
    assert checked.recap["cpu"]["changed"] == 1 and not prefix.exists(), checked.output
    built = fleet.play("env", "--limit", "cpu", "--diff", extra=extra)
    assert built.recap["cpu"]["changed"] == 1 and built.recap["cpu"]["failed"] == 0, built.output
    assert '+  "profile": {' in built.output                 # the new lock, in the diff
    rows = _report(fleet.results("env"))
    assert (rows["cpu"]["profile"], rows["cpu"]["torch"], rows["cpu"]["verdict"]) == ("cpu", "2.13.0+cpu", "warn")
    fleet.rerun_changes_nothing("cpu", "env-again", extra)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """provision's wheel and every wheel it needs, built here once: what an offline host gets copied."""
    import subprocess

    out = tmp_path_factory.mktemp("wheelhouse")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                           "-w", str(out), str(Path(__file__).resolve().parents[2])],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_role_installs_the_wheel_then_runs_the_module(fleet: Fleet, wheelhouse: Path) -> None:
    gpu = fleet.hosts.by_name("gpu")
    (wheel,) = wheelhouse.glob("provision-*.whl")
    extra = {"provision_wheel": str(wheel), "provision_venv": str(gpu.directory / "tool"),
             "provision_stage_dir": str(gpu.directory / "stage"), "provision_install_python": sys.executable,
             "provision_pip_args": ["--no-index", "--find-links", str(wheelhouse)], "provision_cuda": ""}
    first = fleet.play("role", "--limit", "gpu", extra=extra)
    assert first.recap["gpu"]["changed"] >= 2 and first.recap["gpu"]["failed"] == 0, first.output
    result = json.loads((fleet.results("role") / "gpu.json").read_text())
    assert result["commands"][0].startswith(f"{gpu.directory / 'tool/bin/provision'} --root ")
    assert _report(fleet.results("role"))["gpu"]["verdict"] == "ok"
    fleet.rerun_changes_nothing("gpu", "role-again", extra)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `provision bundle create --profile cpu -o FILE.tar` (the tool's wheel and the stack's)."""
    import subprocess

    from tests.fixtures_env import isolated_environ

    base = tmp_path_factory.mktemp("bundle")
    env = isolated_environ(base / "home")
    env.update(UV_CACHE_DIR=str(CACHE / "uv-cache"), PIP_CACHE_DIR=str(CACHE / "pip-cache"), NO_COLOR="1")
    done = subprocess.run([sys.executable, "-m", "provisioner", "bundle", "create", "--profile", "cpu",
                           "-o", str(base / "cpu.tar")], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return base / "cpu.tar"


def test_the_role_installs_from_a_bundle_and_builds_offline(fleet: Fleet, bundle: Path) -> None:
    """An offline host (its namespace has no route out): the tool and the environment from one bundle."""
    cpu = fleet.hosts.by_name("cpu")
    prefix = cpu.directory / "envs" / "from-bundle"
    extra = {"provision_bundle": str(bundle), "provision_venv": str(cpu.directory / "tool-from-bundle"),
             "provision_stage_dir": str(cpu.directory / "stage"), "provision_install_python": sys.executable,
             "provision_state": "env_present", "provision_env": str(prefix), "provision_cuda": ""}
    first = fleet.play("bundle", "--limit", "cpu", extra=extra)
    assert first.recap["cpu"]["failed"] == 0, first.output
    result = json.loads((fleet.results("bundle") / "cpu.json").read_text())
    assert result["commands"][0].startswith(f"{cpu.directory / 'tool-from-bundle/bin/provision'} --root ")
    assert f"--bundle {cpu.directory / 'stage/cpu.tar'}" in " ".join(result["commands"])
    assert result["changed"] is True and result["document"]["status"] == "created"
    row = _report(fleet.results("bundle"))["cpu"]
    assert (row["profile"], row["torch"]) == ("cpu", "2.13.0+cpu")
    fleet.rerun_changes_nothing("cpu", "bundle-again", extra)
