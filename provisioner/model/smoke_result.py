"""What one smoke chat measured, and the verdicts on it.

Apart from running the chat (provisioner.model.smoke) so the verdicts depend only on the numbers: the
tests judge made-up results without a model.
"""
from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from provisioner.report import Check, Status
from provisioner.units import human_bytes

REPLY_SHOWN = 80


@dataclass(frozen=True)
class SmokeResult:
    """What one smoke chat measured (every field of the script's JSON that provision uses)."""

    model: str
    quant: str
    ok: bool
    reply: str = ""
    n_new_tokens: int = 0
    n_prompt_tokens: int = 0
    stop_reason: str | None = None
    device: str | None = None            # "cuda:0", "cpu"
    dtype: str | None = None
    compute_dtype: str | None = None
    cuda_available: bool = False
    torch_cuda: str | None = None         # torch.version.cuda: None for a CPU wheel
    load_s: float | None = None
    ttft_s: float | None = None
    generate_s: float | None = None
    tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    peak_bytes: int | None = None
    peak_kind: str | None = None          # "cuda_max_allocated" | "peak_rss"
    footprint_bytes: int | None = None
    rss_before_load_bytes: int | None = None
    placement: Mapping[str, Any] = field(default_factory=dict)
    gpu: Mapping[str, Any] | None = None
    versions: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    oom: bool = False
    stage: str | None = None              # "import" | "load" | "generate" | "done"
    wall_s: float | None = None           # the whole subprocess, interpreter start included
    returncode: int | None = None
    command: tuple[str, ...] = ()

    @classmethod
    def from_script(cls, doc: Mapping[str, Any], **extra: Any) -> SmokeResult:
        timings = doc.get("timings") or {}
        mem = doc.get("memory") or {}
        return cls(
            model=str(doc.get("model", "")), quant=str(doc.get("quant", "")), ok=bool(doc.get("ok")),
            reply=doc.get("reply") or "", n_new_tokens=int(doc.get("n_new_tokens") or 0),
            n_prompt_tokens=int(doc.get("n_prompt_tokens") or 0), stop_reason=doc.get("stop_reason"),
            device=doc.get("device"), dtype=doc.get("dtype"), compute_dtype=doc.get("compute_dtype"),
            cuda_available=bool(doc.get("cuda_available")), torch_cuda=doc.get("torch_cuda"),
            load_s=timings.get("load_s"), ttft_s=timings.get("ttft_s"),
            generate_s=timings.get("generate_s"), tokens_per_s=timings.get("tokens_per_s"),
            decode_tokens_per_s=timings.get("decode_tokens_per_s"),
            peak_bytes=mem.get("peak_bytes"), peak_kind=mem.get("kind"),
            footprint_bytes=mem.get("footprint_bytes"),
            rss_before_load_bytes=mem.get("rss_before_load_bytes"),
            placement=doc.get("placement") or {}, gpu=doc.get("gpu"),
            versions=doc.get("versions") or {}, warnings=tuple(doc.get("warnings") or ()),
            error=doc.get("error"), error_type=doc.get("error_type"), traceback=doc.get("traceback"),
            oom=bool(doc.get("oom")), stage=doc.get("stage"), **extra)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SmokeResult:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["warnings"] = tuple(known.get("warnings") or ())
        known["command"] = tuple(known.get("command") or ())
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def on_gpu(self) -> bool:
        return bool(self.device and self.device.startswith("cuda"))


# ------------------------------------------------------------------------------------------
# verdicts


def _known(text: str) -> tuple[str | None, str | None]:
    """(cause, fix) for a known error string, from known_messages when that module is present."""
    try:
        from provisioner import known_messages
    except ImportError:
        return None, None
    try:
        found = known_messages.match(text)
    except Exception:  # noqa: BLE001 - a broken table must not hide the smoke result itself
        return None, None
    if found is None:
        return None, None
    return getattr(found, "cause", None), getattr(found, "fix", None)


DISPATCH = "dispatched on the CPU or the disk"


