"""pylock.toml (PEP 751) beside the lock, written by the real uv; `--from-lock` rebuilds from it with
every hash checked by the installer itself (uv natively, pip in its hash-checking mode); uv's own
`--torch-backend` where it means the profile's index."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from provisioner import fsio
from provisioner.env import pylock
from provisioner.env.choose import GpuFact, MachineFacts
from provisioner.env.plan import CreateOptions, plan_create, uv_torch_backends
from provisioner.errors import ProvisionError
from provisioner.versions import CudaVersion, DriverVersion
from tests.fixtures_env import BuiltEnv, isolated_environ, run_provision, uv_dir

ADA_580 = MachineFacts("ok", DriverVersion.parse("580.95.05"), CudaVersion.parse("13.0"),
                       (GpuFact(0, "RTX 4060", (8, 9)),))
UV = uv_dir() / "uv"


def record_hashes(prefix: Path) -> dict[str, dict[str, str]]:
    """Every installed distribution's files and their sha256, from its RECORD (what the wheel held)."""
    out: dict[str, dict[str, str]] = {}
    for record in prefix.glob("lib/python3*/site-packages/*.dist-info/RECORD"):
        rows = {}
        for line in record.read_text().splitlines():
            path, digest, _size = line.rsplit(",", 2)
            # the installer's own bookkeeping (and pip's compiled .pyc, and console scripts whose
            # first line names the environment's python) differ by prefix and installer; the wheel's
            # files do not
            if digest and not path.endswith(("INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json", "RECORD", ".pyc")) \
                    and "/bin/" not in path:
                rows[path] = digest
        out[record.parent.name] = rows
    return out


# --- the pylock.toml of a real environment ------------------------------------------------------


def test_build_writes_a_pylock_with_urls_and_hashes(cpu_env: BuiltEnv) -> None:
    doc = json.loads((cpu_env.prefix / "provision.lock.json").read_text())
    target = cpu_env.prefix / pylock.PYLOCK_NAME
    assert doc["pylock"] == {"file": "pylock.toml", "sha256": fsio.sha256_file(target)}
    locked = pylock.read(target)
    # every distribution the environment holds (pip aside, a uv venv has none) is in it, same version
    want = {**doc["packages"], "torch": doc["torch"]["requirements"][0].split("==")[1]}
    assert {canonicalize_name(k): v for k, v in locked.versions().items()} == \
        {canonicalize_name(k): v for k, v in want.items()}
    for p in locked.packages:
        assert p.hashes and all(h.startswith("sha256:") and len(h) == 7 + 64 for h in p.hashes), p
        assert p.urls and all(u for u in p.urls), p
    torch = next(p for p in locked.packages if p.name == "torch")
    # the CPU build came from the local wheel folder; the lock names that very file and its hash
    wheel = Path(torch.urls[0].removeprefix("file://"))
    assert wheel.name.startswith("torch-2.13.0+cpu-") and f"sha256:{fsio.sha256_file(wheel)}" in torch.hashes


def test_hashed_requirements_is_one_line_per_package(cpu_env: BuiltEnv) -> None:
    locked = pylock.read(cpu_env.prefix / pylock.PYLOCK_NAME)
    lines = pylock.hashed_requirements(locked).splitlines()
    assert len(lines) == len(locked.packages)
    assert all(" --hash=sha256:" in line and "==" in line.split()[0] for line in lines)


