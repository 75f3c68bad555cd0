"""The env-probe cache's key, file and policy, on small real venvs (no torch: nothing here runs a probe).

The whole loop (verify probes, then answers from the cache until a key part changes) is in
tests/test_verify_cache.py, with torch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from provisioner.cuda.link import read_link
from provisioner.env import probe_cache
from provisioner.env.target import EnvTarget
from provisioner.system import gpu
from provisioner.versions import CudaVersion, DriverVersion
from tests.helpers_cuda import link_cuda, make_toolkit

GIB = 1 << 30


@pytest.fixture
def venv(tmp_path: Path) -> EnvTarget:
    prefix = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    return EnvTarget("venv", prefix, prefix / "bin" / "python")


def site(target: EnvTarget) -> Path:
    return next(target.prefix.glob("lib/python3*/site-packages"))


def install(target: EnvTarget, name: str, version: str) -> Path:
    """What an installer leaves: the package folder and its dist-info (real enough for a listing)."""
    (site(target) / name).mkdir(exist_ok=True)
    (site(target) / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
    dist = site(target) / f"{name}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return dist


def uninstall(target: EnvTarget, name: str, version: str) -> None:
    dist = site(target) / f"{name}-{version}.dist-info"
    for f in dist.iterdir():
        f.unlink()
    dist.rmdir()


def upgrade(target: EnvTarget, name: str, old: str, new: str) -> None:
    uninstall(target, name, old)
    install(target, name, new)


def driver(version: str = "575.57.08", gpus: tuple[gpu.GpuInfo, ...] | None = None) -> gpu.DriverInfo:
    if gpus is None:
        gpus = (gpu.GpuInfo(0, "NVIDIA GeForce RTX 4060 Laptop GPU", "GPU-1", (8, 9), 8 * GIB, 0, 8 * GIB),)
    return gpu.DriverInfo("ok", driver_version=DriverVersion.parse(version), cuda=CudaVersion.parse("12.9"),
                          gpus=gpus)


HEALTHY: dict[str, Any] = {
    "packages": {"torch": "2.13.0+cpu", "bitsandbytes": "0.50.2"},
    "torch": {"imported": True, "error": None, "build": "cpu", "cuda_available": False, "devices": []},
    "bitsandbytes": {"imported": True, "error": None, "native": True, "matmul": {"ok": True}},
}


# ---------------------------------------------------------------------------- the env part

def test_an_unchanged_env_keeps_its_key_and_a_pycache_does_not_count(venv: EnvTarget) -> None:
    install(venv, "tiny", "1.0")
    before = probe_cache.env_part(venv, {})
    (site(venv) / "__pycache__").mkdir()          # what a probe's imports write
    assert probe_cache.env_part(venv, {}) == before
    assert "tiny-1.0" in before["distributions"]


@pytest.mark.parametrize("change, part", [
    pytest.param(lambda t: install(t, "other", "0.1"), "the installed distributions", id="install"),
    pytest.param(lambda t: uninstall(t, "tiny", "1.0"), "the installed distributions", id="uninstall"),
    pytest.param(lambda t: upgrade(t, "tiny", "1.0", "2.0"), "the installed distributions", id="upgrade"),
    pytest.param(lambda t: os.utime(site(t) / "tiny-1.0.dist-info", ns=(1, 1)), "the site-packages contents",
                 id="reinstall-same-version"),
    pytest.param(lambda t: (site(t) / "editable.pth").write_text("/src\n"), "the site-packages contents",
                 id="pth-file"),
    pytest.param(lambda t: (t.prefix / "pyvenv.cfg").write_text(
        (t.prefix / "pyvenv.cfg").read_text().replace("include-system-site-packages = false",
                                                      "include-system-site-packages = true")),
        "pyvenv.cfg", id="pyvenv-cfg"),
])
def test_each_env_side_change_changes_the_key(venv: EnvTarget, change: Any, part: str) -> None:
    install(venv, "tiny", "1.0")
    before = probe_cache.env_part(venv, {})
    change(venv)
    assert part in probe_cache.changed(before, probe_cache.env_part(venv, {}))


@pytest.mark.parametrize("var", ["CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "BNB_CUDA_VERSION", "PYTHONPATH"])
def test_a_variable_torch_or_bitsandbytes_reads_is_part_of_the_key(venv: EnvTarget, var: str) -> None:
    before = probe_cache.env_part(venv, {"HOME": "/nowhere"})
    after = probe_cache.env_part(venv, {"HOME": "/nowhere", var: "1"})
    assert probe_cache.changed(before, after) == ["the environment variables"]
    # and one it does not read is not
    assert probe_cache.env_part(venv, {"HOME": "/nowhere", "EDITOR": "vi"}) == before


def test_the_user_site_folder_counts(venv: EnvTarget, tmp_path: Path) -> None:
    home = tmp_path / "home"
    environ = {"HOME": str(home)}
    before = probe_cache.env_part(venv, environ)
    user_site = home / f".local/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    user_site.mkdir(parents=True)
    (user_site / "torch-2.13.0.dist-info").mkdir()
    after = probe_cache.env_part(venv, environ)
    assert "the installed distributions" in probe_cache.changed(before, after)


def test_a_new_interpreter_changes_the_key(venv: EnvTarget, tmp_path: Path) -> None:
    before = probe_cache.env_part(venv, {})
    venv.python.unlink()
    fake = tmp_path / "python3.99"
    fake.write_text("#!/bin/sh\n")
    venv.python.symlink_to(fake)
    assert "the interpreter" in probe_cache.changed(before, probe_cache.env_part(venv, {}))


# ---------------------------------------------------------------------------- the machine part

def test_each_machine_side_change_changes_the_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.8")
    link_cuda(root, "cuda-12.6")
    link = read_link(root, {})
    base = probe_cache.machine_part(driver(), link)
    assert probe_cache.machine_part(driver(), read_link(root, {})) == base
    assert probe_cache.changed(base, probe_cache.machine_part(driver("580.65.06"), link)) == ["the driver"]
    two = (*driver().gpus, gpu.GpuInfo(1, "NVIDIA H100 80GB HBM3", "GPU-2", (9, 0), 80 * GIB, 0, 80 * GIB))
    assert probe_cache.changed(base, probe_cache.machine_part(driver(gpus=two), link)) == ["the GPUs"]
    # memory in use is no part of it: it changes all the time and the probe's verdicts do not depend on it
    busy = (gpu.GpuInfo(0, "NVIDIA GeForce RTX 4060 Laptop GPU", "GPU-1", (8, 9), 8 * GIB, 3 * GIB, 5 * GIB),)
    assert probe_cache.machine_part(driver(gpus=busy), link) == base
    (root / "usr/local/cuda").unlink()
    link_cuda(root, "cuda-12.8")
    assert probe_cache.changed(base, probe_cache.machine_part(driver(), read_link(root, {}))) == [
        "the /usr/local/cuda link"]
    assert probe_cache.changed(base, probe_cache.machine_part(gpu.DriverInfo("no-library"), link)) == [
        "the driver", "the GPUs"]


# ---------------------------------------------------------------------------- the file and the policy

def test_store_then_load_round_trips_through_json(venv: EnvTarget, tmp_path: Path) -> None:
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    machine = probe_cache.machine_part(driver(), None)
    stored = probe_cache.store(venv, environ, machine, HEALTHY)
    assert stored is not None
    assert stored.path.parent == tmp_path / "cache" / "provision" / "env-probe"
    assert stored.path.stat().st_mode & 0o777 == 0o600
    loaded = probe_cache.load(venv, environ)
    assert loaded is not None
    assert (loaded.probe, loaded.probed_at) == (HEALTHY, stored.probed_at)
    assert probe_cache.changed(loaded.env, probe_cache.env_part(venv, environ)) == []
    assert probe_cache.changed(loaded.machine, machine) == []


def test_a_damaged_or_foreign_cache_file_is_a_miss(venv: EnvTarget, tmp_path: Path) -> None:
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    stored = probe_cache.store(venv, environ, {}, HEALTHY)
    assert stored is not None
    stored.path.write_text("{not json")
    assert probe_cache.load(venv, environ) is None
    stored.path.write_text(json.dumps({"version": probe_cache.CACHE_VERSION, "python": "/other/python",
                                       "env": {}, "machine": {}, "probe": {}}))
    assert probe_cache.load(venv, environ) is None


def test_an_unwritable_cache_folder_only_means_no_cache(venv: EnvTarget, tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the folder should be")
    assert probe_cache.store(venv, {"XDG_CACHE_HOME": str(blocker)}, {}, HEALTHY) is None


@pytest.mark.parametrize("broken", [
    pytest.param({"torch": {"imported": False, "error": "ModuleNotFoundError: torch"}}, id="no-torch"),
    pytest.param({"torch": dict(HEALTHY["torch"], cuda_error="RuntimeError: busy")}, id="cuda-error"),
    pytest.param({"torch": dict(HEALTHY["torch"], kernel_ok=False)}, id="no-kernel-image"),
    pytest.param({"bitsandbytes": dict(HEALTHY["bitsandbytes"], matmul={"ok": False})}, id="bad-matmul"),
    pytest.param({"bitsandbytes": {"imported": False, "error": "OSError: libcudart"}}, id="bnb-import"),
])
def test_only_a_healthy_probe_is_kept(broken: dict[str, Any]) -> None:
    assert probe_cache.cacheable(HEALTHY)
    assert not probe_cache.cacheable(dict(HEALTHY, **broken))
