"""The offline side of a real cpu bundle (made once per session by the cpu_bundle fixture): it lists and
verifies; provision installs from it and `up --bundle` reaches the tiny model's reply with the network
really gone; a bundle with one byte changed, one file removed or its manifest edited is refused with
the file named and nothing installed."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.env import lock as lockmod
from provisioner.env import pylock as pylockmod
from tests.bundle.conftest import MODEL_ID, TINY_REPLY, MadeBundle, NoNetwork, copy_bundle, tool_python
from tests.fixtures_env import BuiltEnv, isolated_environ, run_provision

pytestmark = pytest.mark.slow


def _offline(no_network: NoNetwork, argv: list[str], environ: dict[str, str],
             timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*no_network.wrap, *argv], env={**environ, **no_network.environ}, capture_output=True,
                          text=True, timeout=timeout)


def test_a_cpu_bundle_installs_and_answers_with_no_network(cpu_bundle: MadeBundle, no_network: NoNetwork,
                                                           cpu_env: BuiltEnv, tmp_path: Path) -> None:
    """Connected side: `bundle create --profile cpu --model acme/tiny-qwen2` (the fixture). Offline side,
    each command cut off from the network (`no_network.how` says how this machine allowed it): provision
    itself installs from the bundle's wheels, then that provision runs `up --bundle` into a fresh prefix
    and the smoke chat gives the tiny model's known reply. The environment's lock is the one an online
    build of the profile writes (cpu_env): the same versions, every wheel's sha256 among the online pylock's."""
    bundle = cpu_bundle.path
    listed = json.loads(run_provision(["--json", "bundle", "list", str(bundle)], cpu_bundle.environ, check=True).stdout)
    manifest = listed["manifest"]
    assert (manifest["profile"]["name"], manifest["python"], manifest["torch"]) == ("cpu", "3.11", ["torch==2.13.0+cpu"])
    assert manifest["model"]["id"] == MODEL_ID and manifest["model"]["files"] >= 5
    paths = {f["path"] for f in manifest["files"]}
    assert {"pylock.toml", "lock/pylock.toml", "provision.lock.json", "profile.yaml", "model/config.json",
            "model/model.safetensors", "wheels/provision-0.1.0-py3-none-any.whl"} <= paths
    assert any(p.startswith("wheels/torch-2.13.0+cpu-cp311-") for p in paths)
    assert manifest["total_bytes"] == sum(f["size"] for f in manifest["files"])
    assert run_provision(["bundle", "verify", str(bundle)], cpu_bundle.environ).returncode == 0

    home, root, prefix = tmp_path / "home", tmp_path / "root", tmp_path / "envs" / "offline"
    home.mkdir(exist_ok=True)
    root.mkdir()
    environ = isolated_environ(home)
    environ["PIP_CONFIG_FILE"] = "/dev/null"
    python = tool_python(manifest["python"])
    # the bundled provision where this machine has the bundle's Python to install it into, else this checkout's
    provision = [sys.executable, "-m", "provisioner"] if python is None else [str(tmp_path / "tool" / "bin" / "provision")]
    if python is not None:
        # provision itself, from the bundle alone (pip: no index, the bundle's wheels only)
        made = _offline(no_network, [python, "-m", "venv", str(tmp_path / "tool")], environ)
        assert made.returncode == 0, made.stderr
        pip = _offline(no_network, [str(tmp_path / "tool" / "bin" / "pip"), "install", "--quiet", "--no-index",
                                    "--find-links", str(bundle / "wheels"), "provision"], environ)
        assert pip.returncode == 0, pip.stdout + pip.stderr

    up = _offline(no_network, [*provision, "--root", str(root), "up", "--bundle", str(bundle),
                               "--prefix", str(prefix), "--yes"], environ)
    assert up.returncode == 0, f"({no_network.how})\n{up.stdout}\n{up.stderr}"
    assert f"reply        {TINY_REPLY!r}" in up.stdout and "Traceback" not in up.stderr
    assert f"bundle {bundle}: verified" in up.stderr and "(created from bundle" in up.stderr
    assert f"model        {bundle / 'model'}" in up.stdout
    again = _offline(no_network, [*provision, "--root", str(root), "up", "--bundle", str(bundle), "--prefix",
                                  str(prefix), "--yes"], environ)
    assert again.returncode == 0 and "Nothing to do: every stage was already done" in again.stdout, again.stderr

    # the lock: what an online build of the profile writes
    offline = lockmod.read(prefix / "provision.lock.json")
    online = lockmod.read(cpu_env.prefix / "provision.lock.json")
    assert offline.torch_requirements == online.torch_requirements == ("torch==2.13.0+cpu",)
    assert dict(offline.packages) == dict(online.packages)
    doc = json.loads((prefix / "provision.lock.json").read_text())
    assert doc["profile"] == json.loads((cpu_env.prefix / "provision.lock.json").read_text())["profile"]
    assert (prefix / "pylock.toml").read_bytes() == (bundle / "lock" / "pylock.toml").read_bytes()
    assert doc["pylock"]["sha256"] == hashlib.sha256((prefix / "pylock.toml").read_bytes()).hexdigest()
    assert online.pylock is not None
    online_hashes = pylockmod.read(online.pylock).hashes()
    offline_hashes = pylockmod.read(prefix / "pylock.toml").hashes()
    shared = [name for name in offline_hashes if name in online_hashes and name != "torch"]
    assert shared
    for name in shared:
        assert set(offline_hashes[name]) & set(online_hashes[name]), name
    # and it is an environment verify accepts
    checked = _offline(no_network, [*provision, "--root", str(root), "--json", "verify",
                                    "--env", str(prefix)], environ)
    failed = [c for c in json.loads(checked.stdout)["checks"] if c["id"].startswith("env.") and c["status"] == "fail"]
    assert failed == []


def test_env_create_and_model_download_take_a_bundle_offline(cpu_bundle: MadeBundle, no_network: NoNetwork,
                                                             tmp_path: Path) -> None:
    """`env create --bundle` plans the install from the bundle's pylock.toml with no index (a dry run: the
    install itself is the test above); `model download --bundle` hands out (or copies) the verified model."""
    bundle = cpu_bundle.path
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environ = isolated_environ(home)
    argv = [sys.executable, "-m", "provisioner"]
    plan = _offline(no_network, [*argv, "--json", "env", "create", "--bundle", str(bundle), "--prefix",
                                 str(tmp_path / "env"), "--dry-run"], environ)
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    steps = {s["key"]: s for s in doc["plan"]["steps"]}
    assert list(steps) == ["create", "pylock", "verify", "record"]
    assert str(bundle / "pylock.toml") in steps["pylock"]["argv"]
    assert doc["plan"]["backend"] == "venv" and not (tmp_path / "env").exists()

    copied = _offline(no_network, [*argv, "--json", "model", "download", "--bundle", str(bundle), "--local-dir",
                                   str(tmp_path / "model")], environ)
    assert copied.returncode == 0, copied.stderr
    assert json.loads(copied.stdout)["model"] == MODEL_ID
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "model" / name).read_bytes() == (bundle / "model" / name).read_bytes()
    there = _offline(no_network, [*argv, "model", "download", "--bundle", str(bundle)], environ)
    assert there.returncode == 0 and f"{MODEL_ID}: in {bundle / 'model'}" in there.stdout

    refused = _offline(no_network, [*argv, "env", "create", "--bundle", str(bundle), "--profile", "cu126",
                                    "--dry-run"], environ)
    assert refused.returncode == 2 and "drop --profile" in refused.stderr


def _one_byte_changed(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _manifest_edited(path: Path) -> None:
    """A hand edit: another sha256 for one wheel (the body checksum is left as it was)."""
    doc = json.loads(path.read_text())
    doc["files"][0]["sha256"] = "0" * 64
    path.write_text(json.dumps(doc, indent=2))


def _wheel_swapped_and_manifest_rewritten(bundle: Path, rel: str) -> None:
    """A changed wheel whose manifest entry (sha256) and body checksum are rewritten to match it: every
    file then matches the manifest, and only the pylock, which the manifest lists, still disagrees."""
    from provisioner.bundle.manifest import body_sha256

    _one_byte_changed(bundle / rel)
    doc = json.loads((bundle / "manifest.json").read_text())
    entry = next(f for f in doc["files"] if f["path"] == rel)
    entry["sha256"] = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    doc["body_sha256"] = body_sha256(doc)
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2))


@pytest.mark.parametrize("damage", ["byte", "removed", "manifest-edited", "manifest-rewritten"])
def test_a_tampered_bundle_is_refused_naming_the_file(damage: str, cpu_bundle: MadeBundle, tmp_path: Path) -> None:
    source = cpu_bundle.path
    wheel = next(p for p in sorted((source / "wheels").iterdir()) if p.name.startswith("transformers-"))
    rel = f"wheels/{wheel.name}"
    if damage == "byte":
        bundle = copy_bundle(source, tmp_path / "b", copy=(rel,))
        _one_byte_changed(bundle / rel)
        named = f"{rel}: altered (sha256 "
    elif damage == "removed":
        rel = "model/model.safetensors"
        bundle = copy_bundle(source, tmp_path / "b", skip=rel)
        named = f"{rel}: missing"
    elif damage == "manifest-edited":
        bundle = copy_bundle(source, tmp_path / "b", copy=("manifest.json",))
        _manifest_edited(bundle / "manifest.json")
        named = "manifest.json: edited (its body no longer matches the body_sha256"
    else:
        bundle = copy_bundle(source, tmp_path / "b", copy=("manifest.json", rel))
        _wheel_swapped_and_manifest_rewritten(bundle, rel)
        named = f"{rel}: inconsistent (pylock.toml says sha256 "
    environ = cpu_bundle.environ
    checked = run_provision(["bundle", "verify", str(bundle)], environ)
    assert checked.returncode == 1 and "FAILED" in checked.stdout, checked.stdout + checked.stderr
    doc = json.loads(run_provision(["--json", "bundle", "verify", str(bundle)], environ).stdout)
    assert doc["ok"] is False and doc["bundle"]["problems"]

    prefix = tmp_path / "env"
    for argv in (["env", "create", "--bundle", str(bundle), "--prefix", str(prefix)],
                 ["up", "--bundle", str(bundle), "--prefix", str(prefix), "--yes"]):
        done = run_provision(["--root", str(tmp_path), *argv], environ)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"error: bundle {bundle} failed verification; nothing was installed:" in done.stderr
        assert named in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert not prefix.exists()
