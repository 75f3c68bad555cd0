"""`up`'s default model: the largest current Qwen chat model that fits, over the built-in table."""
from __future__ import annotations

from typing import Any

import pytest

from provisioner.model import choice, fit
from provisioner.model import info as modelinfo
from provisioner.model.info import ModelSpec
from provisioner.units import gib

GIB = 1 << 30
SPECS = [e.spec for e in modelinfo.table()]
POOL = choice.candidates(SPECS)


def _choose(free_gib: float | None, **kwargs: Any) -> choice.ModelChoice:
    free = None if free_gib is None else int(free_gib * GIB)
    return choice.choose_default(SPECS, free, **kwargs)


def _need(name: str, quant: str, context: int = 4096) -> int:
    spec = modelinfo.find_in_table(name)
    assert spec is not None
    return fit.estimate(spec, quant, context=context).total_bytes


def test_candidates_are_the_qwen25_instruct_and_qwen3_chat_models_smallest_first() -> None:
    names = [s.name for s in POOL]
    assert names == ["Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen3-0.6B", "Qwen/Qwen2.5-1.5B-Instruct",
                     "Qwen/Qwen3-1.7B", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen3-4B", "Qwen/Qwen2.5-7B-Instruct",
                     "Qwen/Qwen3-8B", "Qwen/Qwen3-14B", "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen3-32B",
                     "Qwen/Qwen2.5-32B-Instruct", "Qwen/Qwen2.5-72B-Instruct"]
    assert not any(choice.is_current_chat(n) for n in ("Qwen/Qwen1.5-7B-Chat", "Qwen/Qwen2.5-7B",
                                                       "Qwen/Qwen3-8B-Base", "Qwen/Qwen2.5-Coder-7B-Instruct"))


SEVEN_B_CLASS = ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen3-8B")


@pytest.mark.parametrize("free_gib", [
    pytest.param(7.3, id="7.3-free"),           # a desktop holds 0.7 GiB
    pytest.param(7.5, id="7.5-free"),
    pytest.param(8.0, id="whole-8-GiB-card"),
])
def test_an_8_gib_card_gets_the_7b_class_in_nf4(free_gib: float) -> None:
    c = _choose(free_gib)
    model = c.model
    assert model in SEVEN_B_CLASS
    assert (c.quant, c.chosen_by, c.fits, c.context) == ("nf4", "default-for-gpu", True, 4096)
    # Qwen3-8B (more parameters) whenever it fits, else Qwen2.5-7B
    assert (model == "Qwen/Qwen3-8B") == (_need("Qwen/Qwen3-8B", "nf4") <= free_gib * GIB)
    assert c.estimate_bytes == _need(model, "nf4") <= free_gib * GIB
    # what fit.py itself recommends for that model on that card
    spec = modelinfo.find_in_table(model)
    assert spec is not None
    report = fit.fit(spec, gpu_free_bytes=int(free_gib * GIB), context=4096, quants=choice.UP_QUANTS)
    assert report.recommended is not None and report.recommended.quant == "nf4"
    assert c.next_up is not None and c.next_up.needs_bytes > free_gib * GIB
    assert c.download_bytes == (c.params or 0) * 2 and c.download_estimated      # bf16 checkpoints


def test_the_next_size_up_is_the_next_size_class_at_its_least_need() -> None:
    c = _choose(8)
    assert c.next_up == choice.NextUp("Qwen/Qwen3-14B", "nf4", _need("Qwen/Qwen3-14B", "nf4"))
    assert f"  next size up: Qwen/Qwen3-14B needs {gib(c.next_up.needs_bytes)} in nf4 at 4096 tokens" in c.describe()


def test_24_gib_gets_a_larger_model_than_8() -> None:
    c = _choose(24)
    assert (c.model, c.quant) == ("Qwen/Qwen2.5-32B-Instruct", "nf4")
    assert (c.params or 0) > (_choose(8).params or 0)
    assert c.next_up is not None and c.next_up.model == "Qwen/Qwen2.5-72B-Instruct"


def test_80_gib_gets_the_largest_model_in_the_best_precision_that_fits() -> None:
    c = _choose(80)
    # 72B does not fit 80 GiB in 16 bit (138 GiB), int8 does (72.8 GiB); nothing is larger
    assert (c.model, c.quant, c.next_up) == ("Qwen/Qwen2.5-72B-Instruct", "int8", None)
    assert c.estimate_bytes == _need("Qwen/Qwen2.5-72B-Instruct", "int8")


