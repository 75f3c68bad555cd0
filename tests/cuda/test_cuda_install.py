"""`provision cuda install`: real CUDA 13.x toolkits from NVIDIA's wheels; 12.x/11.x get the repository command."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from provisioner import cuda
from provisioner.cuda import install as cuda_install
from provisioner.versions import CudaVersion
from tests.fixtures_cuda import WHEEL_CACHE, RealToolkits
from tests.helpers_cuda import cli, provision_argv, unprivileged


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    (path / "usr/local").mkdir(parents=True)
    return path


def _listing(path: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.lstat().st_ino) for p in path.iterdir())


@pytest.mark.parametrize("version", ["13.0", "13.1"])
def test_installed_toolkit_layout(real_cuda: RealToolkits, version: str) -> None:
    tk = real_cuda.paths[version]
    assert f"installed cuda-{version} (CUDA {version}." in real_cuda.outputs[version]
    assert f"into /usr/local/cuda-{version}; its nvcc compiles" in real_cuda.outputs[version]
    assert os.readlink(tk / "lib64") == "lib"
    for part in ("bin/nvcc", "bin/ptxas", "nvvm/bin/cicc", "include/cuda_runtime.h", "include/cuda.h"):
        assert (tk / part).is_file(), part
    assert list((tk / "lib").glob("libcudart.so.*"))
    doc = json.loads((tk / "version.json").read_text())
    assert doc["cuda"]["version"].startswith(f"{version}.")
    assert set(doc["provision"]["wheels"]) == {"nvidia_cuda_nvcc", "nvidia_cuda_runtime", "nvidia_cuda_crt",
                                               "nvidia_nvvm", "nvidia_cuda_cccl"}
    # nothing half-built or hidden is left beside the toolkits
    assert sorted(os.listdir(real_cuda.root / "usr/local")) == ["cuda-13.0", "cuda-13.1"]
    found = cuda.read_toolkit(tk, real_cuda.root, {})
    assert found.complete and found.version_source == "nvcc" and found.version is not None
    assert found.version.short == version


def test_installed_nvcc_compiles_a_cu_file(real_cuda: RealToolkits, tmp_path: Path) -> None:
    src = tmp_path / "saxpy.cu"
    src.write_text("__global__ void saxpy(int n, float a, const float *x, float *y) {\n"
                   "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
                   "  if (i < n) y[i] = a * x[i] + y[i];\n}\n")
    subprocess.run([str(real_cuda.paths["13.0"] / "bin/nvcc"), "-c", str(src), "-o", str(tmp_path / "s.o")],
                   check=True, capture_output=True, timeout=300)
    assert (tmp_path / "s.o").stat().st_size > 0


def test_install_refuses_an_existing_toolkit(real_root: Path) -> None:
    before = _listing(real_root / "usr/local"), _listing(real_root / "usr/local/cuda-13.1")
    result = cli(real_root, "cuda", "install", "13.1")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: /usr/local/cuda-13.1 already exists (CUDA 13.1.")
    assert "provision never replaces it" in result.stderr
    assert "`sudo mv /usr/local/cuda-13.1 /usr/local/cuda-13.1.old`" in result.stderr
    assert (_listing(real_root / "usr/local"), _listing(real_root / "usr/local/cuda-13.1")) == before
    assert "Traceback" not in result.output


@pytest.mark.parametrize("os_release, version, command", [
    pytest.param('ID=ubuntu\nVERSION_ID="22.04"\n', "12.6", "`sudo apt-get update && sudo apt-get install -y "
                 "cuda-toolkit-12-6`", id="ubuntu-12.6"),
    pytest.param('ID=debian\nVERSION_ID="12"\n', "cu118", "apt-get install -y cuda-toolkit-11-8", id="debian-11.8"),
    pytest.param('ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n', "12.9",
                 "`sudo dnf install -y cuda-toolkit-12-9`", id="rocky-12.9"),
    pytest.param('ID="sles"\nVERSION_ID="15.6"\n', "12.4", "`sudo zypper install -y cuda-toolkit-12-4`",
                 id="sles-12.4"),
    pytest.param(None, "12.8", "`sudo sh cuda_12.8.*_linux.run --silent --toolkit "
                 "--installpath=/usr/local/cuda-12.8`", id="unknown-distro-runfile"),
])
def test_12x_and_11x_print_the_repository_command(root: Path, os_release: str | None, version: str,
                                                  command: str) -> None:
    if os_release:
        (root / "etc").mkdir()
        (root / "etc/os-release").write_text(os_release)
    v = CudaVersion.parse(version)
    result = cli(root, "cuda", "install", version)
    assert result.exit_code == 1
    first, hint = result.stderr.splitlines()
    assert first == (f"error: CUDA {v} cannot be installed from PyPI wheels: NVIDIA's {v.major}.x wheels "
                     f"(nvidia-cuda-nvcc-cu{v.major}) carry ptxas and libnvvm but no nvcc")
    assert hint.startswith("hint: ") and command in hint
    assert hint.endswith(f"then `provision --root {root} cuda switch {v.short}`")
    assert "Traceback" not in result.output
    assert os.listdir(root / "usr/local") == []


def test_ubuntu_hint_names_the_keyring_for_the_release(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
    assert "the `cuda-keyring` package for ubuntu2404" in cuda_install.repository_command(
        CudaVersion(12, 6), root)


def test_dry_run_prints_the_plan_and_changes_nothing(root: Path, tmp_path: Path) -> None:
    result = cli(root, "cuda", "install", "13.1", "--prefix", "/opt/cuda13", "--dry-run",
                 env={"PROVISION_CUDA_WHEEL_CACHE": str(tmp_path / "wheels")})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Install CUDA 13.1 from NVIDIA's wheels into /opt/cuda13:\n")
    assert "nvidia-cuda-nvcc==13.1.* nvidia-cuda-runtime==13.1.* nvidia-cuda-crt==13.1.* " \
           "nvidia-nvvm==13.1.* nvidia-cuda-cccl==13.1.*" in result.stdout
    assert f"(wheels from {tmp_path / 'wheels'}" in result.stdout
    assert "rename it to /opt/cuda13 (atomic" in result.stdout
    assert not (root / "opt").exists() and not (tmp_path / "wheels").exists()


def test_dry_run_json(root: Path) -> None:
    result = cli(root, "cuda", "install", "13.1.115", "--dry-run", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc == {"version": 1, "dry_run": True, "cuda_version": "13.1.115", "prefix": "/usr/local/cuda-13.1",
                   "requirements": ["nvidia-cuda-nvcc==13.1.115", "nvidia-cuda-runtime==13.1.*",
                                    "nvidia-cuda-crt==13.1.*", "nvidia-nvvm==13.1.*", "nvidia-cuda-cccl==13.1.*"],
                   "wheel_cache": None}


def test_no_permission_is_refused_with_sudo_hint(root: Path) -> None:
    """A real EACCES: see helpers_cuda.unprivileged for how root is made to face one."""
    (root / "usr/local").chmod(0o555)
    try:
        done = subprocess.run(unprivileged(provision_argv(root, "cuda", "install", "13.1")),
                              capture_output=True, text=True)
    finally:
        (root / "usr/local").chmod(0o755)
    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines() == [
        "error: cannot create /usr/local/cuda-13.1: /usr/local is not writable by this user",
        f"hint: re-run with sudo: `sudo provision --root {root} cuda install 13.1`"]
    assert os.listdir(root / "usr/local") == []


def test_failed_check_leaves_nothing_behind(root: Path) -> None:
    """Real wheels, but no host compiler on PATH: nvcc cannot compile, so nothing may appear."""
    result = cli(root, "cuda", "install", "13.0", "--wheel-cache", str(WHEEL_CACHE),
                 env={"PATH": str(root / "no-compilers-here")})
    assert result.exit_code == 1, result.output
    assert "error: the new toolkit's nvcc could not compile a trivial .cu file" in result.stderr
    assert "hint: nvcc needs a host C++ compiler on PATH: install g++" in result.stderr
    assert "Traceback" not in result.output
    assert os.listdir(root / "usr/local") == []


def test_unknown_13x_version_is_refused(root: Path, tmp_path: Path) -> None:
    """pip really asks the index, which has no 13.99 wheels."""
    result = cli(root, "cuda", "install", "13.99", "--wheel-cache", str(tmp_path / "wheels"))
    assert result.exit_code == 1, result.output
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: no NVIDIA wheels for CUDA 13.99 were found")
    assert "Traceback" not in result.output
    assert os.listdir(root / "usr/local") == []


@pytest.mark.parametrize("version, nvcc_pin", [
    pytest.param("13.1", "nvidia-cuda-nvcc==13.1.*", id="minor"),
    pytest.param("13.1.115", "nvidia-cuda-nvcc==13.1.115", id="exact"),
    pytest.param("cu130", "nvidia-cuda-nvcc==13.0.*", id="tag"),
])
def test_requirements_pin_one_release(version: str, nvcc_pin: str) -> None:
    reqs = cuda_install.requirements(CudaVersion.parse(version))
    assert reqs[0] == nvcc_pin and len(reqs) == len(cuda_install.WHEELS)
    assert all(r.split("==")[1].startswith(CudaVersion.parse(version).short + ".") for r in reqs)


@pytest.mark.parametrize("prefix", ["/usr/local/cuda", "/usr/local/cuda/"])
def test_prefix_at_the_switch_link_is_refused(root: Path, prefix: str) -> None:
    result = cli(root, "cuda", "install", "13.0", "--prefix", prefix)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --prefix /usr/local/cuda is the link `cuda switch` manages")
    assert f"hint: install it as /usr/local/cuda-13.0 (`provision --root {root} cuda install 13.0`)" in result.stderr
    assert "Traceback" not in result.output
    assert os.listdir(root / "usr/local") == []


def test_wheel_cache_under_a_file_is_refused(root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "wheels"
    blocker.write_text("not a directory")
    cache = blocker / "cuda"  # Click accepts the path; creating it fails for real
    result = cli(root, "cuda", "install", "13.0", "--wheel-cache", str(cache))
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"error: cannot use {cache} as the wheel cache: Not a directory",
        "hint: pass --wheel-cache (or PROVISION_CUDA_WHEEL_CACHE) a directory you may write, or leave it out"]
    assert "Traceback" not in result.output
    assert os.listdir(root / "usr/local") == [] and blocker.read_text() == "not a directory"
