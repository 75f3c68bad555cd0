"""Wall time of `provision verify --env E`, cold and repeated, next to `E/bin/python -m torch.utils.collect_env`.

Usage: .venv/bin/python bench/verify_time.py [--env PREFIX] [-n N]
E defaults to the test suite's chat env (torch 2.13.0 CPU, transformers, accelerate, bitsandbytes),
else one built once under the XDG cache dir. Cold: the env-probe cache is emptied before the run;
repeated: the cache a previous run filled is used. Runs alternate (collect_env, cold, repeated) and
the medians of N rounds are printed with their ratios (and RESULT lines for bench/run.sh).
Targets (issue 10): cold <= 1.0x, repeated <= 0.2x.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROVISION, alternate, find_env, report  # noqa: E402 - found through the line above


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", type=Path, help="environment prefix (default: the test suite's chat env)")
    p.add_argument("-n", type=int, default=7, help="measured rounds (default 7)")
    args = p.parse_args()
    prefix = find_env(args.env)
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as tmp:
        cache = Path(tmp) / "cache"
        environ = dict(os.environ, XDG_CACHE_HOME=str(cache), XDG_STATE_HOME=str(Path(tmp) / "state"))
        verify = [*PROVISION, "verify", "--env", str(prefix)]
        times = alternate({
            "collect_env": ([str(prefix / "bin" / "python"), "-m", "torch.utils.collect_env"], None),
            "verify cold": (verify, lambda: shutil.rmtree(cache, ignore_errors=True)),
            "verify repeated": (verify, None),
        }, args.n, environ)
    report(times, base="collect_env", against="collect_env", header=f"environment: {prefix}",
           targets={"verify cold": "<= 1.00", "verify repeated": "<= 0.20"})


if __name__ == "__main__":
    main()