def _quant_text(r: SmokeResult) -> str:
    if r.quant == "nf4":
        return f"nf4, compute {r.compute_dtype}"
    if r.quant == "int8":
        return "int8"
    return f"{r.dtype}, not quantized"


#: transformers' words when a hub id is neither cached nor reachable (offline, firewall, bad mirror).
HUB_UNREACHABLE = ("couldn't connect to", "offline mode", "is not a local folder and is not a valid model")


def _own_cause(r: SmokeResult) -> tuple[str | None, str | None]:
    """(cause, fix) for failures that are about the smoke chat's own inputs, not the machine."""
    text = (r.error or "").lower()
    if r.error_type == "OSError" and any(m in text for m in HUB_UNREACHABLE):
        return (f"{r.model} is not on this machine (not a folder, not in the Hugging Face cache) and "
                f"the hub could not be reached",
                f"download it first: provision model download {r.model} (through a mirror: "
                f"--mirror NAME or --endpoint URL), or pass a local folder")
    return None, None


def _failure_fix(r: SmokeResult) -> str:
    by_type = {
        "ModelNotFound": "pass a folder holding config.json and the weights, or a hub id "
                         "(fetch it first: provision model download ID --local-dir DIR)",
        "NoChatTemplate": "use the chat variant of the model (…-Instruct, …-Chat): a base model "
                          "has no chat template",
        "ModuleNotFoundError": "build the environment with its packages: provision env create",
        "Timeout": "check `provision verify` (a busy or missing GPU makes it crawl), or pass a "
                   "smaller --max-new-tokens",
        "Killed": "free system RAM or pick a smaller model/precision (`provision model fit`)",
    }
    if r.error_type in by_type:
        return by_type[r.error_type]
    if r.command:
        return "run it by hand to see everything it printed: " + shlex.join(r.command)
    return "run `provision verify` to check the environment"


def check_smoke(result: SmokeResult, *, estimate_bytes: int | None = None, gpu_present: bool = False,
                fit_hint: str | None = None, expect: str | None = None,
                bandwidth_bytes_per_s: float | None = None) -> list[Check]:
    """Verdicts on one smoke chat: smoke.load, smoke.placement, smoke.reply, smoke.memory, smoke.speed."""
    r = result
    gpu = gpu_present or r.cuda_available
    if not r.ok:
        return _failed(r, gpu=gpu, estimate_bytes=estimate_bytes, fit_hint=fit_hint)
    return [
        Check("smoke.load", Status.OK,
              f"loaded {r.model} ({_quant_text(r)}) in {r.load_s or 0:.1f} s on {r.device}; "
              f"weights {human_bytes(r.footprint_bytes)}",
              data={"load_s": r.load_s, "device": r.device, "dtype": r.dtype,
                    "compute_dtype": r.compute_dtype, "quant": r.quant,
                    "footprint_bytes": r.footprint_bytes, "versions": dict(r.versions),
                    "warnings": list(r.warnings)}),
        _placement(r, gpu=gpu, fit_hint=fit_hint),
        _reply(r, expect=expect),
        _memory(r, estimate_bytes=estimate_bytes),
        _speed(r, bandwidth_bytes_per_s=bandwidth_bytes_per_s),
    ]


