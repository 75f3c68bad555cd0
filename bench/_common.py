"""Shared by the bench scripts: the torch environment to measure in, and medians of alternating runs.

Not a test helper: nothing here asserts a time. The scripts print medians and ratios.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = Path(os.environ.get("PROVISION_TEST_CACHE", REPO / ".cache" / "tests"))
TINY_MODEL = REPO / "tests" / "fixtures" / "tiny-qwen2"
#: The walkthrough's stack on the CPU torch build: the same pins as the test suite's chat env.
CHAT_ENV_REQUIREMENTS = ("torch==2.13.0", "transformers==5.24.0", "accelerate==1.15.0", "bitsandbytes==0.50.2")
PROVISION = [sys.executable, "-m", "provisioner"]

# Measure the tools as a user's machine runs them: with bytecode caches. A shell that sets
# PYTHONDONTWRITEBYTECODE (some containers do) would have provision, installed editable from this
# checkout, compile its modules on every start (about 60 ms of a repeated verify) while the
# anchors' installed packages have their .pyc files. The unmeasured first round writes them.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def cache_home(environ: Mapping[str, str]) -> Path:
    value = environ.get("XDG_CACHE_HOME", "")
    return Path(value) if value and Path(value).is_absolute() else Path(environ.get("HOME", str(Path.home()))) / ".cache"


def find_env(given: Path | None) -> Path:
    """The environment prefix to measure in: --env, else the test suite's chat env, else one built
    (once, with pip) under the XDG cache dir."""
    if given is not None:
        if not (given / "bin" / "python").exists():
            raise SystemExit(f"error: {given} has no bin/python")
        return given
    found = sorted(TEST_CACHE.glob("chat-env-*/bin/python"))
    if found:
        return found[0].parent.parent
    prefix = cache_home(os.environ) / "provision-bench" / "chat-env"
    python = prefix / "bin" / "python"
    if not (prefix / ".complete").exists():
        print(f"building the bench environment at {prefix} (torch first, pinned; once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(prefix)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, CHAT_ENV_REQUIREMENTS[0]], check=True)
        subprocess.run([*pip, *CHAT_ENV_REQUIREMENTS[1:]], check=True)
        (prefix / ".complete").write_text("ok\n")
    return prefix


def wall(argv: Sequence[str], environ: Mapping[str, str]) -> float:
    """Seconds from start to exit of one run; its output is discarded, a failure stops the bench."""
    t0 = time.perf_counter()
    done = subprocess.run(list(argv), env=dict(environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=900)
    seconds = time.perf_counter() - t0
    # verify exits 1 when a check fails (no GPU on the CI kind): a finding, not a broken run
    if done.returncode not in (0, 1):
        raise SystemExit(f"error: {' '.join(argv)} exited {done.returncode}\n{done.stderr[-2000:]}")
    return seconds


Case = tuple[Sequence[str], Callable[[], None] | None]   # argv, and what to do before each run


def alternate(cases: Mapping[str, Case], n: int, environ: Mapping[str, str]) -> dict[str, list[float]]:
    """One unmeasured round (page cache, .pyc files), then n rounds running each case in turn, so
    drift in the machine's load hits every case alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(n + 1):
        for name, (argv, before) in cases.items():
            if before is not None:
                before()
            seconds = wall(argv, environ)
            if i:
                times[name].append(seconds)
        if i:
            print(f"round {i}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), file=sys.stderr)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report(times: Mapping[str, Sequence[float]], *, base: str, against: str, header: str,
           targets: Mapping[str, str]) -> None:
    """Each case's median and its ratio to case `base`'s (named `against` in the lines), the targets,
    and one RESULT line per target for bench/run.sh."""
    reference = median(times[base])
    print(f"{header}  (median of {len(times[base])} alternating rounds)")
    for name, values in times.items():
        print(f"{name:<32} {median(values):6.2f} s   {median(values) / reference:5.2f}x {against}")
    print(f"target{'s' if len(targets) > 1 else ''}: " + ", ".join(f"{name} {t}x" for name, t in targets.items()))
    for name, target in targets.items():
        mine = median(times[name])
        print(f"RESULT\t{name} vs {against}\t{mine:.2f}\t{reference:.2f}\t{mine / reference:.2f}\t{target}")
