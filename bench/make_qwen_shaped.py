"""Build a Qwen chat model of a real model's exact shape, offline: random weights, the tiny fixture's tokenizer.

    python bench/make_qwen_shaped.py OUT_DIR [--shape Qwen/Qwen2.5-7B-Instruct] [--device auto|cuda|cpu]
        [--seed 0] [--shard-size 4GB] [--force]

Run by the chat environment's python (torch + transformers); no network, no hub. For bench/gpu-check.sh on a
machine that cannot reach the hub: the memory, load and decode-speed numbers of a 4-bit load depend on the
model's shape (layers, hidden size, heads, KV heads, MLP width, vocabulary), not on what the weights say.

- The shape is the row of provision's built-in Qwen table (provisioner/data/qwen-models.yaml, read through
  provisioner.model.info): Qwen2ForCausalLM for Qwen1.5/Qwen2.5 rows, Qwen3ForCausalLM for Qwen3 rows (when
  the installed transformers has it).
- Weights: built on the meta device, materialized with `to_empty` on the GPU (CPU without one) in bfloat16,
  then filled in place: normal(0, 0.02) for matrices and embeddings (the configs' initializer_range), ones for
  the RMSNorm weights, zeros for biases. Saved as safetensors shards (`save_pretrained`), as the hub's are.
- Tokenizer and chat template: tests/fixtures/tiny-qwen2's (400 ids, every one below any Qwen vocabulary, so
  every id it produces is a valid input). The output-projection rows of ids the tokenizer cannot decode
  (>= 400) and of its special tokens (pad, <|im_start|>, <|im_end|> = eos) are zero, so greedy decoding picks
  a decodable, non-special id and always runs to max_new_tokens: a non-empty reply and a full decode to time.
  The reply itself is meaningless; nothing may assert its content.
- Checked before it is done: the parameter count in the written safetensors headers equals the table's count
  for the shape (what `provision model fit OUT_DIR` will read).

An existing OUT_DIR built for the same shape and seed is reused (its shaped.json says so) unless --force.
Prints one JSON line: dir, shape, architecture, params, table_params, bytes, timings.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provisioner.model import info as modelinfo  # noqa: E402 - the repo is put on sys.path just above

TOKENIZER_DIR = REPO / "tests" / "fixtures" / "tiny-qwen2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
MARKER = "shaped.json"
INIT_STD = 0.02  # initializer_range in every Qwen2/Qwen3 config.json
ROPE_THETA = 1_000_000.0  # rope_theta of the Qwen2.5 and Qwen3 configs (Qwen1.5: also 1e6 for most)
RMS_EPS = 1e-6


def table_row(shape: str) -> tuple[modelinfo.ModelSpec, str]:
    """(the table's spec, its family's architecture) for a table name or alias."""
    spec = modelinfo.find_in_table(shape)
    if spec is None:
        guess = modelinfo.suggest(shape)
        raise SystemExit(f"error: '{shape}' is not in the built-in Qwen table"
                         + (f" (did you mean '{guess}'?)" if guess else "")
                         + "; names: " + ", ".join(modelinfo.table_names()))
    import yaml  # a transformers dependency, so the chat environment has it

    doc = yaml.safe_load(modelinfo.TABLE_PATH.read_text())
    row = next(r for r in doc["models"] if r["name"] == spec.name)
    return spec, doc["families"][row["family"]]["architecture"]


def make_config(transformers: Any, spec: modelinfo.ModelSpec, architecture: str, tok_vocab: int) -> tuple[Any, Any]:
    if architecture == "Qwen3ForCausalLM":
        if not hasattr(transformers, "Qwen3ForCausalLM"):
            raise SystemExit(f"error: {spec.name} is a Qwen3 model and transformers {transformers.__version__} "
                             "has no Qwen3ForCausalLM; pick a Qwen2.5 shape (GPU_CHECK_SHAPE)")
        config_cls, model_cls = transformers.Qwen3Config, transformers.Qwen3ForCausalLM
        extra = {"head_dim": spec.head_dim, "attention_bias": False}
    elif architecture == "Qwen2ForCausalLM":
        config_cls, model_cls = transformers.Qwen2Config, transformers.Qwen2ForCausalLM
        extra = {}
    else:
        raise SystemExit(f"error: no builder for {architecture}")
    if spec.vocab < tok_vocab:
        raise SystemExit(f"error: the tokenizer has {tok_vocab} ids, more than {spec.name}'s vocabulary {spec.vocab}")
    config = config_cls(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_position, tie_word_embeddings=spec.tie_embeddings,
        rms_norm_eps=RMS_EPS, rope_theta=ROPE_THETA, hidden_act="silu", initializer_range=INIT_STD,
        bos_token_id=None, eos_token_id=2, pad_token_id=0, use_cache=True, **extra)
    config.architectures = [architecture]
    return config, model_cls


def build(out: Path, shape: str, *, device: str, seed: int, shard_size: str) -> dict[str, Any]:
    started = time.perf_counter()
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    spec, architecture = table_row(shape)
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    tok_vocab = len(tok)
    config, model_cls = make_config(transformers, spec, architecture, tok_vocab)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to(torch.bfloat16)
    model.to_empty(device=device)
    if spec.tie_embeddings and hasattr(model, "tie_weights"):
        model.tie_weights()
    gen = torch.Generator(device=device).manual_seed(seed)
    # pad, eos and every added token (<|im_start|> is one without being in the special-tokens map)
    added = [int(i) for i in (getattr(tok, "added_tokens_decoder", None) or {})]
    special = sorted({i for i in (tok.pad_token_id, tok.eos_token_id, *tok.all_special_ids, *added) if i is not None})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, INIT_STD, generator=gen)
        head = model.get_output_embeddings().weight
        head[tok_vocab:].zero_()
        head[special] = 0.0  # index_put: a list index on the left writes in place
    # The rotary inv_freq buffers stay as to_empty left them: they are not saved, and transformers
    # computes them again when the checkpoint is loaded. This model object is only saved.
    if device == "cuda":
        torch.cuda.synchronize()
    built_s = time.perf_counter() - started
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    model.save_pretrained(str(tmp), max_shard_size=shard_size)
    GenerationConfig(eos_token_id=2, pad_token_id=0, do_sample=False).save_pretrained(str(tmp))
    for name in TOKENIZER_FILES:
        shutil.copy2(TOKENIZER_DIR / name, tmp / name)
    save_s = time.perf_counter() - t0
    written = modelinfo.spec_from_folder(tmp, name=spec.name)
    if written.params != spec.params:
        raise SystemExit(f"error: the saved checkpoint has {written.params} parameters, the table's "
                         f"{spec.name} {spec.params}")
    nbytes = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    doc = {"dir": str(out), "shape": spec.name, "architecture": architecture, "params": written.params,
           "table_params": spec.params, "bytes": nbytes, "dtype": "bfloat16", "seed": seed,
           "built_on": device, "build_s": round(built_s, 2), "save_s": round(save_s, 2),
           "tokenizer_ids": tok_vocab, "transformers": transformers.__version__, "torch": torch.__version__}
    (tmp / MARKER).write_text(json.dumps(doc, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return doc


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="make_qwen_shaped.py", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--shape", default="Qwen/Qwen2.5-7B-Instruct")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", default="4GB")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    marker = args.out / MARKER
    if not args.force and marker.is_file():
        doc = json.loads(marker.read_text())
        spec = modelinfo.find_in_table(args.shape)
        if spec is not None and doc.get("shape") == spec.name and doc.get("seed") == args.seed:
            doc["reused"] = True
            print(json.dumps(doc))
            return 0
    doc = build(args.out, args.shape, device=args.device, seed=args.seed, shard_size=args.shard_size)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
