"""Wall time of `provision --help` next to `python -c "import click"` (issue 2's start-up target).

Usage: .venv/bin/python bench/help_time.py [N]
Prints the median of N runs of each and their ratio; the target is a small constant factor,
which holds only while torch/transformers/huggingface_hub stay off the import path.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402,F401 - the environment the benches share (bytecode caches on)


def median_wall(argv: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    py = sys.executable
    median_wall([py, "-m", "provisioner", "--help"], 1)     # unmeasured: writes the .pyc files
    base = median_wall([py, "-c", "import click"], n)
    bare = median_wall([py, "-c", "pass"], n)
    help_ = median_wall([py, "-m", "provisioner", "--help"], n)
    print(f"python -c pass            {bare * 1000:7.1f} ms")
    print(f"python -c 'import click'  {base * 1000:7.1f} ms")
    print(f"provision --help          {help_ * 1000:7.1f} ms")
    print(f"ratio help/import-click   {help_ / base:7.2f}x")
    print(f"RESULT\tprovision --help vs python -c 'import click'\t{help_:.3f}\t{base:.3f}\t{help_ / base:.2f}\t<= 1.50")


if __name__ == "__main__":
    main()
