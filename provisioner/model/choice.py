"""Which model `up` sets up when no --model is given: pure arithmetic over the built-in table.

The rule (issue 10): the largest current Qwen chat model whose recommended precision (fit.py's
order: 16 bit, then int8, then nf4) fits the free GPU memory with at least a 4k-token context; on
a machine without a GPU, the smallest. "Current" means the Qwen2.5 `-Instruct` rows and the Qwen3
rows of data/qwen-models.yaml (Qwen3's post-trained chat models carry no suffix; their base models
are the `-Base` aliases), the same rule `provision explain` uses for "largest that fits". "Largest"
means most parameters. `--model` still wins: `for_flag` reports the fit of what was given.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from provisioner.model import fit
from provisioner.model.info import ModelSpec
from provisioner.units import gib

#: Table names `up` may choose by default: Qwen2.5 instruct models and the Qwen3 chat models.
CURRENT_CHAT = re.compile(r"^Qwen/(?:Qwen2\.5-[\d.]+B-Instruct|Qwen3-[\d.]+B)$")
#: The shortest context a default choice must leave room for (fit.py's default, Ollama's too).
MIN_CONTEXT = fit.DEFAULT_CONTEXT
#: The precisions `up` can load (the smoke chat and `provision chat`: 16 bit, int8, nf4).
UP_QUANTS = ("fp16", "bf16", "int8", "nf4")
#: Bytes per parameter of a checkpoint dtype, for the download estimate.
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}

FLAG, DEFAULT_GPU, DEFAULT_CPU = "flag", "default-for-gpu", "default-cpu"


@dataclass(frozen=True)
class NextUp:
    """The next larger current model and the least it would need (its smallest allowed precision)."""

    model: str
    quant: str
    needs_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.model, "quant": self.quant, "needs_bytes": self.needs_bytes}


@dataclass(frozen=True)
class ModelChoice:
    """The model `up` sets up, why, and what it costs; `to_dict` is the `model` object of `up --json`."""

    model: str
    chosen_by: str                   # "flag" | "default-for-gpu" | "default-cpu"
    reason: str
    context: int
    quant: str | None = None         # fit.py's name (bf16, fp16, int8, nf4); None: not known offline
    estimate_bytes: int | None = None
    fits: bool | None = None         # None: no free-memory figure (CPU) or no estimate
    gpu_free_bytes: int | None = None
    params: int | None = None
    download_bytes: int | None = None   # None: nothing to download (a local folder) or not known
    download_estimated: bool = True     # parameters x checkpoint dtype bytes, not the hub's file sizes
    next_up: NextUp | None = None
    kept: bool = False               # the choice of an earlier `up` on this machine, kept

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.model, "chosen_by": self.chosen_by, "quant": self.quant, "reason": self.reason,
                "context": self.context, "estimate_bytes": self.estimate_bytes, "fits": self.fits,
                "gpu_free_bytes": self.gpu_free_bytes, "params": self.params,
                "download_bytes": self.download_bytes, "download_estimated": self.download_estimated,
                "next_up": self.next_up.to_dict() if self.next_up is not None else None, "kept": self.kept}

    @property
    def how(self) -> str:
        """How it was chosen, in words."""
        return {FLAG: "given with --model", DEFAULT_GPU: "default for this GPU",
                DEFAULT_CPU: "default without a GPU"}[self.chosen_by]

    def describe(self) -> list[str]:
        """The plan's lines about the model."""
        head = f"Model: {self.model}"
        if self.quant is not None and self.estimate_bytes is not None:
            head += f" in {self.quant}, {gib(self.estimate_bytes)} at {self.context} tokens"
        lines = [f"{head} ({self.how}{', kept from the last run' if self.kept else ''})", f"  why: {self.reason}"]
        if self.download_bytes is not None:
            size = f"{self.download_bytes / 1e9:.1f} GB ({gib(self.download_bytes)})"
            lines.append(f"  download: {'about ' if self.download_estimated else ''}{size} of weights"
                         + (" (parameters x 2 bytes; the hub's files add a few MB)" if self.download_estimated
                            else ""))
        if self.next_up is not None:
            lines.append(f"  next size up: {self.next_up.model} needs {gib(self.next_up.needs_bytes)} "
                         f"in {self.next_up.quant} at {self.context} tokens")
        return lines


