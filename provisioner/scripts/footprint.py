"""Measure a model folder's resident weight bytes per precision (run by the target env's python).

    python footprint.py MODEL_DIR [MODEL_DIR ...] [--quant fp32,bf16,int8,nf4,nf4-dq] [--device cpu]

Prints one JSON document: {MODEL_DIR: {quant: {"footprint": get_memory_footprint(),
"quant_state": bytes of quantization state that is not a parameter or buffer (absmax, SCB, codes),
"kv_bytes_per_token": bytes one token adds to the KV cache in a real forward pass}}}.
Standalone on purpose: provision itself never imports torch/transformers/bitsandbytes.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

QUANTS = ("fp32", "bf16", "int8", "nf4", "nf4-dq")


def _tensor_bytes(t: Any) -> int:
    return int(t.nelement() * t.element_size())


def _quant_state_bytes(model: Any) -> int:
    """Tensors bitsandbytes keeps beside the weights: they occupy memory but are not parameters."""
    import torch

    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += _tensor_bytes(t)

    for p in model.parameters():
        qs = getattr(p, "quant_state", None)           # Params4bit
        while qs is not None:
            for name in ("absmax", "code", "offset"):
                add(getattr(qs, name, None))
            qs = getattr(qs, "state2", None)
        scb = getattr(p, "SCB", None)                   # Int8Params: one fp32 scale per row
        if scb is not None:
            add(scb)
    return total


def _kv_bytes_per_token(model: Any, tokens: int = 8) -> int:
    import torch

    ids = torch.zeros((1, tokens), dtype=torch.long, device=model.device)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:                               # transformers >= 4.56 DynamicCache
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if t is not None:
                    total += _tensor_bytes(t)
    else:                                                # legacy tuple of (k, v) per layer
        for k, v in cache:
            total += _tensor_bytes(k) + _tensor_bytes(v)
    return total // tokens


def measure(path: str, quant: str, device: str) -> dict[str, int]:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"device_map": device}
    if quant == "fp32":
        kwargs["dtype"] = torch.float32
    elif quant == "bf16":
        kwargs["dtype"] = torch.bfloat16
    elif quant == "fp16":
        kwargs["dtype"] = torch.float16
    elif quant == "int8":
        kwargs.update(dtype=torch.float16, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    else:
        kwargs.update(dtype=torch.float16, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=quant == "nf4-dq"))
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    result = {"footprint": int(model.get_memory_footprint()), "quant_state": _quant_state_bytes(model)}
    if quant in ("fp32", "bf16", "fp16"):
        # The cache takes the model's dtype; a 16-bit forward on CPU is fine for counting bytes.
        result["kv_bytes_per_token"] = _kv_bytes_per_token(model)
    del model
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--quant", default=",".join(QUANTS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    doc = {m: {q: measure(m, q, args.device) for q in args.quant.split(",")} for m in args.models}
    json.dump(doc, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
