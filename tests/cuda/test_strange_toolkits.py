"""One strange toolkit folder must not stop the commands that work on the others: an unreadable folder
(a real EACCES, from a process without root's capabilities), an nvcc that prints bytes, an nvcc that hangs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers_cuda import link_cuda, make_toolkit, unprivileged

REPO = Path(__file__).resolve().parents[2]


def _provision(root: Path, *args: str, timeout: float = 120, drop_caps: bool = False,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "provisioner", "--root", str(root), *args]
    env = dict(os.environ, PROVISION_NVML_LIBRARY=str(root / "no-driver.so"), PATH="/usr/local/cuda/bin:/usr/bin:/bin",
               **(extra_env or {}))
    return subprocess.run(unprivileged(argv) if drop_caps else argv, capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_an_unreadable_toolkit_is_a_row_that_says_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    bad = make_toolkit(root, "12.8")
    link_cuda(root, "cuda-12.6")
    bad.chmod(0o000)
    try:
        listed = _provision(root, "cuda", "list", drop_caps=True)
        as_json = _provision(root, "--json", "cuda", "list", drop_caps=True)
        switched = _provision(root, "cuda", "switch", "12.8", drop_caps=True)
        verify = _provision(root, "--json", "verify", drop_caps=True)
    finally:
        bad.chmod(0o755)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr + switched.stderr + verify.stderr
    row = next(line for line in listed.stdout.splitlines() if "cuda-12.8" in line)
    assert "no: unreadable (Permission denied)" in row
    assert any("cuda-12.6" in line and "12.6.85" in line and line.rstrip().endswith("yes")
               for line in listed.stdout.splitlines())
    rows = {t["name"]: t for t in json.loads(as_json.stdout)["toolkits"]}
    assert rows["cuda-12.8"]["problem"] == "unreadable (Permission denied)" and rows["cuda-12.6"]["complete"]
    assert switched.returncode == 1 and "is unreadable (Permission denied); nothing was changed" in switched.stderr
    assert os.readlink(root / "usr/local/cuda") == "cuda-12.6"
    checks = {c["id"]: c for c in json.loads(verify.stdout)["checks"]}
    assert checks["cuda.link"]["status"] == "ok"


def test_an_nvcc_that_prints_bytes_is_garbled_output(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    odd = make_toolkit(root, "12.8", version_json=None, cuda_h=False)
    (odd / "bin" / "nvcc").write_bytes(b"#!/bin/sh\nprintf '\\377\\376\\001\\002 not a compiler \\200\\n'\n")
    listed = _provision(root, "--json", "cuda", "list")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    rows = {t["name"]: t for t in json.loads(listed.stdout)["toolkits"]}
    assert "printed no CUDA release (garbled output)" in rows["cuda-12.8"]["nvcc_error"]
    assert rows["cuda-12.6"]["version"] == "12.6.85"


def test_hanging_nvccs_cost_one_short_timeout_and_say_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    started = tmp_path / "started.log"
    for v in ("12.8", "12.9"):
        tk = make_toolkit(root, v, version_json=None, cuda_h=False)
        (tk / "bin" / "nvcc").write_text(f"#!/bin/sh\ndate +%s.%N >> {started}\nexec sleep 60\n")
    link_cuda(root, "cuda-12.6")
    listed = _provision(root, "--json", "cuda", "list", extra_env={"PROVISION_NVCC_TIMEOUT": "2"})
    assert listed.returncode == 0, listed.stderr
    rows = {t["name"]: t for t in json.loads(listed.stdout)["toolkits"]}
    for v in ("12.8", "12.9"):
        assert "timed out after 2 s" in rows[f"cuda-{v}"]["nvcc_error"]
    assert rows["cuda-12.6"]["version"] == "12.6.85"
    # side by side: the second hanging nvcc started before the first one's 2 s were up
    first, second = sorted(float(t) for t in started.read_text().split())
    assert second - first < 2