@pytest.mark.parametrize(("text", "message"), [
    ("not = [toml", "not a TOML file"),
    ('lock-version = "2.0"\n', "not a PEP 751 lock"),
    ('lock-version = "1.0"\n[[packages]]\nversion = "1"\n', "has no name or version"),
])
def test_bad_pylock_files(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "pylock.toml"
    bad.write_text(text)
    with pytest.raises(ProvisionError, match=message):
        pylock.read(bad)


# --- rebuilding from it -------------------------------------------------------------------------


@pytest.fixture
def exported(cpu_env: BuiltEnv, tmp_path: Path) -> Path:
    out = tmp_path / "lock" / "llm.lock.json"
    done = cpu_env.run("env", "export", "--prefix", str(cpu_env.prefix), "--output", str(out), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["pylock"] == str(out.parent / "pylock.llm.toml")
    assert json.loads(out.read_text())["pylock"]["file"] == "pylock.llm.toml"
    return out


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_from_lock_rebuilds_identical_wheels(cpu_env: BuiltEnv, exported: Path, tmp_path: Path,
                                             installer: str) -> None:
    prefix = tmp_path / "rebuilt"
    env = isolated_environ(tmp_path / "home", uv=True)
    done = run_provision(["--root", str(cpu_env.root), "env", "create", "--prefix", str(prefix),
                          "--from-lock", str(exported), "--installer", installer], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "install from pylock.toml" in done.stdout
    if installer == "pip":
        assert "--require-hashes" in done.stdout         # pip checks every hash itself
        assert not (prefix / ".provision-pylock-requirements.txt").exists()
    else:
        assert f"{UV} pip sync --python" in done.stdout
    # the same wheels, byte for byte: every file of every distribution has the same sha256
    original, rebuilt = record_hashes(cpu_env.prefix), record_hashes(prefix)
    assert {k: v for k, v in rebuilt.items() if not k.startswith("pip-")} == original   # pip seeds its venv with pip
    # and the new environment's pylock is the one it was built from
    assert pylock.read(prefix / "pylock.toml").hashes() == pylock.read(cpu_env.prefix / "pylock.toml").hashes()
    again = json.loads((prefix / "provision.lock.json").read_text())
    assert again["pylock"]["sha256"] == fsio.sha256_file(exported.parent / "pylock.llm.toml")


def test_a_changed_pylock_is_refused_before_anything_happens(cpu_env: BuiltEnv, exported: Path,
                                                             tmp_path: Path) -> None:
    locked = exported.parent / "pylock.llm.toml"
    locked.write_text(locked.read_text().replace('name = "filelock"', 'name = "filelock"\n# edited'))
    prefix = tmp_path / "rebuilt"
    done = run_provision(["--root", str(cpu_env.root), "env", "create", "--prefix", str(prefix),
                          "--from-lock", str(exported)], isolated_environ(tmp_path / "home"))
    assert done.returncode != 0
    assert "has changed since the lock" in done.stderr and "Traceback" not in done.stderr
    assert not prefix.exists()


def test_a_tampered_hash_is_caught_by_uv(cpu_env: BuiltEnv, exported: Path, tmp_path: Path) -> None:
    """The lock and its pylock agree, but a wheel's hash is not the wheel's: uv refuses to install it."""
    locked = exported.parent / "pylock.llm.toml"
    text = locked.read_text()
    torch_hash = next(p for p in pylock.read(locked).packages if p.name == "torch").hashes[0].split(":")[1]
    locked.write_text(text.replace(torch_hash, "0" * 64))
    doc = json.loads(exported.read_text())
    doc["pylock"]["sha256"] = fsio.sha256_file(locked)
    exported.write_text(json.dumps(doc))
    prefix = tmp_path / "rebuilt"
    done = run_provision(["--root", str(cpu_env.root), "env", "create", "--prefix", str(prefix),
                          "--from-lock", str(exported)], isolated_environ(tmp_path / "home"))
    assert done.returncode != 0
    assert "installing from the lock's pylock.toml failed" in done.stderr
    assert "hash" in done.stderr.lower() and "0" * 64 in done.stderr     # uv's own words, with the hash
    record = json.loads((prefix / "provision-env.json").read_text())
    assert record["status"] == "building"                                 # never marked complete


def test_pylock_failure_never_fails_a_finished_build(tmp_path: Path) -> None:
    """No uv anywhere: the environment is built with pip and complete; its lock says why there is no
    pylock.toml."""
    env = isolated_environ(tmp_path / "home", uv=False)
    root = tmp_path / "root"
    root.mkdir()
    prefix = tmp_path / "env"
    done = run_provision(["--root", str(root), "env", "create", "--prefix", str(prefix), "--profile", "cpu",
                          "--installer", "pip"], env)
    assert done.returncode == 0, done.stderr
    doc = json.loads((prefix / "provision.lock.json").read_text())
    assert doc["pylock"] == {"file": None, "error": "uv is not on PATH (it writes pylock.toml)"}
    assert "warning: no pylock.toml written" in done.stdout + done.stderr
    assert not (prefix / "pylock.toml").exists()


# --- uv's --torch-backend -----------------------------------------------------------------------


def _plan(tmp_path: Path, **options: object) -> list[list[str]]:
    environ = isolated_environ(tmp_path / "home", base={k: v for k, v in os.environ.items()
                                                        if not k.startswith("PIP_")})
    plan = plan_create(CreateOptions(prefix=tmp_path / "env", **options),  # type: ignore[arg-type]
                       root=tmp_path, environ=environ, facts=ADA_580)
    return [list(s.argv) for s in plan.steps if s.key in ("torch", "packages")]


def test_uv_installs_torch_with_its_torch_backend(tmp_path: Path) -> None:
    torch, packages = _plan(tmp_path, profile="cu126", installer="uv")
    assert torch[torch.index("--torch-backend") + 1] == "cu126"
    assert "--index-url" not in torch and "unsafe-best-match" not in torch
    assert packages[packages.index("--torch-backend") + 1] == "cu126"


@pytest.mark.parametrize("options", [
    {"installer": "pip"},                                                 # pip has no such option
    {"installer": "uv", "index_url": "https://mirror.example/whl/cu126"},  # a mirror: uv's tag means another index
])
def test_torch_backend_only_where_it_means_the_profiles_index(tmp_path: Path, options: dict[str, str]) -> None:
    torch, _ = _plan(tmp_path, profile="cu126", **options)
    assert "--torch-backend" not in torch
    assert torch[torch.index("--index-url") + 1] == options.get("index_url", "https://download.pytorch.org/whl/cu126")


def test_the_backend_list_comes_from_uv_itself() -> None:
    tags = uv_torch_backends(UV, os.environ)
    assert {"cpu", "cu126", "cu128"} <= tags
    assert not uv_torch_backends(Path(shutil.which("true") or "/bin/true"), os.environ)


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare(1) for a network-less namespace")
def test_real_uv_sends_torch_to_the_pytorch_index(tmp_path: Path) -> None:
    """The planned torch step, run by the real uv with no network: the first URL it needs is the
    PyTorch cu126 index's torch page, i.e. uv routed torch there."""
    torch, _ = _plan(tmp_path, profile="cu126", installer="uv")
    subprocess.run([str(UV), "venv", "--quiet", str(tmp_path / "env")], check=True)
    env = dict(os.environ, UV_HTTP_RETRIES="0", UV_NO_CACHE="1", PIP_FIND_LINKS="")
    probe = subprocess.run(["unshare", "-n", *torch], capture_output=True, text=True, env=env, timeout=120)
    if probe.returncode != 0 and "unshare" in probe.stderr and "Operation not permitted" in probe.stderr:
        pytest.skip("network namespaces are not permitted here")
    assert probe.returncode != 0
    assert "whl/cu126/torch" in probe.stderr, probe.stderr
