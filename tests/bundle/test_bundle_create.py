"""`bundle create` for a machine that is not this one, without downloading (--dry-run), its errors, and an
interrupted create resumed by the next run.

The PyTorch indexes cannot be reached from the test machines or CI (only the package registries can),
so the torch builds come from a local PyTorch-like index (tests/bundle/pyindex.py: PEP 503 pages on
127.0.0.1 with small real wheels labelled like PyTorch's and their PEP 658 metadata) given as
--index-url; everything else (transformers, the CUDA runtime wheel torch's metadata names, provision's
own dependencies) is resolved from the package registry, as in a real run.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from provisioner.units import human_bytes
from tests.bundle.pyindex import IndexWheel, PyIndex, make_wheel
from tests.fixtures_env import interrupt_at, isolated_environ, run_provision

CU126_TORCH = "torch-2.13.0+cu126-cp311-cp311-manylinux_2_28_x86_64.whl"


def test_a_cu126_bundle_for_another_platform_is_planned_without_downloading(pyindex_cu126: PyIndex,
                                                                           tmp_path: Path) -> None:
    """--profile cu126 --platform manylinux_2_28_x86_64 --python 3.11 --dry-run on this GPU-less machine: the
    plan names the cu126 torch wheel with its size; the index saw its metadata and a HEAD, never a GET of it."""
    environ = isolated_environ(tmp_path / "home")
    out = tmp_path / "bundle"
    args = ["bundle", "create", "--profile", "cu126", "--platform", "manylinux_2_28_x86_64", "--python", "3.11",
            "--index-url", pyindex_cu126.url, "--allow-insecure-index", "-o", str(out), "--dry-run"]
    done = run_provision(["--json", *args], environ, timeout=600)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)["plan"]
    assert (plan["profile"], plan["python"], plan["platform"], plan["uv_platform"]) == (
        "cu126", "3.11", "manylinux_2_28_x86_64", "x86_64-manylinux_2_28")
    wheels = {w["name"]: w for w in plan["wheels"]}
    torch = pyindex_cu126.wheels[0]
    assert wheels["torch"]["file"] == f"wheels/{CU126_TORCH}"
    assert (wheels["torch"]["size"], wheels["torch"]["sha256"]) == (len(torch.data), torch.sha256)
    assert wheels["torchvision"]["version"] == "0.28.0+cu126"
    assert wheels["nvidia-cuda-runtime-cu12"]["version"] == "12.6.77"       # torch's cu126 dependency
    assert {"transformers", "accelerate", "bitsandbytes"} <= set(wheels)
    assert plan["fetch_bytes"] >= sum(w["size"] or 0 for w in plan["wheels"])
    assert pyindex_cu126.gets(CU126_TORCH) == [] and pyindex_cu126.gets(CU126_TORCH + ".metadata") == [None]
    assert not out.exists()

    text = run_provision(args, environ, timeout=600)
    assert text.returncode == 0, text.stderr
    assert f"  + {CU126_TORCH}  {human_bytes(len(torch.data))}" in text.stdout
    assert "Total to fetch: " in text.stdout and "Python 3.11, manylinux_2_28_x86_64" in text.stdout


def test_no_wheel_for_the_target_is_said_with_package_and_platform(pyindex_cu126: PyIndex, tmp_path: Path) -> None:
    environ = isolated_environ(tmp_path / "home")
    done = run_provision(["bundle", "create", "--profile", "cu126", "--platform", "manylinux_2_28_aarch64",
                          "--index-url", pyindex_cu126.url, "--allow-insecure-index", "--dry-run"], environ, timeout=600)
    assert done.returncode == 1
    assert "error: no wheel of torch" in done.stderr and "exists for manylinux_2_28_aarch64" in done.stderr, done.stderr
    assert "manylinux_2_28_x86_64" in done.stderr          # uv's hint: where wheels do exist
    assert "Traceback" not in done.stderr
    bad = run_provision(["bundle", "create", "--profile", "cu126", "--platform", "win_amd64", "--dry-run"], environ)
    assert bad.returncode == 2 and "is not a Linux wheel platform tag" in bad.stderr


TINY_PROFILE = """\
name: tinytorch
description: "A test profile: one small torch-like wheel from a local index, no other package."
cuda: null
python: "3.11"
torch:
  version: "0.0.1"
  index_url: {url}
  torchvision: null
  torchaudio: null
packages: {{}}
driver_min: null
compute_capabilities: []
ptx: null
sources:
  python: test
  torch: test
  packages: test
