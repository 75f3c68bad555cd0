"""Smoke-test chat, run by the target environment's python: load, one streamed reply, one JSON object on stdout.

    python smoke_chat.py MODEL [--quant nf4|int8|none] [--dtype auto|float16|bfloat16|float32]
        [--prompt TEXT] [--system TEXT] [--max-new-tokens N] [--sample] [--trust-remote-code]
        [--json-out FILE] [--no-stream] [--probe-out FILE]

The reply streams to stderr as it is generated. The result (reply, timings, memory, placement, versions,
or error + error_type + traceback tail + oom) goes to stdout, or to --json-out FILE (then stdout stays
empty, so the caller's terminal can be inherited). Exit 0 on success, 1 on failure, 2 on bad arguments.
--probe-out FILE first runs the environment probe (probe_env.py) in this process and writes its report
to FILE, so `verify --smoke-chat` imports torch once; when torch does not import, no chat is tried.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _loader  # noqa: E402 - our sibling, found through the line above

DEFAULT_PROMPT = "Hello! How are you?"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="smoke_chat.py", description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--quant", choices=_loader.QUANTS, default="nf4")
    p.add_argument("--dtype", choices=_loader.DTYPES, default="auto")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--system", default=None)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--device-map", default="auto")
    p.add_argument("--json-out", default=None)
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--probe-out", default=None)
    return p.parse_args(argv)


def probe_first(path: str) -> str | None:
    """Run the env probe here and write its report to `path`; why the chat cannot run, or None."""
    import probe_env  # our sibling, like _loader

    report = probe_env.main([])
    write_json(path, report)
    torch = report.get("torch") or {}
    if not torch.get("imported"):
        return f"torch cannot be imported: {torch.get('error') or 'unknown error'}"
    return None


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Write atomically: the caller reads either the whole document or none."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, default=str) + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    notes = _loader.Notes()
    result: dict[str, Any] = {"ok": False, "model": args.model, "quant": args.quant,
                              "prompt": args.prompt, "max_new_tokens": args.max_new_tokens,
                              "sample": args.sample, "trust_remote_code": args.trust_remote_code,
                              "error": None, "error_type": None, "traceback": None, "oom": False}
    stage = "load"
    problem = probe_first(args.probe_out) if args.probe_out else None
    if problem:
        result.update(error=problem, error_type="ImportError", stage="import", versions=_loader.versions(),
                      warnings=notes.seen, timings={"total_s": time.perf_counter() - started})
        return result
    try:
        loaded = _loader.load(args.model, quant=args.quant, dtype=args.dtype,
                              trust_remote_code=args.trust_remote_code,
                              device_map=args.device_map, notes=notes)
        info = loaded.info
        result.update({k: info.get(k) for k in (
            "device", "dtype", "compute_dtype", "architecture", "gpu", "cuda_available",
            "torch_cuda", "placement", "versions")})
        timings: dict[str, Any] = {"import_s": info["import_s"], "load_s": info["load_s"]}
        result["timings"] = timings
        stage = "generate"
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": args.prompt})
        on_text = None if args.no_stream else _loader.write_text(sys.stderr)
        gen = _loader.generate(loaded, messages, max_new_tokens=args.max_new_tokens,
                               sample=args.sample, on_text=on_text, notes=notes)
        if on_text is not None:
            sys.stderr.write("\n")
        for key in ("reply", "n_prompt_tokens", "n_new_tokens", "stop_reason"):
            result[key] = gen[key]
        for key in ("ttft_s", "generate_s", "tokens_per_s", "decode_tokens_per_s"):
            timings[key] = gen[key]
        result["memory"] = _loader.memory(loaded)
        result["ok"] = True
        stage = "done"
    except BaseException as e:  # noqa: BLE001 - every failure becomes JSON for provision to diagnose
        if isinstance(e, KeyboardInterrupt):
            result.update(_loader.error_fields(e, stage), error="interrupted")
        else:
            result.update(_loader.error_fields(e, stage))
        if "versions" not in result:
            result["versions"] = _loader.versions()
        if stage == "load" and isinstance(e, ModuleNotFoundError):
            result["stage"] = "import"
    result["stage"] = result.get("stage") or stage
    result["warnings"] = notes.seen
    result.setdefault("timings", {})["total_s"] = time.perf_counter() - started
    return result


def main(argv: list[str]) -> int:
    args = parse(argv)
    result = run(args)
    text = json.dumps(result, default=str)
    if args.json_out:
        write_json(args.json_out, result)
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
