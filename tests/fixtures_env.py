"""Fixtures for the env tests: isolated environs, the stand-in conda front-ends, one real built env."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
STANDIN = Path(__file__).parent / "bin" / "conda"


def uv_dir() -> Path:
    """The folder of the uv executable the test extra installs (it need not be on PATH)."""
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        import uv  # the `uv` distribution from the test extra

        found = uv.find_uv_bin()
    return Path(found).parent


def isolated_environ(home: Path, *, uv: bool = True, extra_path: Sequence[Path] = (),
                     base: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ with HOME/XDG under `home`, and uv first on PATH (or kept off it)."""
    env = dict(base if base is not None else os.environ)
    env["HOME"] = str(home)
    for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"),
                     ("XDG_STATE_HOME", ".local/state"), ("XDG_CACHE_HOME", ".cache")):
        env[var] = str(home / sub)
    parts = [str(p) for p in extra_path]
    if uv:
        parts.append(str(uv_dir()))
    # drop any folder holding uv when it must stay off PATH
    for p in env.get("PATH", os.defpath).split(os.pathsep):
        if not uv and p and (Path(p) / "uv").exists():
            continue
        parts.append(p)
    env["PATH"] = os.pathsep.join(parts)
    env["UV_HTTP_RETRIES"] = "0"        # an unreachable index fails at once, not after retries
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_EXE", "MAMBA_EXE", "PROVISION_DEBUG"):
        env.pop(var, None)
    return env


def run_provision(args: Sequence[str], env: dict[str, str], *, timeout: float = 900,
                  check: bool = False) -> subprocess.CompletedProcess[str]:
    """`provision ARGS` in a fresh interpreter (what a user runs)."""
    done = subprocess.run([sys.executable, "-m", "provisioner", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"provision {' '.join(args)} exited {done.returncode}\n"
                             f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done


@dataclass(frozen=True)
class BuiltEnv:
    """A real venv built by `provision env create` from the cpu profile."""

    prefix: Path
    root: Path                  # the --root it was built under (no toolkit there)
    environ: dict[str, str]     # the environ it was built with (its registry lives in its HOME)
    seconds: float
    stdout: str
    stderr: str

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run_provision(["--root", str(self.root), *args], self.environ, timeout=timeout)


@pytest.fixture(scope="session")
def cpu_env(tmp_path_factory: pytest.TempPathFactory) -> BuiltEnv:
    """One real environment from the cpu profile (uv + the local torch wheel), shared by the tests
    that only read it. It has its own HOME: session fixtures run outside `isolated_home`."""
    base = tmp_path_factory.mktemp("cpu-env")
    home, root = base / "home", base / "root"
    home.mkdir()
    root.mkdir()
    env = isolated_environ(home)
    prefix = base / "envs" / "chat"
    start = time.monotonic()
    done = run_provision(["--root", str(root), "env", "create", "--prefix", str(prefix)], env,
                         check=True)
    return BuiltEnv(prefix, root, env, time.monotonic() - start, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def chat_probe(chat_env_python: Path) -> dict[str, Any]:
    """The real probe of the shared chat env (CPU torch 2.13.0, bitsandbytes 0.50.2), run once (importing
    torch costs seconds); a test that changes it changes a copy."""
    from provisioner.env import probe
    from provisioner.env.target import EnvTarget

    report, problem = probe.run(EnvTarget("venv", chat_env_python.parent.parent, chat_env_python), dict(os.environ))
    assert problem is None and report is not None
    return report


@dataclass(frozen=True)
class CondaStandin:
    """PATH with one stand-in front-end on it, its argv log and its conda root."""

    flavor: str
    environ: dict[str, str]
    log: Path
    root: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def conda_standin(tmp_path: Path, chat_env_python: Path) -> Callable[[str], CondaStandin]:
    """conda_standin("micromamba") -> an environ whose PATH holds only that stand-in front-end."""

    def make(flavor: str) -> CondaStandin:
        bin_dir = tmp_path / f"{flavor}-bin"
        bin_dir.mkdir()
        (bin_dir / flavor).symlink_to(STANDIN)
        root = tmp_path / f"{flavor}-root"
        (root / "envs").mkdir(parents=True)
        env = isolated_environ(Path(os.environ["HOME"]), uv=False, extra_path=[bin_dir])
        site = next((chat_env_python.parent.parent / "lib").glob("python3*/site-packages"))
        log = tmp_path / f"{flavor}.log"
        env.update(STANDIN_LOG=str(log), STANDIN_ROOT=str(root), STANDIN_BASE_PYTHON=sys.executable,
                   STANDIN_SITE_PACKAGES=str(site))
        return CondaStandin(flavor, env, log, root)

    return make


def interrupt_at(argv: list[str], env: dict[str, str], marker: str | Callable[[], bool], sig: signal.Signals,
                 log: Path, timeout: float = 300) -> tuple[int, str]:
    """Run `provision ARGV`, send `sig` to its process group once stderr shows `marker` (or once `marker()`
    is true: a file grown to a size); (returncode, stderr)."""
    reached = marker if callable(marker) else (lambda: marker in log.read_text())
    with open(log, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "provisioner", *argv], env=env, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not reached():
            if child.poll() is not None:
                break                                    # it finished first: nothing left to interrupt
            assert time.monotonic() < deadline, f"never reached {marker!r}:\n{log.read_text()}"
            time.sleep(0.02)
        if child.poll() is None:
            os.killpg(child.pid, sig)
        code = child.wait(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return code, log.read_text()
