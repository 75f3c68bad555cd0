"""A corpus of broken machines (tmp root + fake NVML + a real env), each run through `provision verify --json`.

Every state names the check that must fail and a piece of its fix; every run must exit 1 without a
traceback. The driver side comes from the fake libnvidia-ml.so.1 loaded by the real pynvml, the
toolkit side from trees under the tmp root, the environment side from real venvs.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner import profiles
from provisioner.cli import main
from tests.fixtures_nvml import FakeMachine, MachineFactory
from tests.helpers_cuda import link_cuda, make_toolkit

UBUNTU = 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n'
DEBIAN = 'NAME="Debian GNU/Linux"\nID=debian\n'
NVIDIA_MODULES = "nvidia_uvm 1 0 - Live 0x0\nnvidia 1 1 nvidia_uvm, Live 0x0\n"


@dataclass(frozen=True)
class State:
    machine: FakeMachine | None            # None: no libnvidia-ml.so.1 at all
    env: str                               # bare | chat | no-bnb | broken-torch | gone | a conda name
    check: str                             # the check that must fail
    fix: str                               # a piece of its fix ("{root}" and "{python}" filled in)
    setup: Callable[[Path], None] | None = None
    profile: str | None = None
    os_release: str = UBUNTU
    modules: str = NVIDIA_MODULES


def _toolkit_128(root: Path) -> None:
    make_toolkit(root, "12.8.93")
    link_cuda(root, "cuda-12.8")


def _dangling_link(root: Path) -> None:
    make_toolkit(root, "12.8.93")
    link_cuda(root, "cuda-12.9")          # cuda-12.9 was removed, the link still points there


def _link_is_directory(root: Path) -> None:
    make_toolkit(root, "12.8.93").rename(root / "usr/local/cuda")


def _old_stack_profile(root: Path) -> None:
    """A user profile (XDG config dir, set by conftest in tmp) whose transformers range excludes 5.x."""
    home = Path(root).parent / "home"
    text = (profiles.bundled_dir() / "cpu.yaml").read_text()
    changed = text.replace("name: cpu", "name: oldstack").replace('transformers: ">=5.0,<6"',
                                                                  'transformers: ">=4.45,<5"')
    assert changed.count("oldstack") == 1 and '">=4.45,<5"' in changed
    user = home / ".config" / "provision" / "profiles"
    user.mkdir(parents=True, exist_ok=True)
    (user / "oldstack.yaml").write_text(changed)


STATES = [
    pytest.param(State(None, "bare", "driver", "sudo ubuntu-drivers autoinstall && sudo reboot", modules=""),
                 id="no-driver-ubuntu"),
    pytest.param(State(None, "bare", "driver", "sudo apt install nvidia-driver firmware-misc-nonfree",
                       os_release=DEBIAN, modules=""), id="no-driver-debian"),
    pytest.param(State(None, "bare", "driver.nouveau", "echo 'blacklist nouveau' | sudo tee",
                       modules="nouveau 2420736 2 - Live 0x0\n"), id="nouveau-holds-gpu"),
    pytest.param(State(FakeMachine(init_rc=9), "bare", "driver", "sudo modprobe nvidia", modules=""),
                 id="kernel-module-not-loaded"),
    pytest.param(State(FakeMachine(init_rc=18), "bare", "driver", "sudo reboot"), id="reboot-after-upgrade"),
    pytest.param(State(FakeMachine(init_rc=999), "bare", "driver", "nvidia-smi"), id="nvml-unknown-error"),
    pytest.param(State(FakeMachine(gpus=()), "bare", "driver", "nvidia-smi -L"), id="driver-lists-no-gpu"),
    pytest.param(State(FakeMachine(cuda_v2_rc=12), "bare", "driver.cuda",
                       "sudo apt install --reinstall libnvidia-compute-575"), id="libcuda-missing"),
    pytest.param(State(FakeMachine(driver="515.65.01", cuda=11070), "bare", "cuda.driver",
                       "sudo apt install nvidia-driver-570", setup=_toolkit_128), id="driver-too-old-for-toolkit"),
    pytest.param(State(FakeMachine(), "bare", "cuda.link", "cuda switch 12.8", setup=_dangling_link),
                 id="dangling-cuda-link"),
    pytest.param(State(FakeMachine(), "bare", "cuda.link", "sudo mv /usr/local/cuda /usr/local/cuda-12.8",
                       setup=_link_is_directory), id="cuda-link-is-a-directory"),
    pytest.param(State(FakeMachine(), "chat", "env.torch_cuda", "--index-url https://"), id="cpu-wheel-on-gpu"),
    pytest.param(State(None, "bare", "env.torch", "{python} -m pip install torch==", modules=""), id="no-torch"),
    pytest.param(State(None, "broken-torch", "env.torch", "{python} -m pip uninstall -y torch && ", modules=""),
                 id="torch-import-broken"),
    pytest.param(State(None, "no-bnb", "env.bitsandbytes", "{python} -m pip install 'bitsandbytes>=",
                       modules=""), id="no-bitsandbytes"),
    pytest.param(State(None, "gone", "env.python", "provision env create --prefix", modules=""),
                 id="venv-python-deleted"),
    pytest.param(State(None, "nosuch-env", "env.python", "provision env create --name nosuch-env", modules=""),
                 id="unknown-conda-env"),
    pytest.param(State(None, "no-bnb", "env.packages", "{python} -m pip install 'transformers>=4.45,<5'",
                       setup=_old_stack_profile, profile="oldstack", modules=""), id="packages-outside-profile"),
    pytest.param(State(None, "bare", "profile", "use --profile cpu", profile="cu126", modules=""),
                 id="profile-needs-a-gpu"),
]


def _env_arg(state: State, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(--env argument, the python its fixes name)."""
    fixture = {"bare": "bare_env_python", "chat": "chat_env_python", "no-bnb": "no_bnb_env_python",
               "broken-torch": "broken_torch_env_python"}.get(state.env)
    if fixture is not None:
        python: Path = request.getfixturevalue(fixture)
        return str(python.parent.parent), str(python)
    if state.env == "gone":
        prefix = tmp_path / "gone-venv"
        (prefix / "bin").mkdir(parents=True)
        (prefix / "bin" / "python").symlink_to(tmp_path / "removed-python3.11")
        return str(prefix), str(prefix / "bin" / "python")
    return state.env, ""


@pytest.mark.parametrize("state", STATES)
def test_broken_state(state: State, request: pytest.FixtureRequest, tmp_path: Path,
                      fake_machine: MachineFactory, no_driver_environ: dict[str, str]) -> None:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "proc" / "modules").write_text(state.modules)
    (root / "etc" / "os-release").write_text(state.os_release)
    if state.setup is not None:
        state.setup(root)
    environ = fake_machine(state.machine) if state.machine is not None else dict(no_driver_environ)
    environ["PATH"] = "/usr/bin:/bin"   # no conda front-end, no nvcc wrapper from the host
    env_arg, python = _env_arg(state, request, tmp_path)
    args = ["--root", str(root), "verify", "--json", "--env", env_arg]
    if state.profile:
        args += ["--profile", state.profile]

    result = CliRunner().invoke(main, args, env=environ, catch_exceptions=False)

    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["version"] == 1 and doc["ok"] is False
    failed = {c["id"]: c for c in doc["checks"] if c["status"] == "fail"}
    assert state.check in failed, f"{state.check} did not fail: {sorted(failed)}"
    fix = failed[state.check]["fix"] or ""
    assert state.fix.format(root=root, python=python) in fix, fix