def test_a_card_that_holds_72b_in_16_bit_names_the_dtype_it_computes_in() -> None:
    assert (_choose(141).quant, _choose(141, prefer_bf16=True).quant) == ("fp16", "bf16")


def test_without_a_gpu_the_smallest_in_nf4() -> None:
    c = _choose(None, memory_source="no NVIDIA GPU found (NVML Shared Library Not Found)")
    assert (c.model, c.quant, c.chosen_by, c.fits, c.gpu_free_bytes) == (
        "Qwen/Qwen2.5-0.5B-Instruct", "nf4", "default-cpu", None, None)
    assert c.reason.startswith("no NVIDIA GPU found (NVML Shared Library Not Found): the smallest")


def test_a_gpu_too_small_for_anything_plans_the_smallest_and_says_it_does_not_fit() -> None:
    c = _choose(0)
    assert (c.model, c.quant, c.fits, c.chosen_by) == ("Qwen/Qwen2.5-0.5B-Instruct", "nf4", False, "default-for-gpu")
    assert "no current Qwen chat model fits 0.00 GiB free" in c.reason and "stops before downloading" in c.reason


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name.split("/")[1]) for s in POOL])
def test_boundary_each_model_is_chosen_from_exactly_its_need(spec: ModelSpec) -> None:
    need = min(fit.estimate(spec, q, context=4096).total_bytes for q in choice.UP_QUANTS)
    at = choice.choose_default(SPECS, need)
    assert (at.model, at.estimate_bytes, at.fits) == (spec.name, need, True)
    below = choice.choose_default(SPECS, need - 1)
    if spec is POOL[0]:
        assert (below.model, below.fits) == (spec.name, False)      # nothing fits: still planned, flagged
    else:
        assert below.fits and (below.params or 0) < spec.params


def test_int8_boundary_moves_the_same_model_up_a_precision() -> None:
    need = _need("Qwen/Qwen3-8B", "int8")
    assert (_choose(need / GIB).quant, choice.choose_default(SPECS, need - 1).quant) == ("int8", "nf4")


def test_quant_option_restricts_the_precisions() -> None:
    c = _choose(24, quants=("int8",))
    assert (c.model, c.quant) == ("Qwen/Qwen2.5-14B-Instruct", "int8")
    assert c.next_up == choice.NextUp("Qwen/Qwen3-32B", "int8", _need("Qwen/Qwen3-32B", "int8"))


def test_a_longer_context_asks_for_more_room() -> None:
    c = _choose(8, min_context=32768)
    assert c.context == 32768 and (c.params or 0) < (_choose(8).params or 0)
    assert c.estimate_bytes == _need(c.model, c.quant or "", 32768) <= 8 * GIB


def test_an_earlier_choice_is_kept_while_it_fits() -> None:
    c = _choose(8, previous="Qwen/Qwen2.5-7B-Instruct")
    assert (c.model, c.kept) == ("Qwen/Qwen2.5-7B-Instruct", True)
    assert "Qwen/Qwen3-8B would fit now (pass --model Qwen/Qwen3-8B to switch)" in c.reason
    same = _choose(8, previous="Qwen/Qwen3-8B")
    assert (same.model, same.kept) == ("Qwen/Qwen3-8B", True)


def test_an_earlier_choice_that_no_longer_fits_is_replaced() -> None:
    c = _choose(7.3, previous="Qwen/Qwen3-8B")
    assert (c.model, c.kept) == ("Qwen/Qwen2.5-7B-Instruct", False)
    assert "(the earlier choice, Qwen/Qwen3-8B, no longer fits)" in c.reason
    gone = _choose(8, previous="Qwen/Qwen9-1B")
    assert (gone.model, gone.kept) == ("Qwen/Qwen3-8B", False) and "is no candidate any more" in gone.reason


def test_a_flag_model_wins_and_its_fit_is_reported() -> None:
    spec = modelinfo.find_in_table("Qwen/Qwen2.5-14B-Instruct")
    c = choice.for_flag("Qwen/Qwen2.5-14B-Instruct", spec, 8 * GIB, context=None)
    assert (c.chosen_by, c.quant, c.fits, c.next_up) == ("flag", "nf4", False, None)
    assert c.estimate_bytes == _need("Qwen/Qwen2.5-14B-Instruct", "nf4")
    assert "does not fit 8.00 GiB free" in c.reason
    unknown = choice.for_flag("someone/some-model", None, 8 * GIB, context=None)
    assert (unknown.quant, unknown.estimate_bytes, unknown.download_bytes) == (None, None, None)
    assert unknown.describe()[0] == "Model: someone/some-model (given with --model)"
