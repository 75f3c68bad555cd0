"""Fixtures for the cuda tests (registered in conftest.pytest_plugins)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CACHE
from tests.helpers_cuda import copy_toolkit

#: NVIDIA's CUDA wheels, downloaded once and reused by every later run (`cuda install --wheel-cache`).
WHEEL_CACHE = CACHE / "cuda-wheels"
#: Two real 13.x toolkits, so switches go both ways between real nvccs.
REAL_VERSIONS = ("13.0", "13.1")


@dataclass(frozen=True)
class RealToolkits:
    """A root where `provision cuda install` put real toolkits; and how long each install took."""

    root: Path
    paths: dict[str, Path]       # "13.0" -> <root>/usr/local/cuda-13.0
    seconds: dict[str, float]
    outputs: dict[str, str]      # stdout+stderr of each install


@pytest.fixture(scope="session")
def real_cuda(tmp_path_factory: pytest.TempPathFactory) -> RealToolkits:
    """CUDA 13.0 and 13.1 installed by the real `provision cuda install` (a subprocess) into a temp root.

    The first run downloads ~110 MB of wheels per version into WHEEL_CACHE; later runs install offline.
    """
    root = tmp_path_factory.mktemp("cuda-real-root")
    home = tmp_path_factory.mktemp("cuda-real-home")
    env = dict(os.environ, HOME=str(home), PIP_CACHE_DIR=str(CACHE / "pip-cache"), NO_COLOR="1")
    env.pop("PROVISION_ROOT", None)
    paths, seconds, outputs = {}, {}, {}
    for version in REAL_VERSIONS:
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "provisioner", "--root", str(root), "cuda", "install", version,
             "--wheel-cache", str(WHEEL_CACHE)],
            capture_output=True, text=True, env=env, timeout=1800)
        seconds[version] = time.monotonic() - start
        outputs[version] = done.stdout + done.stderr
        assert done.returncode == 0, f"cuda install {version} failed:\n{outputs[version]}"
        paths[version] = root / "usr" / "local" / f"cuda-{version}"
    return RealToolkits(root, paths, seconds, outputs)


@pytest.fixture
def real_root(tmp_path: Path, real_cuda: RealToolkits) -> Path:
    """A fresh root holding hard-linked copies of the real 13.0 and 13.1 toolkits (no cuda link yet)."""
    root = tmp_path / "root"
    for src in real_cuda.paths.values():
        copy_toolkit(src, root)
    return root