def is_current_chat(name: str) -> bool:
    """Whether a table name is one of `up`'s candidates (also what `provision explain` says fits)."""
    return CURRENT_CHAT.match(name) is not None


def candidates(specs: Iterable[ModelSpec]) -> list[ModelSpec]:
    """The current chat models among `specs`, smallest first (ties: by name, so the order is stable)."""
    return sorted((s for s in specs if is_current_chat(s.name)), key=lambda s: (s.params, s.name))


def download_bytes(spec: ModelSpec) -> int:
    """What the hub repo's weight files hold: every parameter at the checkpoint's dtype (bf16: 2 B)."""
    return spec.params * _DTYPE_BYTES.get(spec.dtype, 2)


def _nominal(name: str) -> float:
    """The size in the name ("Qwen/Qwen3-8B" -> 8.0): models sharing it are one size class."""
    found = re.search(r"-([\d.]+)B(?:-|$)", name)
    return float(found[1]) if found else 0.0


def _context_for(spec: ModelSpec, context: int) -> int | None:
    return context if spec.max_position <= 0 or context <= spec.max_position else None


def _report(spec: ModelSpec, free: int | None, context: int, quants: Sequence[str],
            prefer_bf16: bool) -> fit.FitReport | None:
    ctx = _context_for(spec, context)
    if ctx is None:
        return None
    return fit.fit(spec, gpu_free_bytes=free, context=ctx, batch=1, quants=quants, prefer_bf16=prefer_bf16)


def _least(report: fit.FitReport) -> fit.FitOption:
    return min(report.options, key=lambda o: (o.total_bytes, o.quant))


def _next_up(chosen: ModelSpec, pool: Sequence[ModelSpec], context: int, quants: Sequence[str],
             prefer_bf16: bool) -> NextUp | None:
    """The smallest model of the next larger size class, with what its smallest allowed precision needs."""
    for spec in pool:
        if _nominal(spec.name) <= _nominal(chosen.name) or spec.params <= chosen.params:
            continue
        report = _report(spec, None, context, quants, prefer_bf16)
        if report is not None:
            least = _least(report)
            return NextUp(spec.name, least.quant, least.total_bytes)
    return None


def choose_default(specs: Iterable[ModelSpec], gpu_free_bytes: int | None, *, min_context: int = MIN_CONTEXT,
                   quants: Sequence[str] = UP_QUANTS, prefer_bf16: bool = False, memory_source: str = "",
                   cpu_quant: str = "nf4", previous: str | None = None) -> ModelChoice:
    """The largest current chat model that fits `gpu_free_bytes` at `min_context` (None: no GPU).

    `quants`: the precisions allowed (all of UP_QUANTS unless `up --quant` names one); the first of
    fit.py's order that fits is the recommended one. `cpu_quant`: what `up` loads on the CPU.
    `previous`: the model an earlier `up` chose on this machine; kept while it is still a candidate
    and still fits, so a rerun does not switch models (and downloads) as free memory wanders.
    """
    pool = candidates(specs)
    if not pool:
        raise ValueError("the built-in table holds no current Qwen chat model")
    where = f" ({memory_source})" if memory_source else ""
    if gpu_free_bytes is None:
        return _cpu_choice(pool, min_context, quants, prefer_bf16, cpu_quant, memory_source, previous)
    fitting: list[tuple[ModelSpec, fit.FitOption]] = []
    for spec in pool:
        report = _report(spec, gpu_free_bytes, min_context, quants, prefer_bf16)
        if report is not None and report.recommended is not None:
            fitting.append((spec, report.recommended))
    free = gib(gpu_free_bytes)
    if not fitting:
        smallest = pool[0]
        report = _report(smallest, gpu_free_bytes, min_context, quants, prefer_bf16)
        least = _least(report) if report is not None else None
        need = f"; it needs {gib(least.total_bytes)} in {least.quant}" if least is not None else ""
        return _made(smallest, DEFAULT_GPU, least, gpu_free_bytes, min_context, pool, quants, prefer_bf16,
                     f"no current Qwen chat model fits {free} free{where} at {min_context} tokens; "
                     f"the smallest is planned{need}, and the fit stage stops before downloading it")
    spec, option = fitting[-1]
    reason = (f"the largest current Qwen chat model whose best precision fits {free} free{where} "
              f"with {min_context} tokens of context")
    kept = next(((s, o) for s, o in fitting if s.name == previous), None) if previous else None
    if kept is not None and kept[0].name != spec.name:
        reason = (f"chosen by an earlier `up` on this machine and still fits {free} free{where}; "
                  f"{spec.name} would fit now (pass --model {spec.name} to switch)")
        return _made(kept[0], DEFAULT_GPU, kept[1], gpu_free_bytes, min_context, pool, quants, prefer_bf16,
                     reason, kept=True)
    if previous and kept is None:
        gone = all(s.name != previous for s in pool)
        reason += f" (the earlier choice, {previous}, {'is no candidate any more' if gone else 'no longer fits'})"
    return _made(spec, DEFAULT_GPU, option, gpu_free_bytes, min_context, pool, quants, prefer_bf16, reason,
                 kept=kept is not None)


