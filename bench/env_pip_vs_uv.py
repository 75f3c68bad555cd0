"""Build the same cpu-profile environment with pip and with uv (`provision env create --installer`).

Usage: .venv/bin/python bench/env_pip_vs_uv.py [--keep] [--work DIR]
Both builds take torch 2.13.0+cpu from the local wheel folder (PIP_FIND_LINKS or --find-links) and
run with the pip/uv caches as they are (warm after the first run). Prints each step's time, the
install time (create + torch + packages), the total (with the verify checks), and pip/uv ratios.
uv must be on PATH or next to this interpreter (the test extra installs it).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEP = re.compile(r"^\[\d+/\d+\] (?P<title>.+): done in (?P<seconds>[\d.]+) s$")
INSTALL_STEPS = ("create the venv", "install torch", "install packages")


def build(installer: str, work: Path, find_links: list[str]) -> tuple[float, dict[str, float]]:
    home = work / f"home-{installer}"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"),
               XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"))
    # the throwaway HOME must not mean cold caches: keep the user's pip and uv caches
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env.setdefault("PIP_CACHE_DIR", str(cache / "pip"))
    env.setdefault("UV_CACHE_DIR", str(cache / "uv"))
    uv_dir = Path(shutil.which("uv") or Path(sys.executable).parent / "uv").parent
    env["PATH"] = os.pathsep.join([str(uv_dir), env.get("PATH", "")])
    args = [sys.executable, "-m", "provisioner", "--root", str(work / "root"), "env", "create",
            "--profile", "cpu", "--prefix", str(work / f"env-{installer}"), "--installer", installer]
    for link in find_links:
        args += ["--find-links", link]
    start = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True)
    total = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{installer} build failed:\n{done.stdout}\n{done.stderr}")
    steps = {}
    for line in done.stderr.splitlines():
        m = STEP.match(line.strip())
        if m:
            steps[m["title"]] = float(m["seconds"])
    return total, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the two environments")
    parser.add_argument("--find-links", action="append", default=[],
                        help="wheel folder holding torch 2.13.0+cpu (default: $PIP_FIND_LINKS)")
    opts = parser.parse_args()
    work = opts.work or Path(tempfile.mkdtemp(prefix="provision-bench-"))
    (work / "root").mkdir(parents=True, exist_ok=True)
    try:
        results = {name: build(name, work, opts.find_links) for name in ("pip", "uv")}
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    titles = list(dict.fromkeys(t for _, steps in results.values() for t in steps))
    print(f"{'step':<24}{'pip':>9}{'uv':>9}")
    for title in titles:
        print(f"{title:<24}" + "".join(f"{results[n][1].get(title, 0.0):8.1f}s" for n in ("pip", "uv")))
    install = {n: sum(results[n][1].get(t, 0.0) for t in INSTALL_STEPS) for n in results}
    total = {n: results[n][0] for n in results}
    print(f"{'install (3 steps)':<24}{install['pip']:8.1f}s{install['uv']:8.1f}s"
          f"   pip/uv = {install['pip'] / install['uv']:.1f}x")
    print(f"{'env create, wall':<24}{total['pip']:8.1f}s{total['uv']:8.1f}s"
          f"   pip/uv = {total['pip'] / total['uv']:.1f}x")


if __name__ == "__main__":
    main()
