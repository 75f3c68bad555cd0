"""Fixtures of the bundle tests: one real cpu bundle made once per session, the network switched off
for a command, and a small PyTorch-like index."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bundle.pyindex import IndexWheel, PyIndex, make_wheel
from tests.fixtures_env import REPO, isolated_environ, run_provision
from tests.hubserver import HubServer, Repo

TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"
TINY_REPLY = "I am fine, thank you."
#: The hub id the local hub serves the tiny Qwen2 under (what the bundle records as its model).
MODEL_ID = "acme/tiny-qwen2"


@dataclass(frozen=True)
class MadeBundle:
    """A bundle folder made by `provision bundle create` (shared: tests copy it before changing anything)."""

    path: Path
    environ: dict[str, str]      # the environ it was made with (HOME, XDG dirs, the hub online)
    stdout: str
    stderr: str
    seconds: float

    def manifest(self) -> dict[str, object]:
        doc: dict[str, object] = json.loads((self.path / "manifest.json").read_text())
        return doc


@pytest.fixture(scope="session")
def cpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> MadeBundle:
    """The cpu profile for this machine's Python 3.11 platform, with the tiny Qwen2 served by the local
    hub as acme/tiny-qwen2. torch comes from where `env create` takes it here (the cpu_env fixture's
    way: a find-links folder holding the exact build, PIP_FIND_LINKS or pip's configuration, else the
    profile's index); everything else from the package registry."""
    base = tmp_path_factory.mktemp("cpu-bundle")
    home = base / "home"
    home.mkdir()
    env = isolated_environ(home)
    env.pop("HF_HUB_OFFLINE", None)
    env["HF_HOME"] = str(home / ".cache" / "huggingface")
    hub = HubServer([Repo(MODEL_ID, {p.name: p.read_bytes() for p in TINY.iterdir() if p.name != "README.md"})])
    hub.start()
    try:
        start = time.monotonic()
        done = run_provision(["bundle", "create", "--profile", "cpu", "--model", MODEL_ID, "--endpoint", hub.url,
                              "-o", str(base / "bundle")], env, check=True)
    finally:
        hub.stop()
    return MadeBundle(base / "bundle", env, done.stdout, done.stderr, time.monotonic() - start)


def copy_bundle(source: Path, dest: Path, *, skip: str | None = None, copy: tuple[str, ...] = ()) -> Path:
    """A copy of a bundle folder made of hard links (cheap), except the files in `copy`, which are real
    copies (to be changed), and without `skip`."""
    for p in sorted(source.rglob("*")):
        rel = p.relative_to(source).as_posix()
        target = dest / rel
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif rel != skip:
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel in copy:
                shutil.copyfile(p, target)
            else:
                os.link(p, target)
    return dest


@dataclass(frozen=True)
class NoNetwork:
    """How a command is cut off from the network: `wrap` goes in front of its argv, `environ` over its
    environment. `how` says which way this machine allowed."""

    wrap: tuple[str, ...]
    environ: dict[str, str]
    how: str


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def no_network() -> NoNetwork:
    """A network namespace with no interfaces (`unshare -n` as root, else `unshare -rn` in a user
    namespace) where this machine lets the tests make one; else every index, proxy and hub endpoint is
    pointed at a closed port on 127.0.0.1 and HF_HUB_OFFLINE=1 is set."""
    for wrap in (("unshare", "-n"), ("unshare", "-rn")):
        if shutil.which(wrap[0]) and subprocess.run([*wrap, "true"], capture_output=True).returncode == 0:
            return NoNetwork(wrap, {"HF_HUB_OFFLINE": "1"}, f"a network namespace with no interfaces ({' '.join(wrap)})")
    closed = f"http://127.0.0.1:{_closed_port()}"
    environ = {var: closed for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                                       "all_proxy", "HF_ENDPOINT")}
    environ.update(PIP_INDEX_URL=f"{closed}/simple", UV_INDEX_URL=f"{closed}/simple", UV_DEFAULT_INDEX=f"{closed}/simple",
                   NO_PROXY="", no_proxy="", HF_HUB_OFFLINE="1")
    return NoNetwork((), environ, f"every index, proxy and the hub pointed at the closed port {closed}")


def tool_python(version: str) -> str | None:
    """An interpreter of Python `version` to install the bundled provision with (None: none here)."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    return shutil.which(f"python{version}")


def cu126_index() -> PyIndex:
    """The PyTorch-like index for profile cu126: torch 2.13.0+cu126 and torchvision 0.28.0+cu126 for CPython
    3.11 on manylinux_2_28_x86_64, whose metadata names cu126 dependencies (one: the CUDA runtime wheel,
    from the package registry) as the real torch wheel's does."""
    torch = make_wheel("torch", "2.13.0+cu126", "cp311-cp311-manylinux_2_28_x86_64",
                       ["nvidia-cuda-runtime-cu12==12.6.77; platform_system == 'Linux' and platform_machine == 'x86_64'",
                        "typing-extensions>=4.10.0"], payload=300_000)
    vision = make_wheel("torchvision", "0.28.0+cu126", "cp311-cp311-manylinux_2_28_x86_64", ["torch==2.13.0"])
    return PyIndex([IndexWheel("torch", *torch), IndexWheel("torchvision", *vision)])


@pytest.fixture
def pyindex_cu126() -> Iterator[PyIndex]:
    index = cu126_index()
    index.start()
    try:
        yield index
    finally:
        index.stop()
