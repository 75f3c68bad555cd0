"""Measure what `model fit`'s activation and CUDA-context terms stand for: one load, prompts of several lengths.

    python bench/calibrate_fit.py MODEL --out FILE.json [--quant nf4|int8|none] [--contexts 256,2048,8192]
        [--new-tokens 8]

Run by the chat environment's python. The model is loaded the smoke chat's way (provisioner/scripts/_loader.py:
device_map="auto", nf4 with float16 compute on a GPU). Then for each context length C, a prompt of C token ids
(random ids the tokenizer can produce) is generated from greedily for --new-tokens tokens, with the CUDA
allocator's peak reset just before, so each measurement holds the generation alone:

  base_bytes        allocated before the generation (the weights, quantization state, buffers)
  peak_bytes        the allocator's peak during it
  reserved_bytes    what the caching allocator holds from the driver after it (its peak: max_reserved_bytes)

bench/gpu-check.sh subtracts the KV cache (model fit's formula at C + new tokens) from peak - base: what
remains is the activation workspace that `fit` estimates as per-token prefill tensors plus the logits.
Memory torch does not allocate (the CUDA context, cuBLAS/cuDNN handles, kernels loaded on first use) is
measured twice: right after CUDA starts (total - free before loading; _loader's gpu facts) and at the end
(total - free - reserved), and NVML's figure for this process where the driver reports it.

On a machine without CUDA it still runs the same load and generations (a rehearsal of this script) and
writes the timings, with every GPU figure left out (null) and `"gpu": false`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "provisioner" / "scripts"))

import _loader  # noqa: E402 - provision's model-loading code, found through the line above


def nvml_process_bytes() -> dict[str, Any]:
    """NVML's used-memory figures for the compute processes on GPU 0 (this one among them)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"processes": [{"pid": p.pid, "used_bytes": p.usedGpuMemory} for p in procs],
                "this_pid": os.getpid(), "device_used_bytes": int(mem.used), "device_total_bytes": int(mem.total)}
    except Exception as e:  # noqa: BLE001 - no pynvml, no driver, or a sandbox that hides processes
        return {"error": f"{type(e).__name__}: {e}"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="calibrate_fit.py", description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--quant", choices=_loader.QUANTS, default="nf4")
    p.add_argument("--contexts", default="256,2048,8192")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    doc: dict[str, Any] = {"model": args.model, "quant": args.quant, "new_tokens": args.new_tokens, "ok": False,
                 "points": [], "error": None}
    started = time.perf_counter()
    try:
        loaded = _loader.load(args.model, quant=args.quant)
        import torch

        model, tok, info = loaded.model, loaded.tokenizer, loaded.info
        gpu = bool(info.get("cuda_available"))
        device = _loader.first_device(model)
        vocab = min(len(tok), int(model.config.get_text_config().vocab_size))
        special = set(tok.all_special_ids)
        ids_ok = torch.tensor([i for i in range(vocab) if i not in special])
        doc.update(gpu=gpu, device=str(device), dtype=info.get("dtype"), compute_dtype=info.get("compute_dtype"),
                   load_s=info.get("load_s"), footprint_bytes=info.get("footprint_bytes"),
                   allocated_after_load_bytes=info.get("cuda_allocated_after_load_bytes"),
                   gpu_facts=info.get("gpu"), versions=info.get("versions"),
                   placement=(info.get("placement") or {}).get("modules_by_device"))
        gen = torch.Generator().manual_seed(args.seed)
        kwargs = _loader.generation_kwargs(model, tok, max_new_tokens=args.new_tokens, sample=False)
        # The tokenizer's eos never wins on a shaped model (bench/make_qwen_shaped.py), and a real model
        # must not stop early either: every point decodes the same number of tokens.
        kwargs["generation_config"].min_new_tokens = args.new_tokens
        for ctx in contexts:
            prompt = ids_ok[torch.randint(len(ids_ok), (1, ctx), generator=gen)].to(device)
            mask = torch.ones_like(prompt)
            if gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=prompt, attention_mask=mask, **kwargs)
            if gpu:
                torch.cuda.synchronize()
            point = {"context": ctx, "new_tokens": int(out.shape[1]) - ctx, "generate_s": time.perf_counter() - t0,
                     "base_bytes": None, "peak_bytes": None, "reserved_bytes": None, "max_reserved_bytes": None}
            if gpu:
                point.update(base_bytes=int(base), peak_bytes=int(torch.cuda.max_memory_allocated()),
                             reserved_bytes=int(torch.cuda.memory_reserved()),
                             max_reserved_bytes=int(torch.cuda.max_memory_reserved()))
            doc["points"].append(point)
            del out, prompt, mask
            print(f"context {ctx}: {json.dumps(point)}", file=sys.stderr, flush=True)
        if gpu:
            free, total = torch.cuda.mem_get_info()
            reserved = torch.cuda.memory_reserved()
            doc["end"] = {"free_bytes": int(free), "total_bytes": int(total), "reserved_bytes": int(reserved),
                          "not_torch_bytes": int(total - free - reserved)}
            doc["nvml"] = nvml_process_bytes()
        doc["ok"] = True
    except BaseException as e:  # noqa: BLE001 - the failure is the measurement's result
        doc.update(_loader.error_fields(e, "calibrate"))
    doc["total_s"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps({k: doc.get(k) for k in ("ok", "gpu", "load_s", "total_s", "error")}, default=str))
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
