"""Build the same cpu-profile environment with pip and with uv (`provision env create --installer`),
cold (empty pip and uv caches of their own) and repeated (the caches the cold build filled).

Usage: .venv/bin/python bench/env_pip_vs_uv.py [--keep] [--work DIR]
Every build takes torch 2.13.0+cpu from the local wheel folder (PIP_FIND_LINKS or --find-links).
Prints each step's time, the install time (create + torch + packages), the total (with the verify
checks), and uv/pip ratios; the last lines are RESULT lines for bench/run.sh.
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


def build(installer: str, work: Path, find_links: list[str], run: str) -> tuple[float, dict[str, float]]:
    home = work / f"home-{installer}-{run}"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"),
               XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"))
    # caches of this bench's own: empty for the cold build, filled by it for the repeat
    env["PIP_CACHE_DIR"] = str(work / f"cache-{installer}" / "pip")
    env["UV_CACHE_DIR"] = str(work / f"cache-{installer}" / "uv")
    uv_dir = Path(shutil.which("uv") or Path(sys.executable).parent / "uv").parent
    env["PATH"] = os.pathsep.join([str(uv_dir), env.get("PATH", "")])
    args = [sys.executable, "-m", "provisioner", "--root", str(work / "root"), "env", "create",
            "--profile", "cpu", "--prefix", str(work / f"env-{installer}-{run}"), "--installer", installer]
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
    runs = ("cold", "repeat")
    try:
        results = {(name, run): build(name, work, opts.find_links, run) for run in runs for name in ("pip", "uv")}
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    cols = [(n, r) for r in runs for n in ("pip", "uv")]
    titles = list(dict.fromkeys(t for _, steps in results.values() for t in steps))
    print(f"{'step':<24}" + "".join(f"{n + ' ' + r:>13}" for n, r in cols))
    for title in titles:
        print(f"{title:<24}" + "".join(f"{results[c][1].get(title, 0.0):12.1f}s" for c in cols))
    install = {c: sum(results[c][1].get(t, 0.0) for t in INSTALL_STEPS) for c in cols}
    total = {c: results[c][0] for c in cols}
    print(f"{'install (3 steps)':<24}" + "".join(f"{install[c]:12.1f}s" for c in cols))
    print(f"{'env create, wall':<24}" + "".join(f"{total[c]:12.1f}s" for c in cols))
    for run in runs:
        uv, pip = total[("uv", run)], total[("pip", run)]
        print(f"RESULT\tenv create {run}: uv vs pip\t{uv:.2f}\t{pip:.2f}\t{uv / pip:.2f}\t-")


if __name__ == "__main__":
    main()