"""
KIB = 1024


def _kill_mid_file(argv: list[str], env: dict[str, str], part: Path, at: int, sig: signal.Signals,
                   log: Path) -> tuple[int, str]:
    """Run `provision ARGV`; once `part` holds `at` bytes (the index holds the connection there), send `sig`
    to its process group, as a terminal's Ctrl-C does (SIGINT) or a kill -9 (SIGKILL)."""
    return interrupt_at(argv, env, lambda: part.is_file() and part.stat().st_size >= at, sig, log)


@pytest.mark.slow
def test_an_interrupted_create_resumes_and_fetches_only_what_is_missing(tmp_path: Path) -> None:
    """A tar bundle of a small profile: Ctrl-C (SIGINT) in the middle of the torch wheel, then SIGKILL in the
    middle of the rest of it; the third run continues the file from its last byte (Range), fetches nothing
    it already had, and writes the tar, which verifies and lists."""
    payload = 600 * KIB
    filename, data, metadata = make_wheel("torch", "0.0.1+cpu", "py3-none-any", [], payload=payload)
    wheel = IndexWheel("torch", filename, data, metadata, stall_at=[200 * KIB, 400 * KIB])
    index = PyIndex([wheel])
    index.start()
    try:
        home = tmp_path / "home"
        profiles = home / ".config" / "provision" / "profiles"
        profiles.mkdir(parents=True)
        (profiles / "tinytorch.yaml").write_text(TINY_PROFILE.format(url=index.url))
        environ = isolated_environ(home)
        environ.update(PIP_CONFIG_FILE="/dev/null")        # no wheel folder from this machine's pip configuration
        environ.pop("PIP_FIND_LINKS", None)
        tar = tmp_path / "tiny.tar"
        staging = tmp_path / "tiny.tar.partial"
        part = staging / "wheels" / f"{filename}.part"
        args = ["bundle", "create", "--profile", "tinytorch", "--allow-insecure-index", "-o", str(tar)]

        code, err = _kill_mid_file(args, environ, part, 200 * KIB, signal.SIGINT, tmp_path / "run1.txt")
        assert code == 130 and "error: interrupted" in err and "Traceback" not in err, err
        assert part.stat().st_size == 200 * KIB and not tar.exists()
        before = {p.name: p.stat().st_ino for p in (staging / "wheels").glob("*.whl")}
        assert before, "the larger wheels (provision's dependencies) come first and are complete"
        index.release()

        code, err = _kill_mid_file(args, environ, part, 400 * KIB, signal.SIGKILL, tmp_path / "run2.txt")
        assert code == -signal.SIGKILL and part.stat().st_size == 400 * KIB
        assert f"{len(before)} already in the bundle" in err, err
        index.release()

        done = run_provision(args, environ, timeout=600)
        assert done.returncode == 0, done.stderr
        assert f"resumed {filename} at 400.0 KiB" in done.stderr
        assert index.gets(filename) == [None, f"bytes={200 * KIB}-", f"bytes={400 * KIB}-"]
    finally:
        index.stop()
    assert tar.is_file() and not staging.exists()
    checked = run_provision(["--json", "bundle", "verify", str(tar)], environ)
    assert checked.returncode == 0, checked.stdout
    listed = json.loads(run_provision(["--json", "bundle", "list", str(tar)], environ).stdout)["manifest"]
    files = {f["path"]: f for f in listed["files"]}
    assert files[f"wheels/{filename}"]["size"] == len(data)
    assert {f"wheels/{name}" for name in before} <= set(files)       # the first run's wheels made it in
    assert listed["profile"]["name"] == "tinytorch" and listed["model"] is None
    # a tar is unpacked once into the data dir and planned from there, offline
    plan = run_provision(["--json", "env", "create", "--bundle", str(tar), "--prefix", str(tmp_path / "env"),
                          "--dry-run"], environ)
    assert plan.returncode == 0, plan.stderr
    unpacked = home / ".local" / "share" / "provision" / "bundles"
    assert [p.name for p in unpacked.iterdir() if p.is_dir()] == [checked_sha(checked.stdout)[:16]]
    # a damaged copy of the same tar is refused, although its intact twin was unpacked before
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    refused = run_provision(["env", "create", "--bundle", str(damaged), "--prefix", str(tmp_path / "env"),
                             "--dry-run"], environ)
    assert refused.returncode == 1 and f"error: bundle {damaged} failed verification" in refused.stderr, refused.stderr


def checked_sha(verify_json: str) -> str:
    return str(json.loads(verify_json)["bundle"]["manifest_sha256"])