def _failed(r: SmokeResult, *, gpu: bool, estimate_bytes: int | None,
            fit_hint: str | None) -> list[Check]:
    first = (r.error or "").strip().splitlines()[0] if r.error else "unknown error"
    cause, fix = _own_cause(r)
    if cause is None:
        cause, fix = _known(f"{r.error or ''}\n{r.traceback or ''}")
    doing = {"import": "importing torch/transformers", "generate": "generating a reply",
             "load": f"loading {r.model}"}.get(r.stage or "", f"the smoke chat of {r.model}")
    message = f"{doing} failed: {r.error_type}: {first}" if r.error_type not in (
        "ModelNotFound", "Timeout", "Killed", "Crashed") else f"{doing} failed: {first}"
    if cause:
        message += f"\ncause: {cause}"
    data = {"error": r.error, "error_type": r.error_type, "stage": r.stage,
            "traceback": r.traceback, "returncode": r.returncode, "oom": r.oom}
    check_id = "smoke.reply" if r.stage == "generate" else "smoke.load"
    checks = [Check(check_id, Status.FAIL, message, fix=fix or _failure_fix(r), data=data)]
    if DISPATCH in (r.error or "") or DISPATCH in (r.traceback or ""):
        checks.append(Check(
            "smoke.placement", Status.FAIL,
            "the model did not fit in free GPU memory, so device_map='auto' put some modules on "
            "the CPU or disk, which bitsandbytes refuses for quantized weights",
            fix=fit_hint or f"free GPU memory (see `provision verify`) or pick a precision that "
                            f"fits: provision model fit {r.model}",
            data={"gpu": dict(r.gpu or {})}))
    if r.oom:
        where = "system RAM" if r.error_type == "Killed" or not gpu else "GPU memory"
        est = f" (estimate {human_bytes(estimate_bytes)})" if estimate_bytes else ""
        checks.append(Check(
            "smoke.memory", Status.FAIL,
            f"ran out of {where} while {doing} at --quant {r.quant}{est}",
            fix=fit_hint or f"see what fits: provision model fit {r.model} (try --quant nf4 or a "
                            f"smaller --max-new-tokens)",
            data={"estimate_bytes": estimate_bytes, "gpu": dict(r.gpu or {})}))
    return checks


def _placement(r: SmokeResult, *, gpu: bool, fit_hint: str | None) -> Check:
    p = r.placement
    by_device = dict(p.get("modules_by_device") or {})
    total = int(p.get("n_modules") or sum(by_device.values()))
    bytes_by_device: dict[str, int] = {str(k): int(v) for k, v in
                                       (p.get("bytes_by_device") or {}).items()}
    data = {"modules_by_device": by_device, "bytes_by_device": bytes_by_device,
            "offloaded": list(p.get("offloaded") or []), "device_map": dict(p.get("device_map") or {})}
    where = ", ".join(f"{n} on {dev}" for dev, n in sorted(by_device.items())) or "unknown"
    if gpu and not r.on_gpu:
        torch_build = r.versions.get("torch") or "?"
        return Check(
            "smoke.placement", Status.FAIL,
            f"the model ran on {r.device} although this machine has a GPU: torch {torch_build} in "
            f"this environment does not see it ("
            + (f"built for CUDA {r.torch_cuda}" if r.torch_cuda else "a CPU-only build") + ")",
            fix="`provision verify --env ENV` says why (CPU wheel, driver too old); rebuild with "
                "provision env create", data=data)
    offloaded = int(p.get("n_offloaded") or 0)
    if gpu and offloaded:
        off_bytes = sum(v for dev, v in bytes_by_device.items() if not dev.startswith("cuda"))
        free = (r.gpu or {}).get("free_before_load_bytes")
        free_text = f" ({human_bytes(free)} was free before loading)" if free else ""
        return Check(
            "smoke.placement", Status.FAIL,
            f"{offloaded} of {total} modules ({human_bytes(off_bytes)}) were offloaded off the GPU "
            f"({where}): the model did not fit in free GPU memory{free_text}, so it runs many "
            f"times slower",
            fix=fit_hint or f"free GPU memory or pick a precision that fits: provision model fit {r.model}",
            data=data)
    if not gpu:
        return Check("smoke.placement", Status.OK,
                     f"all {total} modules on {r.device} (no GPU on this machine)", data=data)
    return Check("smoke.placement", Status.OK, f"all {total} modules on the GPU ({where})", data=data)


