"""The closing summary of bench/gpu-check.sh: one row per smoke run, then the calibration of `model fit`.

    python bench/gpu_check_summary.py RESULTS_DIR

Run by the tool's python with the repo importable. Reads RESULTS_DIR/nvml.json, shaped.json, smoke-*.json
(bench/gpu_check_smoke.py) and calibrate-*.json (bench/calibrate_fit.py); prints the table and writes
RESULTS_DIR/calibration.json.

Calibration, GPU runs only (a CPU rehearsal prints fit's terms with the measured side left out):
  smoke runs   observed overhead = allocator peak - weights on the GPU after loading - KV cache at the
               context used (fit's formula), next to fit's activation term at that context; the CUDA
               context as total - free right after CUDA started, next to fit's constant.
  calibrate    per prompt length C: peak - base - KV(C + new tokens), the generation alone, next to fit's
               activation(C); a least-squares line through them gives bytes per prompt token (fit:
               activation_bytes_per_token) and a fixed part (fit: the logits, 2 x vocab x 4 bytes); the memory
               torch did not allocate at the end (total - free - reserved) next to fit's CUDA context.
The allocator peak does not see the CUDA context, and `model fit` does not count the caching allocator's
slack (reserved - allocated): both are printed so the closing note can say which term to move.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from provisioner.model import fit, smoke
from provisioner.model import info as modelinfo

MiB = 1 << 20
GiB = 1 << 30


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:,.0f} MiB"


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def num(n: float | None, fmt: str = ".1f") -> str:
    return "-" if n is None else format(n, fmt)


def load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def spec_for(model: str, cache: dict[str, Any]) -> Any:
    if model not in cache:
        try:
            cache[model] = modelinfo.resolve(model, environ={"HF_HUB_OFFLINE": "1"})
        except Exception as e:  # noqa: BLE001 - a summary line says why, the rest still prints
            print(f"  (no shape for {model}: {e})")
            cache[model] = None
    return cache[model]


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares slope and intercept; None for fewer than two distinct x."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    specs: dict[str, Any] = {}
    calib: dict[str, Any] = {"cuda_context_bytes_fit": fit.CUDA_CONTEXT_BYTES, "smoke": [], "calibrate": []}

    nvml = load(out / "nvml.json") or {}
    if nvml.get("name"):
        print(f"  NVML: {nvml['name']}, driver {nvml.get('driver')}, {gib(nvml.get('memory_total_bytes'))}, "
              f"bus {nvml.get('bus_width_bits')} bit x {nvml.get('max_memory_clock_mhz')} MHz x 2 = "
              f"{num((nvml.get('bandwidth_bytes_per_s') or 0) / 1e12, '.2f')} TB/s, "
              f"compute capability {nvml.get('compute_capability')}")
    else:
        print(f"  NVML: {nvml.get('error') or 'no figures'}")
    shaped = load(out / "shaped.json")
    if shaped:
        print(f"  model: {shaped['dir']} = {shaped['shape']}'s exact shape ({shaped['architecture']}, "
              f"{shaped['params']:,} parameters = the table's {shaped['table_params']:,}), random bfloat16 weights, "
              f"{gib(shaped['bytes'])} safetensors; built in {shaped['build_s']} s, saved in {shaped['save_s']} s"
              + (" (reused)" if shaped.get("reused") else ""))

    print("\n  smoke runs (decode tok/s against the bandwidth bound: bandwidth / bytes one token reads)")
    rows = []
    for f in sorted(out.glob("smoke-*.json"), key=lambda f: f.stat().st_mtime):
        if f.name.endswith("-raw.json"):
            continue
        s = (load(f) or {}).get("summary")
        if not s:
            continue
        rows.append(s)
        pct = "-" if s.get("fraction_of_bound") is None else f"{s['fraction_of_bound']:.1%}"
        ratio = "-" if s.get("peak_over_estimate") is None else f"{s['peak_over_estimate']:.2f}x"
        peak_text = gib(s.get("peak_bytes")) + ("" if s.get("on_gpu") else " RSS")
        print(f"  {s['label']:10} {'ok ' if s.get('ok') else 'FAIL'} load {num(s.get('load_s'))} s"
              f"  ttft {num(s.get('ttft_s'), '.2f')} s  decode {num(s.get('decode_tokens_per_s'))} tok/s"
              f"  bound {num(s.get('bandwidth_bound_tokens_per_s'), '.0f')} tok/s ({pct})"
              f"  peak {peak_text}  fit {gib(s.get('estimate_bytes'))} at {s.get('estimate_context')} tokens ({ratio})"
              f"  on {s.get('placement')}"
              + (f"  reply {s.get('reply')!r:.40}" if s.get("reply_judged") else "  reply not judged")
              + (f"  error: {s.get('error')}" if s.get("error") else ""))
    if not rows:
        print("  no smoke runs")

    print("\n  calibration of `model fit` (allocator figures; the CUDA context is outside the allocator)")
    print(f"  fit's constants: CUDA context {mib(fit.CUDA_CONTEXT_BYTES)}; activation = one layer's prefill "
          "tensors per prompt token + logits (2 x vocab x 4 B)")
    for s in rows:
        if s["label"] == "tiny":
            continue
        spec = spec_for(s["model"], specs)
        if spec is None:
            continue
        fq = smoke.FIT_QUANT.get(s["quant"], s["quant"])
        ctx = (s.get("n_prompt_tokens") or 0) + (s.get("n_new_tokens") or 0)
        if not ctx:
            print(f"  {s['label']:10} no tokens: nothing to compare")
            continue
        option = fit.estimate(spec, fq, context=ctx)
        kv = option.kv_cache_bytes
        weights = s.get("allocated_after_load_bytes")
        peak = s.get("peak_bytes") if s.get("on_gpu") else None
        observed = (peak - weights - kv) if (peak is not None and weights is not None) else None
        ctx_init = None
        if s.get("on_gpu") and s.get("gpu_total_bytes") and s.get("gpu_free_before_load_bytes"):
            ctx_init = s["gpu_total_bytes"] - s["gpu_free_before_load_bytes"]
        row = {"label": s["label"], "quant": fq, "context": ctx, "peak_bytes": peak, "weights_measured_bytes": weights,
               "weights_fit_bytes": option.weights_bytes, "kv_fit_bytes": kv, "observed_overhead_bytes": observed,
               "activation_fit_bytes": option.activation_bytes, "cuda_context_at_init_bytes": ctx_init,
               "max_reserved_bytes": s.get("max_reserved_bytes")}
        calib["smoke"].append(row)
        fit_side = (f"fit: activation {mib(option.activation_bytes)} + CUDA context {mib(fit.CUDA_CONTEXT_BYTES)}"
                    f" (weights {mib(option.weights_bytes)}, KV {mib(kv)}, total {mib(option.total_bytes)})")
        if not s.get("on_gpu"):
            print(f"  {s['label']:10} {fq} at {ctx} tokens: measured side skipped (CPU rehearsal: no CUDA allocator)"
                  f" | {fit_side}")
            continue
        print(f"  {s['label']:10} {fq} at {ctx} tokens: peak {mib(peak)} - weights on GPU {mib(weights)}"
              f" - KV {mib(kv)} = observed overhead {mib(observed)}; CUDA context at start {mib(ctx_init)};"
              f" allocator reserved at peak {mib(s.get('max_reserved_bytes'))} | {fit_side}")

    for f in sorted(out.glob("calibrate-*.json")):
        c = load(f) or {}
        if not c.get("ok"):
            print(f"  {f.name}: failed: {c.get('error')}")
            continue
        spec = spec_for(c["model"], specs)
        if spec is None:
            continue
        fq = smoke.FIT_QUANT.get(c["quant"], c["quant"])
        elem = 4 if fq == "fp32" else 2
        per_token_fit = fit.activation_bytes_per_token(spec, elem)
        logits_fit = fit.estimate(spec, fq, context=1).activation_bytes - per_token_fit
        entry: dict[str, Any] = {"file": f.name, "quant": fq, "gpu": c.get("gpu"), "points": [],
                                 "activation_per_token_fit": per_token_fit, "activation_fixed_fit": logits_fit}
        xs, ys = [], []
        print(f"  {f.name} ({fq}, {c.get('new_tokens')} new tokens per prompt, one load):")
        for pt in c.get("points", []):
            n = pt["context"] + pt["new_tokens"]
            kv = fit.kv_bytes_per_token(spec, elem) * n
            act_fit = fit.estimate(spec, fq, context=pt["context"]).activation_bytes
            observed = (pt["peak_bytes"] - pt["base_bytes"] - kv) if pt.get("peak_bytes") is not None else None
            slack = (pt["max_reserved_bytes"] - pt["peak_bytes"]) if pt.get("max_reserved_bytes") is not None else None
            entry["points"].append({**pt, "kv_fit_bytes": kv, "activation_fit_bytes": act_fit,
                                    "observed_activation_bytes": observed, "allocator_slack_bytes": slack})
            if observed is not None:
                xs.append(float(pt["context"]))
                ys.append(float(observed))
            ratio = "" if observed is None else f" ({observed / act_fit:.2f}x fit)"
            print(f"    prompt {pt['context']:>6}: peak - base - KV {mib(kv)} = {mib(observed)}{ratio}"
                  f" | fit activation {mib(act_fit)} | allocator slack {mib(slack)} | {pt['generate_s']:.2f} s")
        line = line_fit(xs, ys)
        if line:
            slope, intercept = line
            entry.update(activation_per_token_measured=slope, activation_fixed_measured=intercept,
                         activation_per_token_ratio=slope / per_token_fit)
            print(f"    line: {slope:,.0f} B per prompt token (fit {per_token_fit:,} B: {slope / per_token_fit:.2f}x)"
                  f" + fixed {mib(intercept)} (fit: logits {mib(logits_fit)})")
        elif not c.get("gpu"):
            print(f"    measured side skipped (CPU rehearsal, no CUDA allocator); fit: {per_token_fit:,} B per prompt"
                  f" token + {mib(logits_fit)} logits")
        end = c.get("end") or {}
        facts = c.get("gpu_facts") or {}
        init = (facts["total_bytes"] - facts["free_before_load_bytes"]) if facts.get("total_bytes") else None
        entry.update(cuda_context_at_init_bytes=init, not_torch_at_end_bytes=end.get("not_torch_bytes"),
                     nvml=c.get("nvml"))
        if c.get("gpu"):
            ours = [pr.get("used_bytes") for pr in (c.get("nvml") or {}).get("processes", [])]
            print(f"    CUDA context: {mib(init)} right after CUDA started, {mib(end.get('not_torch_bytes'))} not torch's"
                  f" at the end (total - free - reserved); NVML per process {[mib(u) for u in ours] or '-'}"
                  f" | fit {mib(fit.CUDA_CONTEXT_BYTES)}")
            measured_ctx = max((v for v in (init, end.get("not_torch_bytes")) if v is not None), default=None)
            slack = max((p["allocator_slack_bytes"] for p in entry["points"] if p["allocator_slack_bytes"] is not None),
                        default=None)
            entry.update(suggested_cuda_context_bytes=measured_ctx, largest_allocator_slack_bytes=slack)
            if line:
                print(f"    suggests: activation x{line[0] / per_token_fit:.2f} per prompt token, fixed part {mib(line[1])}"
                      f" (fit {mib(logits_fit)}); CUDA context {mib(measured_ctx)} (fit {mib(fit.CUDA_CONTEXT_BYTES)});"
                      f" allocator slack up to {mib(slack)} (not in fit)")
        calib["calibrate"].append(entry)
    (out / "calibration.json").write_text(json.dumps(calib, indent=2, default=str) + "\n")
    print("CALIBRATION " + json.dumps(calib, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
