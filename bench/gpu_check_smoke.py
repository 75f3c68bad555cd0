"""One smoke chat through provision, for bench/gpu-check.sh: its verdicts, and the figures the summary compares.

    python bench/gpu_check_smoke.py --python CHAT_PY --model M --quant nf4 --label L --out-dir DIR
        [--prompt TEXT] [--expect TEXT [--exact] | --any-reply] [--max-new-tokens N] [--timeout S]

Run by the tool's python with the repo importable. The chat runs in CHAT_PY exactly as `provision verify
--smoke-chat` runs it (provision's smoke_command, the smoke_chat.py script); its JSON is kept whole, because
the calibration needs the allocator figures SmokeResult leaves out (allocated after load, peak reserved).
--any-reply: the reply is not judged (a shaped model from bench/make_qwen_shaped.py has random weights).

Writes DIR/smoke-L.json (summary, checks, the script's own JSON) and prints `SUMMARY {...}` as its last line.
The bandwidth bound counts the bytes one decoded token reads: the weights on the GPU (the allocator's figure
after loading) less the input embedding table when it is not tied to the output (a lookup reads one row of
it), plus the KV cache at the mean context of the decode. Bandwidth: NVML's memory clock x bus width x 2.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from provisioner.model import fit, smoke
from provisioner.model import info as modelinfo
from provisioner.report import Check, Status, render_checks, to_document


def nvml_bandwidth() -> tuple[float | None, str | None]:
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(h)
        mem_mhz = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)
        name = pynvml.nvmlDeviceGetName(h)
        # double data rate x clock x bus width in bytes
        return 2 * mem_mhz * 1e6 * bus_bits / 8, name if isinstance(name, str) else name.decode()
    except Exception as e:  # noqa: BLE001 - no pynvml or no driver: the bound is left out
        print(f"(no NVML bandwidth: {type(e).__name__}: {e})")
        return None, None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gpu_check_smoke.py")
    p.add_argument("--python", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--quant", default="nf4", choices=smoke.QUANTS)
    p.add_argument("--label", required=True)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--prompt", default=smoke.DEFAULT_PROMPT)
    p.add_argument("--expect", default=None)
    p.add_argument("--exact", action="store_true", help="the reply must be --expect exactly")
    p.add_argument("--any-reply", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=540)
    args = p.parse_args(argv)
    environ = dict(os.environ)
    bandwidth, gpu_name = nvml_bandwidth()

    argv_chat = [*smoke.smoke_command(Path(args.python), args.model, quant=args.quant, prompt=args.prompt,
                                      max_new_tokens=args.max_new_tokens), "--no-stream"]
    started = time.perf_counter()
    try:
        done = subprocess.run(argv_chat, capture_output=True, text=True, timeout=args.timeout, env=environ)
        stdout, stderr, rc = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        stdout, rc = "", None
        stderr = (e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr) or ""
        stderr += f"\n(timed out after {args.timeout:g} s)"
    wall = time.perf_counter() - started
    doc = smoke._last_json_object(stdout)   # as run_smoke reads the script's result
    if doc is None:
        r = smoke.SmokeResult(model=args.model, quant=args.quant, ok=False, stage="crashed",
                              error=f"the smoke chat ended (exit {rc}) without a result", error_type="Crashed",
                              returncode=rc, traceback="\n".join(stderr.splitlines()[-25:]), wall_s=wall,
                              command=tuple(argv_chat))
        doc = {}
    else:
        r = smoke.SmokeResult.from_script(doc, wall_s=wall, returncode=rc, command=tuple(argv_chat))
    estimate = smoke.estimate_for(args.model, args.quant, environ, max_new_tokens=args.max_new_tokens)
    checks = smoke.check_smoke(r, estimate_bytes=estimate, gpu_present=bandwidth is not None,
                               expect=None if args.any_reply else args.expect, bandwidth_bytes_per_s=bandwidth)
    if args.any_reply:
        checks = [Check("smoke.reply", Status.SKIP,
                        f"reply not judged (random weights): {r.n_new_tokens} tokens, stopped at {r.stop_reason}",
                        data=dict(c.data)) if c.id == "smoke.reply" and r.ok else c for c in checks]
    if args.exact and r.ok and r.reply.strip() != (args.expect or "").strip():
        checks = [Check("smoke.reply", Status.FAIL, f"the reply is not exactly {args.expect!r}: {r.reply!r}",
                        data=dict(c.data)) if c.id == "smoke.reply" else c for c in checks]
    print(render_checks(checks))

    mem = doc.get("memory") or {}
    gpu = doc.get("gpu") or {}
    on_gpu = mem.get("kind") == "cuda_max_allocated"
    weights_on_gpu = mem.get("cuda_allocated_after_load_bytes") if on_gpu else None
    summary: dict[str, Any] = {
        "label": args.label, "model": args.model, "quant": args.quant, "ok": r.ok, "reply": r.reply,
        "reply_judged": not args.any_reply, "device": r.device, "gpu": gpu_name, "on_gpu": on_gpu,
        "load_s": r.load_s, "ttft_s": r.ttft_s, "tokens_per_s": r.tokens_per_s,
        "decode_tokens_per_s": r.decode_tokens_per_s, "n_prompt_tokens": r.n_prompt_tokens,
        "n_new_tokens": r.n_new_tokens, "stop_reason": r.stop_reason,
        "peak_bytes": r.peak_bytes, "peak_kind": r.peak_kind, "footprint_bytes": r.footprint_bytes,
        "allocated_after_load_bytes": weights_on_gpu,
        "max_reserved_bytes": mem.get("cuda_max_reserved_bytes") if on_gpu else None,
        "gpu_total_bytes": gpu.get("total_bytes"), "gpu_free_before_load_bytes": gpu.get("free_before_load_bytes"),
        "estimate_bytes": estimate, "estimate_context": smoke.PROMPT_ALLOWANCE + args.max_new_tokens,
        "peak_over_estimate": (r.peak_bytes / estimate) if (on_gpu and r.peak_bytes and estimate) else None,
        "bandwidth_bytes_per_s": bandwidth, "bytes_per_token": None, "bandwidth_bound_tokens_per_s": None,
        "fraction_of_bound": None,
        "placement": dict(r.placement.get("modules_by_device", {})) if r.placement else None,
        "error": r.error, "wall_s": wall,
    }
    try:
        spec = modelinfo.resolve(args.model, environ=environ)
    except Exception as e:  # noqa: BLE001 - the bound needs the shape; without it, it is left out
        spec = None
        summary["spec_error"] = str(e)
    if spec is not None and r.ok and weights_on_gpu and bandwidth:
        elem = 2  # float16 compute and cache (nf4 keeps the embeddings in the compute dtype)
        embed = 0 if spec.tie_embeddings else spec.vocab * spec.hidden * elem
        mean_context = r.n_prompt_tokens + r.n_new_tokens / 2
        per_token = weights_on_gpu - embed + int(fit.kv_bytes_per_token(spec, elem) * mean_context)
        summary["bytes_per_token"] = per_token
        summary["bandwidth_bound_tokens_per_s"] = bandwidth / per_token
        if r.decode_tokens_per_s:
            summary["fraction_of_bound"] = r.decode_tokens_per_s / summary["bandwidth_bound_tokens_per_s"]
    if not r.ok:
        summary["stderr_tail"] = "\n".join(stderr.splitlines()[-15:])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"smoke-{args.label}.json").write_text(json.dumps(
        {"summary": summary, "checks": to_document(checks), "script": doc}, indent=2, default=str))
    print("SUMMARY " + json.dumps(summary, default=str))
    return 0 if r.ok and all(c.status != Status.FAIL for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