def _reply(r: SmokeResult, *, expect: str | None) -> Check:
    data = {"reply": r.reply, "n_new_tokens": r.n_new_tokens, "n_prompt_tokens": r.n_prompt_tokens,
            "stop_reason": r.stop_reason}
    if not r.reply.strip():
        why = ("it ended its turn at once" if r.stop_reason == "eos" and r.n_new_tokens <= 1
               else f"the {r.n_new_tokens} new token(s) decode to nothing but whitespace or "
                    f"special tokens")
        return Check("smoke.reply", Status.FAIL, f"the model gave an empty reply: {why}",
                     fix=f"check that {r.model} is a chat (Instruct) model with a matching chat "
                         f"template; try another prompt with --prompt", data=data)
    shown = r.reply.strip().replace("\n", " ")
    if len(shown) > REPLY_SHOWN:
        shown = shown[:REPLY_SHOWN - 1] + "…"
    detail = f'"{shown}" ({r.n_new_tokens} tokens, stopped at {r.stop_reason})'
    if expect is not None and expect.lower() not in r.reply.lower():
        return Check("smoke.reply", Status.FAIL, f"the reply lacks '{expect}': {detail}",
                     fix="a wrong answer from a loaded model points at the weights or the "
                         "quantization: compare with --quant none", data=data)
    return Check("smoke.reply", Status.OK, f"replied {detail}", data=data)


def _memory(r: SmokeResult, *, estimate_bytes: int | None) -> Check:
    data: dict[str, Any] = {"peak_bytes": r.peak_bytes, "kind": r.peak_kind,
                            "estimate_bytes": estimate_bytes, "footprint_bytes": r.footprint_bytes}
    if r.peak_kind == "cuda_max_allocated":
        peak = f"peak {human_bytes(r.peak_bytes)} allocated on the GPU"
        if estimate_bytes and r.peak_bytes:
            ratio = r.peak_bytes / estimate_bytes
            data["ratio"] = round(ratio, 3)
            text = f"{peak}, {ratio:.0%} of the {human_bytes(estimate_bytes)} estimate"
            if ratio > 1.0:
                return Check("smoke.memory", Status.WARN,
                             text + ": the estimate is low for this model, so `model fit` may "
                                    "promise a fit that fails", data=data)
            return Check("smoke.memory", Status.OK, text, data=data)
        return Check("smoke.memory", Status.OK, peak, data=data)
    data["rss_before_load_bytes"] = r.rss_before_load_bytes
    est = f"; estimate {human_bytes(estimate_bytes)} (not comparable)" if estimate_bytes else ""
    return Check("smoke.memory", Status.OK,
                 f"peak RSS {human_bytes(r.peak_bytes)} (the Python and torch runtime included: "
                 f"{human_bytes(r.rss_before_load_bytes)} before loading; weights "
                 f"{human_bytes(r.footprint_bytes)}){est}", data=data)


def _speed(r: SmokeResult, *, bandwidth_bytes_per_s: float | None) -> Check:
    data: dict[str, Any] = {"ttft_s": r.ttft_s, "tokens_per_s": r.tokens_per_s,
                            "decode_tokens_per_s": r.decode_tokens_per_s, "generate_s": r.generate_s}
    if not r.n_new_tokens or not r.tokens_per_s:
        return Check("smoke.speed", Status.WARN, "no tokens were generated, so there is no speed",
                     data=data)
    text = (f"first token after {r.ttft_s or 0:.2f} s, {r.tokens_per_s:.1f} tokens/s over "
            f"{r.n_new_tokens} tokens")
    if r.decode_tokens_per_s:
        text += f" ({r.decode_tokens_per_s:.1f} tokens/s after the first)"
    if bandwidth_bytes_per_s and r.footprint_bytes:
        # Each decoded token reads every weight once: bandwidth / weight bytes bounds tokens/s.
        bound = bandwidth_bytes_per_s / r.footprint_bytes
        rate = r.decode_tokens_per_s or r.tokens_per_s
        data["bandwidth_bound_tokens_per_s"] = bound
        data["fraction_of_bound"] = rate / bound
        text += f"; {rate / bound:.1%} of the memory-bandwidth bound ({bound:.0f} tokens/s)"
    return Check("smoke.speed", Status.OK, text, data=data)
