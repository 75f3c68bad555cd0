"""Time provision's smoke chat against the walkthrough's plain script on the same model, env and machine.

    .venv/bin/python bench/smoke_overhead.py [--python ENV_PYTHON] [--model DIR] [-n 5]
        [--max-new-tokens 32] [--json-out FILE]

Both sides run in a fresh process of the same environment, greedy, nf4 with the same compute dtype,
so they generate the same tokens. The runs alternate (plain, smoke, plain, ...) so that drift in
machine load hits both. Reported: median wall time of each process (interpreter start to exit), the
ratio, and provision's overhead as a share of the plain script's own load + generate time (target:
under 10%). Defaults: the test suite's chat env and the SmolLM2-135M folder the slow test converts,
falling back to the committed tiny model.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provisioner.model import smoke  # noqa: E402 - the repo's own package, found through the line above

CACHE = Path(os.environ.get("PROVISION_TEST_CACHE", REPO / ".cache" / "tests"))
PLAIN = Path(__file__).resolve().parent / "walkthrough_chat.py"
TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"


def default_python() -> Path | None:
    found = sorted(CACHE.glob("chat-env-*/bin/python"))
    return found[0] if found else None


def default_model() -> Path:
    smol = CACHE / "smollm2-135m-instruct"
    return smol if (smol / ".complete").exists() else TINY


def run_plain(python: Path, model: str, prompt: str, max_new_tokens: int, dtype: str,
              environ: dict[str, str]) -> dict[str, float]:
    t0 = time.perf_counter()
    done = subprocess.run([str(python), str(PLAIN), model, "--prompt", prompt, "--max-new-tokens",
                           str(max_new_tokens), "--greedy", "--quant-type", "nf4", "--dtype", dtype],
                          capture_output=True, text=True, env=environ, check=True, timeout=900)
    wall = time.perf_counter() - t0
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "load_s": doc["load_s"], "generate_s": doc["generate_s"],
            "n_new_tokens": doc["n_new_tokens"], "reply": doc["reply"]}


def run_provision(python: Path, model: str, prompt: str, max_new_tokens: int, dtype: str,
                  environ: dict[str, str]) -> dict[str, float]:
    t0 = time.perf_counter()
    r = smoke.run_smoke(python, model, prompt=prompt, max_new_tokens=max_new_tokens, dtype=dtype,
                        environ=environ)
    wall = time.perf_counter() - t0
    if not r.ok:
        raise SystemExit(f"smoke chat failed: {r.error_type}: {r.error}")
    return {"wall_s": wall, "load_s": r.load_s or 0.0, "generate_s": r.generate_s or 0.0,
            "n_new_tokens": r.n_new_tokens, "reply": r.reply}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", type=Path, default=default_python(),
                   help="the environment's python (default: the test suite's chat env)")
    p.add_argument("--model", default=str(default_model()))
    p.add_argument("-n", "--repeat", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--dtype", default=None,
                   help="compute dtype for both (default: float16 on a GPU, float32 on the CPU)")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    if args.python is None:
        raise SystemExit("no environment python: pass --python, or run the test suite once")
    environ = dict(os.environ)
    environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.dtype is None:
        probe = subprocess.run([str(args.python), "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True, check=True, env=environ)
        args.dtype = "float16" if probe.stdout.strip() == "True" else "float32"

    plain: list[dict[str, float]] = []
    ours: list[dict[str, float]] = []
    # One unmeasured round warms the page cache for the weights and the libraries.
    run_plain(args.python, args.model, args.prompt, args.max_new_tokens, args.dtype, environ)
    for i in range(args.repeat):
        plain.append(run_plain(args.python, args.model, args.prompt, args.max_new_tokens, args.dtype,
                               environ))
        ours.append(run_provision(args.python, args.model, args.prompt, args.max_new_tokens,
                                  args.dtype, environ))
        print(f"round {i + 1}: " + ", ".join(
            f"{name} {r['wall_s']:.2f} s (load {r['load_s']:.2f} s, generate {r['generate_s']:.2f} s)"
            for name, r in (("plain", plain[-1]), ("provision", ours[-1]))), file=sys.stderr)

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)

    plain_work = med(plain, "load_s") + med(plain, "generate_s")
    summary = {
        "model": args.model, "python": str(args.python), "dtype": args.dtype, "repeat": args.repeat,
        "max_new_tokens": args.max_new_tokens,
        "same_reply": all(a["reply"] == b["reply"] for a, b in zip(plain, ours)),
        "n_new_tokens": [plain[0]["n_new_tokens"], ours[0]["n_new_tokens"]],
        "plain": {"wall_s": med(plain, "wall_s"), "load_s": med(plain, "load_s"),
                  "generate_s": med(plain, "generate_s")},
        "provision": {"wall_s": med(ours, "wall_s"), "load_s": med(ours, "load_s"),
                      "generate_s": med(ours, "generate_s")},
    }
    summary["ratio"] = summary["provision"]["wall_s"] / summary["plain"]["wall_s"]
    summary["overhead_s"] = summary["provision"]["wall_s"] - summary["plain"]["wall_s"]
    summary["overhead_of_load_generate"] = summary["overhead_s"] / plain_work
    print(json.dumps(summary, indent=2))
    print(f"provision / plain wall time: {summary['ratio']:.3f}  "
          f"(overhead {summary['overhead_s']:+.2f} s = {summary['overhead_of_load_generate']:+.1%} of "
          f"the plain script's {plain_work:.2f} s load + generate; target < 10%)", file=sys.stderr)
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
