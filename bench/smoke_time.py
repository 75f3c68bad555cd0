"""Wall time of `provision verify --env E --smoke-chat --model M` next to the walkthrough's own chat script.

Usage: .venv/bin/python bench/smoke_time.py [--env PREFIX] [--model DIR] [-n N] [--max-new-tokens N]
Both load M in 4-bit NF4 (compute float32 on the CPU, float16 on a GPU), apply the chat template,
generate greedily and decode, in a fresh process of environment E (bench/walkthrough_chat.py is the
walkthrough's script with the options that make the two do identical work). verify also runs every
machine and environment check; its env-probe cache is emptied before each run. Runs alternate; the
medians of N rounds and their ratio are printed (and a RESULT line for bench/run.sh).
Target (issue 10): <= 1.10x.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import PROVISION, TINY_MODEL, alternate, find_env, report  # noqa: E402 - found through the line above


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", type=Path, help="environment prefix (default: the test suite's chat env)")
    p.add_argument("--model", type=Path, default=TINY_MODEL, help="model folder (default: the tiny Qwen2 fixture)")
    p.add_argument("-n", type=int, default=5, help="measured rounds (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--prompt", default="What is the capital of France?")
    args = p.parse_args()
    prefix = find_env(args.env)
    python = prefix / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="smoke-bench-") as tmp:
        cache = Path(tmp) / "cache"
        environ = dict(os.environ, XDG_CACHE_HOME=str(cache), XDG_STATE_HOME=str(Path(tmp) / "state"),
                       HF_HUB_OFFLINE="1")
        gpu = subprocess.run([str(python), "-c", "import torch; print(torch.cuda.is_available())"],
                             capture_output=True, text=True, check=True, env=environ).stdout.strip() == "True"
        dtype = "float16" if gpu else "float32"
        plain = [str(python), str(HERE / "walkthrough_chat.py"), str(args.model), "--prompt", args.prompt,
                 "--max-new-tokens", str(args.max_new_tokens), "--greedy", "--quant-type", "nf4", "--dtype", dtype]
        verify = [*PROVISION, "verify", "--env", str(prefix), "--smoke-chat", "--model", str(args.model),
                  "--quant", "nf4", "--prompt", args.prompt, "--max-new-tokens", str(args.max_new_tokens)]
        times = alternate({
            "walkthrough script": (plain, None),
            "verify --smoke-chat": (verify, lambda: shutil.rmtree(cache, ignore_errors=True)),
        }, args.n, environ)
    report(times, base="walkthrough script", against="the walkthrough script",
           header=f"environment: {prefix}, model: {args.model}, {dtype}", targets={"verify --smoke-chat": "<= 1.10"})


if __name__ == "__main__":
    main()