def _cpu_choice(pool: Sequence[ModelSpec], context: int, quants: Sequence[str], prefer_bf16: bool,
                cpu_quant: str, memory_source: str, previous: str | None) -> ModelChoice:
    smallest = next((s for s in pool if _context_for(s, context) is not None), pool[0])
    kept = previous == smallest.name
    ctx = _context_for(smallest, context) or smallest.max_position
    option = fit.estimate(smallest, cpu_quant, context=ctx)
    return _made(smallest, DEFAULT_CPU, option, None, ctx, pool, quants, prefer_bf16,
                 f"{memory_source or 'no GPU to fit against'}: the smallest current Qwen chat model, which "
                 f"the CPU runs in {cpu_quant} (the estimate is what a GPU would need)", kept=kept)


def _made(spec: ModelSpec, chosen_by: str, option: fit.FitOption | None, free: int | None, context: int,
          pool: Sequence[ModelSpec], quants: Sequence[str], prefer_bf16: bool, reason: str, *,
          kept: bool = False) -> ModelChoice:
    return ModelChoice(
        model=spec.name, chosen_by=chosen_by, reason=reason, context=context,
        quant=option.quant if option is not None else None,
        estimate_bytes=option.total_bytes if option is not None else None,
        fits=None if free is None or option is None else option.total_bytes <= free,
        gpu_free_bytes=free, params=spec.params, download_bytes=download_bytes(spec),
        next_up=_next_up(spec, pool, context, quants, prefer_bf16), kept=kept)


def for_flag(model: str, spec: ModelSpec | None, gpu_free_bytes: int | None, *, context: int | None,
             quants: Sequence[str] = UP_QUANTS, prefer_bf16: bool = False, cpu_quant: str = "nf4",
             local: bool = False, memory_source: str = "") -> ModelChoice:
    """`--model MODEL`: it wins; its fit is still reported (`spec` None: not readable offline)."""
    where = f" ({memory_source})" if memory_source else ""
    if spec is None:
        return ModelChoice(model=model, chosen_by=FLAG, context=context or MIN_CONTEXT,
                           gpu_free_bytes=gpu_free_bytes,
                           reason="given with --model; not in the built-in table, so the fit stage reads its "
                                  "size from the hub", download_bytes=None)
    report = fit.fit(spec, gpu_free_bytes=gpu_free_bytes, context=context, batch=1, quants=quants,
                     prefer_bf16=prefer_bf16)
    if gpu_free_bytes is None:
        option = fit.estimate(spec, cpu_quant, context=report.context)
        verdict = f"no GPU to fit against{where}; the CPU runs it in {cpu_quant}"
    elif report.recommended is not None:
        option = report.recommended
        verdict = f"{option.quant} fits {gib(gpu_free_bytes)} free{where}"
    else:
        option = _least(report)
        verdict = (f"it does not fit {gib(gpu_free_bytes)} free{where}: even {option.quant} needs "
                   f"{gib(option.total_bytes)}, so the fit stage stops before downloading")
    return ModelChoice(
        model=model, chosen_by=FLAG, reason=f"given with --model; {verdict}", context=report.context,
        quant=option.quant, estimate_bytes=option.total_bytes,
        fits=None if gpu_free_bytes is None else option.total_bytes <= gpu_free_bytes,
        gpu_free_bytes=gpu_free_bytes, params=spec.params,
        download_bytes=None if local else download_bytes(spec), download_estimated=spec.source != "safetensors")
