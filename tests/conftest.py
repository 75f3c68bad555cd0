"""Test isolation and the few expensive shared resources (built once, cached under .cache/tests)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Where slow-to-build test resources (venvs, CUDA wheels) persist between runs. CI starts empty.
CACHE = Path(os.environ.get("PROVISION_TEST_CACHE", REPO / ".cache" / "tests"))

pytest_plugins = [
    "tests.fixtures_cuda",
    "tests.fixtures_nvml",
    "tests.fixtures_env",
    "tests.fixtures_model",
]

# What the shared chat environment holds: the walkthrough's stack on the CPU torch build.
CHAT_ENV_REQUIREMENTS = (
    "torch==2.13.0",
    "transformers==5.24.0",
    "accelerate==1.15.0",
    "bitsandbytes==0.50.2",
)
#: Added to the chat stack for `provision chat --web` and `provision serve` (a second env, so the chat
#: env above keeps its key): Gradio, and the FastAPI + uvicorn it brings, pinned.
WEB_ENV_REQUIREMENTS = (
    "gradio==6.31.0",
    "fastapi==0.165.0",
    "uvicorn==0.55.0",
)


#: Per-test limit where pytest-timeout is installed (the `test` extra has it); without the plugin the
#: suite runs unchanged (an ini `timeout` key would make pytest fail with an INTERNALERROR).
TEST_TIMEOUT = 900


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("timeout") and not config.getoption("timeout", None):
        config.option.timeout = TEST_TIMEOUT


def _real_gpu() -> str | None:
    """Why the gpu-marked tests cannot run here, or None when NVML lists a real GPU."""
    from provisioner.system import gpu

    info = gpu.probe({k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_")}, timeout=30)
    if info.status != "ok" or not info.gpus:
        return f"no NVIDIA GPU here ({info.error or info.status})"
    return None


#: Fixtures that build something heavy on first use (real venvs with torch, real CUDA wheels, full
#: `env create` runs): a test that takes one is `slow`, whether or not it says so itself.
HEAVY_FIXTURES = frozenset({"chat_env_python", "cpu_env", "real_cuda", "real_root", "tiny_models", "chat_probe",
                            "no_bnb_env_python", "broken_torch_env_python", "conda_standin",
                            "web_env_python"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    why = _real_gpu() if gpu_items else None
    for item in gpu_items:
        if why:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and the XDG dirs live in tmp_path; the hub is off: escaping fails loudly."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"),
                     ("XDG_STATE_HOME", ".local/state"), ("XDG_CACHE_HOME", ".cache")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("PROVISION_ROOT", raising=False)
    monkeypatch.delenv("PROVISION_DEBUG", raising=False)
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.delenv("CONDA_EXE", raising=False)
    # pip/uv keep their wheel caches outside the throwaway HOME so reruns stay fast.
    monkeypatch.setenv("PIP_CACHE_DIR", str(CACHE / "pip-cache"))
    monkeypatch.setenv("UV_CACHE_DIR", str(CACHE / "uv-cache"))
    monkeypatch.setenv("NO_COLOR", "1")
    return home


def _build_venv(prefix: Path, requirement_groups: list[list[str]]) -> Path:
    """A real venv at prefix with each group pip-installed in order; `.complete` marks success."""
    marker = prefix / ".complete"
    python = prefix / "bin" / "python"
    if marker.exists() and python.exists():
        return python
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True)
    env = dict(os.environ, PIP_CACHE_DIR=str(CACHE / "pip-cache"))
    for group in requirement_groups:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", *group], check=True, env=env)
    marker.write_text("ok\n")
    return python


def _key(items: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:10]


@pytest.fixture(scope="session")
def chat_env_python() -> Path:
    """Interpreter of a real venv with CPU torch 2.13.0 + transformers + accelerate + bitsandbytes.

    Built with plain pip once (torch first and pinned, so nothing pulls a CUDA build) and reused.
    """
    prefix = CACHE / f"chat-env-{_key(CHAT_ENV_REQUIREMENTS)}"
    return _build_venv(prefix, [[CHAT_ENV_REQUIREMENTS[0]], list(CHAT_ENV_REQUIREMENTS[1:])])


@pytest.fixture(scope="session")
def web_env_python() -> Path:
    """Interpreter of a real venv with the chat env's stack plus WEB_ENV_REQUIREMENTS (Gradio, FastAPI,
    uvicorn): what `provision chat --web` and `provision serve` run in. Built once, like the chat env."""
    prefix = CACHE / f"web-env-{_key(CHAT_ENV_REQUIREMENTS + WEB_ENV_REQUIREMENTS)}"
    return _build_venv(prefix, [[CHAT_ENV_REQUIREMENTS[0]], list(CHAT_ENV_REQUIREMENTS[1:]),
                                list(WEB_ENV_REQUIREMENTS)])


@pytest.fixture(scope="session")
def bare_env_python() -> Path:
    """Interpreter of a real venv with nothing installed (no torch at all)."""
    prefix = CACHE / "bare-env"
    return _build_venv(prefix, [])


@pytest.fixture
def provision_cmd() -> list[str]:
    """Argv prefix that runs the CLI in a fresh interpreter (for tests needing a real process)."""
    return [sys.executable, "-m", "provisioner"]


@pytest.fixture
def scrubbed_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """os.environ as the isolated test sees it, as a dict to pass to subprocesses."""
    yield dict(os.environ)
