"""`up`'s model: the one given with --model, else the default for this machine (model/choice.py),
kept across reruns in up.json while the machine and the options that decide it stay the same."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.model import choice as choice_mod
from provisioner.up.records import Records, fingerprint

if TYPE_CHECKING:
    from provisioner.facts import Facts
    from provisioner.model.choice import ModelChoice
    from provisioner.model.info import ModelSpec
    from provisioner.up.types import UpOptions

#: The up.json entry holding the last default choice (not a stage: the plan does not list it).
MODEL_RECORD = "model"


def fit_quant(quant: str) -> str:
    """`up`/smoke precision names -> `model fit` names (none = 16-bit)."""
    return {"none": "bf16"}.get(quant, quant)


def fit_quants(quant: str) -> tuple[str, ...]:
    """The precisions `up --quant` allows, in `model fit`'s names: 16 bit, int8 or nf4 for auto."""
    return choice_mod.UP_QUANTS if quant == "auto" else (fit_quant(quant),)


def cpu_quant(quant: str) -> str:
    """What `up` loads on the CPU (`model fit` name): 4-bit by default, as the walkthrough does."""
    return "nf4" if quant == "auto" else fit_quant(quant)


def machine_key(opts: UpOptions, facts: Facts | None) -> str:
    """What decides the default: the GPUs (names and total memory, not the free memory, which wanders
    between runs) and the options the choice takes."""
    info = facts.info if facts is not None else None
    gpus = [(g.index, g.name, g.memory_total) for g in info.gpus] if info is not None and info.loaded else []
    return fingerprint(gpus, opts.gpu_memory or "auto", opts.quant, opts.context)


def _offline_spec(model: str) -> ModelSpec | None:
    """A local folder's or the built-in table's spec; None for a hub id the fit stage must ask about
    (the plan reads nothing from the network)."""
    from provisioner.model import info as modelinfo

    folder = Path(model).expanduser()
    if folder.is_dir():
        return modelinfo.spec_from_folder(folder)
    return modelinfo.find_in_table(model)


def choose(opts: UpOptions, facts: Facts | None, records: Records, environ: Mapping[str, str]) -> ModelChoice:
    """--model if given (its fit reported); else the kept or the new default for this machine."""
    from provisioner.model import fit
    from provisioner.model import info as modelinfo

    memory = fit.gpu_memory(opts.gpu_memory or "auto", environ=environ,
                            info=facts.info if facts is not None else None)
    quants = fit_quants(opts.quant)
    if opts.model is not None:
        return choice_mod.for_flag(opts.model, _offline_spec(opts.model), memory.free_bytes, context=opts.context,
                                   quants=quants, prefer_bf16=memory.prefer_bf16, cpu_quant=cpu_quant(opts.quant),
                                   local=Path(opts.model).expanduser().is_dir(), memory_source=memory.source)
    kept = records.get(MODEL_RECORD, machine_key(opts, facts)) or {}
    previous = kept.get("model") if isinstance(kept.get("model"), str) else None
    return choice_mod.choose_default([e.spec for e in modelinfo.table()], memory.free_bytes,
                                     min_context=opts.context or choice_mod.MIN_CONTEXT, quants=quants,
                                     prefer_bf16=memory.prefer_bf16, memory_source=memory.source,
                                     cpu_quant=cpu_quant(opts.quant), previous=previous)


def remember(opts: UpOptions, facts: Facts | None, records: Records, chosen: ModelChoice) -> None:
    """Record a default choice once it passed the fit stage; --model leaves the record alone, so
    `up` without it comes back to this machine's default."""
    if chosen.chosen_by != choice_mod.FLAG:
        records.done(MODEL_RECORD, machine_key(opts, facts),
                     {"model": chosen.model, "quant": chosen.quant, "chosen_by": chosen.chosen_by})
