"""provision.lock.json: built from an environment's facts, read back, and judged against a machine."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner import profiles
from provisioner.env import lock
from provisioner.env.choose import GpuFact, MachineFacts
from provisioner.errors import ProvisionError
from provisioner.versions import CudaVersion, DriverVersion

NO_GPU = MachineFacts()
PASCAL_580 = MachineFacts("ok", DriverVersion.parse("580.95.05"), CudaVersion.parse("13.0"),
                          (GpuFact(0, "GTX 1080 Ti", (6, 1)),))
ADA_535 = MachineFacts("ok", DriverVersion.parse("535.183.01"), CudaVersion.parse("12.2"),
                       (GpuFact(0, "RTX 4060", (8, 9)),))
ADA_470 = MachineFacts("ok", DriverVersion.parse("470.256.02"), CudaVersion.parse("11.4"),
                       (GpuFact(0, "RTX 4060", (8, 9)),))


def make_lock(tmp_path: Path, profile_name: str, **indexes: object) -> Path:
    profile = profiles.get(profile_name, {"HOME": str(tmp_path)})
    found = lock.Installed("3.11.7", {"torch": f"2.13.0+{profile.variant}", "transformers": "5.24.0",
                                      "pip": "24.0", "numpy": "2.4.6"})
    doc = lock.build(profile=profile, torch_requirements=[f"torch==2.13.0+{profile.variant}"],
                     found=found, facts=PASCAL_580, backend="venv", installer="uv",
                     prefix=tmp_path / "env", torch_index_url=profile.torch_index_url,
                     index_url=str(indexes.get("index_url") or "") or None,
                     extra_index_urls=list(indexes.get("extra", [])),  # type: ignore[call-overload]
                     find_links=["/srv/wheels"])
    return lock.write(tmp_path, doc)


def test_round_trip(tmp_path: Path) -> None:
    path = make_lock(tmp_path, "cu126")
    assert path.name == "provision.lock.json"
    got = lock.read(path)
    assert got.profile_name == "cu126" and got.variant == "cu126" and got.cuda == CudaVersion.parse("12.6")
    assert got.torch_requirements == ("torch==2.13.0+cu126",)
    # pip is installer plumbing: recorded, never pinned
    assert got.requirements() == ["numpy==2.4.6", "transformers==5.24.0"]
    assert got.machine["gpus"] == [{"index": 0, "name": "GTX 1080 Ti", "cc": "6.1"}]
    prof = got.as_profile()
    assert str(prof.torch) == "2.13.0" and prof.variant == "cu126"
    # verify checks the profile's own packages, now pinned to what was installed
    assert {k: str(v) for k, v in prof.packages.items()} == {"transformers": "==5.24.0"}
    assert prof.supports_cc((6, 1))


def test_credentials_never_reach_the_lock(tmp_path: Path) -> None:
    path = make_lock(tmp_path, "cpu", index_url="https://alice:s3cret@mirror.internal/simple",
                     extra=["https://token@other.internal/simple"])
    text = path.read_text()
    assert "s3cret" not in text and "token@" not in text
    assert json.loads(text)["indexes"]["index_url"] == "https://***@mirror.internal/simple"


@pytest.mark.parametrize(("profile_name", "machine", "problem"), [
    pytest.param("cu126", NO_GPU, "no usable NVIDIA GPU/driver", id="cuda-lock-no-gpu"),
    pytest.param("cu126", ADA_470, "needs driver >= 525.60.13, this machine has 470.256.02",
                 id="cuda-lock-old-driver"),
    pytest.param("cu130", PASCAL_580, "has no kernels for sm_61 (GPU 0 GTX 1080 Ti)", id="cu130-pascal"),
    pytest.param("cu130", ADA_535, "needs driver >= 580.65.06", id="cu130-driver-535"),
])
def test_lock_refused_where_it_cannot_run(tmp_path: Path, profile_name: str, machine: MachineFacts,
                                          problem: str) -> None:
    problems = lock.check_runnable(lock.read(make_lock(tmp_path, profile_name)), machine)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(("profile_name", "machine"), [
    ("cpu", NO_GPU), ("cpu", PASCAL_580), ("cu126", PASCAL_580), ("cu126", ADA_535)])
def test_lock_accepted_where_it_runs(tmp_path: Path, profile_name: str, machine: MachineFacts) -> None:
    assert lock.check_runnable(lock.read(make_lock(tmp_path, profile_name)), machine) == []


@pytest.mark.parametrize(("content", "message"), [
    pytest.param("{not json", "not a JSON lock file", id="not-json"),
    pytest.param('{"version": 7}', "not a provision lock (version 1)", id="wrong-version"),
    pytest.param('{"version": 1, "profile": {}}', "invalid lock file: missing key 'torch.requirements'",
                 id="missing-key"),
])
def test_bad_lock_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ProvisionError) as e:
        lock.read(path)
    assert message in e.value.message
    assert e.value.hint == "export it again with `provision env export --output FILE`"


def test_torch_pin_must_be_exact(tmp_path: Path) -> None:
    path = make_lock(tmp_path, "cpu")
    doc = json.loads(path.read_text())
    doc["torch"]["requirements"] = ["torch>=2.13"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ProvisionError, match="invalid lock file"):
        lock.read(path)


def test_installed_reads_metadata_of_a_real_env(bare_env_python: Path) -> None:
    found = lock.installed(bare_env_python)
    assert found.python.startswith("3.")
    assert found.version("pip") is not None and found.version("torch") is None
