"""envtarget: --env NAME|PATH (or nothing) resolved to a real environment's Python."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from provisioner.env import target as envtarget
from provisioner.errors import ProvisionError


def _base_environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_EXE", "MAMBA_EXE", "MAMBA_ROOT_PREFIX",
                        "CONDA_ENVS_PATH")}
    env["PATH"] = str(tmp_path / "no-bin")   # no conda front-end unless a test puts one there
    env.update(extra)
    return env


def _prefix(path: Path, *, conda: bool = False) -> Path:
    """An environment prefix whose bin/python is a link to this interpreter (enough to be found)."""
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").symlink_to(sys.executable)
    if conda:
        (path / "conda-meta").mkdir()
    return path


def _fake_frontend(bin_dir: Path, name: str, envs: list[Path]) -> Path:
    """A stand-in conda/mamba/micromamba: no conda can be installed on these machines (offline),
    so this prints the `env list --json` shape conda documents, and records its argv."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / name
    doc = json.dumps({"envs": [str(e) for e in envs]})
    # shell builtins only: PATH holds nothing but this directory
    exe.write_text(f"#!/bin/sh\necho \"$@\" >> '{bin_dir}/{name}.calls'\nprintf '%s\\n' '{doc}'\n")
    exe.chmod(0o755)
    return exe


def test_nothing_means_this_interpreter(tmp_path: Path) -> None:
    t = envtarget.resolve(None, _base_environ(tmp_path))
    assert (t.kind, t.python, t.prefix) == ("current", Path(sys.executable), Path(sys.prefix))


def test_nothing_means_the_activated_venv(tmp_path: Path) -> None:
    venv = _prefix(tmp_path / "active")
    t = envtarget.resolve(None, _base_environ(tmp_path, VIRTUAL_ENV=str(venv)))
    assert (t.kind, t.prefix, t.python) == ("venv", venv, venv / "bin" / "python")


def test_real_venv_by_path(bare_env_python: Path, tmp_path: Path) -> None:
    prefix = bare_env_python.parent.parent
    t = envtarget.resolve(str(prefix), _base_environ(tmp_path))
    assert (t.kind, t.prefix, t.python) == ("venv", prefix, prefix / "bin" / "python")


def test_python_path_names_its_env(bare_env_python: Path, tmp_path: Path) -> None:
    t = envtarget.resolve(str(bare_env_python), _base_environ(tmp_path))
    assert (t.kind, t.prefix) == ("venv", bare_env_python.parent.parent)


def test_conda_prefix_by_path(tmp_path: Path) -> None:
    prefix = _prefix(tmp_path / "miniforge3" / "envs" / "llm", conda=True)
    t = envtarget.resolve(str(prefix), _base_environ(tmp_path))
    assert (t.kind, t.name) == ("conda", "llm")


def test_home_relative_path(tmp_path: Path) -> None:
    _prefix(tmp_path / "h" / "envs" / "chat")
    t = envtarget.resolve("~/envs/chat", _base_environ(tmp_path, HOME=str(tmp_path / "h")))
    assert t.prefix == tmp_path / "h" / "envs" / "chat"


@pytest.mark.parametrize("frontend", ["conda", "mamba", "micromamba"])
def test_conda_name_from_frontend(tmp_path: Path, frontend: str) -> None:
    root = _prefix(tmp_path / "miniforge3", conda=True)
    (root / "envs").mkdir()
    llm = _prefix(root / "envs" / "llm", conda=True)
    bin_dir = tmp_path / "bin"
    _fake_frontend(bin_dir, frontend, [root, llm])
    env = _base_environ(tmp_path, PATH=str(bin_dir))
    t = envtarget.resolve("llm", env)
    assert (t.kind, t.prefix) == ("conda", llm)
    assert (bin_dir / f"{frontend}.calls").read_text() == "env list --json\n"
    assert envtarget.resolve("base", env).prefix == root


def test_conda_name_from_active_env_siblings(tmp_path: Path) -> None:
    """No front-end on PATH: the active env's envs/ directory still finds its siblings."""
    envs = tmp_path / "miniconda3" / "envs"
    other = _prefix(envs / "other", conda=True)
    llm = _prefix(envs / "llm", conda=True)
    t = envtarget.resolve("llm", _base_environ(tmp_path, CONDA_PREFIX=str(other)))
    assert t.prefix == llm


def test_conda_name_under_home_installer_dir(tmp_path: Path) -> None:
    llm = _prefix(tmp_path / "h" / "miniforge3" / "envs" / "llm", conda=True)
    t = envtarget.resolve("llm", _base_environ(tmp_path, HOME=str(tmp_path / "h")))
    assert t.prefix == llm


def _dangling(p: Path) -> None:
    (p / "gone" / "bin").mkdir(parents=True)
    (p / "gone" / "bin" / "python").symlink_to(p / "deleted-base" / "python3")


@pytest.mark.parametrize(("make", "target", "message", "hint"), [
    pytest.param(None, "nosuch", "no environment named 'nosuch'", "provision env create --name nosuch",
                 id="unknown-name"),
    pytest.param(lambda p: (p / "empty").mkdir(), "{tmp}/empty",
                 "is not a usable Python environment (no bin/python)", "provision env create --prefix",
                 id="no-python"),
    pytest.param(_dangling, "{tmp}/gone", "(a dangling bin/python link)", "was not built by provision",
                 id="dangling-python"),
    pytest.param(None, "{tmp}/absent", "does not exist", "provision env create --prefix",
                 id="missing-path"),
])
def test_refusals(tmp_path: Path, make: Callable[[Path], None] | None, target: str, message: str,
                  hint: str) -> None:
    if make is not None:
        make(tmp_path)
    with pytest.raises(ProvisionError) as e:
        envtarget.resolve(target.format(tmp=tmp_path), _base_environ(tmp_path))
    assert message in e.value.message
    assert e.value.hint is not None and hint in e.value.hint
