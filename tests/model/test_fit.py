"""`provision model fit`: the arithmetic against real loads, the Qwen table against the reference, the CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from provisioner.model import fit
from provisioner.model import info as modelinfo
from provisioner.cli import main
from provisioner.errors import ProvisionError, UsageError
from provisioner.model.info import ModelSpec
from tests.fixtures_model import TINY_CONFIGS
from tests.fixtures_nvml import GIB, FakeGpu, FakeMachine
from tests.hubserver import HubServer, Repo, tiny_tensors

FOOTPRINT = Path(modelinfo.__file__).parent.parent / "scripts" / "footprint.py"
QUANTS = ("fp32", "bf16", "int8", "nf4", "nf4-dq")

# ---------------------------------------------------------------------------- the Qwen table

# Copied from the team's reference data (compat-data.md §4.1 "Total params (computed)" and §4.2
# "KV bytes/token"), which cross-checks the totals against keras-hub's presets.
REFERENCE = [
    ("Qwen/Qwen1.5-0.5B-Chat", 463_987_712, 98_304),
    ("Qwen/Qwen1.5-1.8B-Chat", 1_836_828_672, 196_608),
    ("Qwen/Qwen1.5-4B-Chat", 3_950_369_280, 409_600),
    ("Qwen/Qwen1.5-7B-Chat", 7_721_324_544, 524_288),
    ("Qwen/Qwen1.5-14B-Chat", 14_167_290_880, 819_200),
    ("Qwen/Qwen1.5-32B-Chat", 32_512_218_112, 262_144),
    ("Qwen/Qwen1.5-72B-Chat", 72_287_920_128, 2_621_440),
    ("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768, 12_288),
    ("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304, 28_672),
    ("Qwen/Qwen2.5-3B-Instruct", 3_085_938_688, 36_864),
    ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512, 57_344),
    ("Qwen/Qwen2.5-14B-Instruct", 14_770_033_664, 196_608),
    ("Qwen/Qwen2.5-32B-Instruct", 32_763_876_352, 262_144),
    ("Qwen/Qwen2.5-72B-Instruct", 72_706_203_648, 327_680),
    ("Qwen/Qwen3-0.6B", 596_049_920, 114_688),
    ("Qwen/Qwen3-1.7B", 1_720_574_976, 114_688),
    ("Qwen/Qwen3-4B", 4_022_468_096, 147_456),
    ("Qwen/Qwen3-8B", 8_190_735_360, 147_456),
    ("Qwen/Qwen3-14B", 14_768_307_200, 163_840),
    ("Qwen/Qwen3-32B", 32_762_123_264, 262_144),
]


@pytest.mark.parametrize(("name", "params", "kv_per_token"),
                         [pytest.param(*row, id=row[0].split("/")[1]) for row in REFERENCE])
def test_table_reproduces_the_reference_figures(name: str, params: int, kv_per_token: int) -> None:
    spec = modelinfo.find_in_table(name)
    assert spec is not None and spec.source == "table"
    assert spec.params == params
    assert spec.quantizable_params + spec.other_params == params
    assert fit.kv_bytes_per_token(spec) == kv_per_token
    # Both spellings and the base-model alias name the same entry.
    assert modelinfo.find_in_table(name.split("/")[1].lower()) == spec
    entry = next(e for e in modelinfo.table() if e.name == name)
    assert entry.params == params          # the figure the YAML cites


def test_table_covers_exactly_the_reference_models() -> None:
    assert modelinfo.table_names() == [row[0] for row in REFERENCE]


def test_qwen25_7b_worked_example() -> None:
    """compat-data §5.1: 6,525,288,448 quantizable weights; bf16 14.19 GiB, NF4 5.45 / 5.17 GiB."""
    spec = modelinfo.find_in_table("qwen2.5-7b-instruct")
    assert spec is not None
    assert spec.quantizable_params == 6_525_288_448
    got = {q: round(fit.weight_bytes(spec, q).total / fit.GiB, 2) for q in ("bf16", "nf4", "nf4-dq")}
    assert got == {"bf16": 14.19, "nf4": 5.45, "nf4-dq": 5.17}
    # Unquantized embedding + untied lm_head + norms/biases: 2.03 GiB of the NF4 figure.
    assert round(spec.other_params * 2 / fit.GiB, 2) == 2.03
    assert round(fit.kv_bytes_per_token(spec) * 32768 / fit.GiB, 2) == 1.75


# ---------------------------------------------------------------------------- against measurement

@pytest.fixture(scope="module")
def measured(tiny_models: dict[str, Path], chat_env_python: Path) -> dict[str, dict[str, dict[str, int]]]:
    """get_memory_footprint() + quant-state bytes of every tiny model at every precision, loaded on CPU."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    out = subprocess.run([str(chat_env_python), str(FOOTPRINT), *map(str, tiny_models.values()),
                          "--quant", ",".join(QUANTS)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    return {name: doc[str(path)] for name, path in tiny_models.items()}


CASES = [pytest.param(m, q, id=f"{m}-{q}") for m in TINY_CONFIGS for q in QUANTS]


@pytest.mark.parametrize(("model", "quant"), CASES)
def test_weight_estimate_matches_the_loaded_model(model: str, quant: str, tiny_models: dict[str, Path],
                                                  measured: dict[str, dict[str, dict[str, int]]]) -> None:
    """Within 5% of get_memory_footprint(), and of footprint + the bnb state it does not count."""
    spec = modelinfo.resolve(str(tiny_models[model]), environ={})
    est = fit.weight_bytes(spec, quant)
    m = measured[model][quant]
    assert (est.dense + est.packed) == pytest.approx(m["footprint"], rel=0.05)
    assert est.total == pytest.approx(m["footprint"] + m["quant_state"], rel=0.05)
    assert est.constants == pytest.approx(m["quant_state"], rel=0.05, abs=64)


@pytest.mark.parametrize("model", list(TINY_CONFIGS))
def test_kv_bytes_per_token_equal_the_formula_and_a_real_cache(model: str, tiny_models: dict[str, Path],
                                                               measured: dict[str, dict[str, dict[str, int]]]) -> None:
    spec = modelinfo.resolve(str(tiny_models[model]), environ={})
    cfg = TINY_CONFIGS[model]
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // int(cfg["num_attention_heads"]))  # type: ignore[call-overload]
    formula = 2 * int(cfg["num_hidden_layers"]) * int(cfg["num_key_value_heads"]) * head_dim * 2  # type: ignore[call-overload]
    assert fit.kv_bytes_per_token(spec) == formula
    assert measured[model]["bf16"]["kv_bytes_per_token"] == formula
    assert measured[model]["fp32"]["kv_bytes_per_token"] == fit.kv_bytes_per_token(spec, 4)


@pytest.mark.parametrize("model", list(TINY_CONFIGS))
def test_config_arithmetic_equals_the_safetensors_count(model: str, tiny_models: dict[str, Path],
                                                        tmp_path: Path) -> None:
    exact = modelinfo.spec_from_folder(tiny_models[model])
    assert exact.source == "safetensors"
    assert exact.tie_embeddings is TINY_CONFIGS[model]["tie_word_embeddings"]
    shutil.copy(tiny_models[model] / "config.json", tmp_path / "config.json")
    from_config = modelinfo.spec_from_folder(tmp_path)
    assert from_config.source == "config"
    for field in ("params", "quantizable_params", "other_params", "quantizable_tensors", "quantizable_rows",
                  "head_dim", "kv_heads"):
        assert getattr(from_config, field) == getattr(exact, field), field


def test_sharded_checkpoint_is_read_through_its_index(tiny_models: dict[str, Path]) -> None:
    folder = tiny_models["qwen2-untied-gqa"]
    assert (folder / "model.safetensors.index.json").is_file()
    spec = modelinfo.spec_from_folder(folder)
    assert spec.params == modelinfo.spec_from_config(json.loads((folder / "config.json").read_text()),
                                                      name="x").params


# ---------------------------------------------------------------------------- safetensors edge cases

def write_safetensors(path: Path, header: dict[str, Any] | bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)


def test_broken_safetensors_and_missing_shards_are_explained(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64,
                                                      "num_attention_heads": 4, "num_hidden_layers": 1,
                                                      "intermediate_size": 128, "vocab_size": 10}))
    write_safetensors(tmp_path / "model.safetensors", b"{not json")
    with pytest.raises(ProvisionError, match="not a readable safetensors file"):
        modelinfo.spec_from_folder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": {"dtype": "BF16", "shape": [2],
                                                                          "data_offsets": [0, 4]}})
    with pytest.raises(ProvisionError) as e:
        modelinfo.spec_from_folder(tmp_path)
    assert e.value.message.endswith("missing: model-00002-of-00002.safetensors")
    assert "resumes" in (e.value.hint or "")


TINY_CONFIG = {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
               "intermediate_size": 128, "vocab_size": 10}


@pytest.mark.parametrize(("config", "tensors", "message", "hint"), [
    pytest.param("[]", None, "config.json is not a JSON object", "decoder-only transformers model",
                 id="config-not-object"),
    pytest.param("{not json", None, "config.json: not valid JSON", "provision model download", id="config-not-json"),
    pytest.param({**TINY_CONFIG, "head_dim": "abc"}, None, "config.json has no usable `head_dim` (found 'abc')",
                 "decoder-only transformers model", id="head-dim-text"),
    pytest.param({**TINY_CONFIG, "num_key_value_heads": -2}, None,
                 "config.json has no usable `num_key_value_heads` (found -2)", "decoder-only", id="kv-heads-negative"),
    pytest.param({**TINY_CONFIG, "max_position_embeddings": "long"}, None,
                 "config.json has no usable `max_position_embeddings`", "decoder-only", id="max-position-text"),
    pytest.param({**TINY_CONFIG, "num_hidden_layers": True}, None, "config.json has no usable `num_hidden_layers`",
                 "decoder-only", id="layers-bool"),
    pytest.param(TINY_CONFIG, {"a": [1, 2]}, "not a readable safetensors file (tensor 'a' has no valid shape)",
                 "provision model download", id="tensor-entry-not-object"),
    pytest.param(TINY_CONFIG, {"a": {"dtype": "BF16", "shape": ["x"]}}, "tensor 'a' has no valid shape",
                 "provision model download", id="shape-not-numbers"),
])
def test_malformed_model_files_are_explained(tmp_path: Path, config: Any, tensors: Any, message: str,
                                             hint: str) -> None:
    """A damaged or foreign config.json / safetensors header: one error with a hint, no traceback."""
    (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if tensors is not None:
        write_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(ProvisionError) as e:
        modelinfo.spec_from_folder(tmp_path)
    assert message in e.value.message and hint in (e.value.hint or "")
    result = CliRunner().invoke(main, ["model", "fit", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "\nhint: " in result.stderr
    assert "Traceback" not in result.output


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="no config.json"):
        modelinfo.spec_from_folder(tmp_path)


# ---------------------------------------------------------------------------- fit verdicts

def spec_7b() -> ModelSpec:
    spec = modelinfo.find_in_table("Qwen/Qwen2.5-7B-Instruct")
    assert spec is not None
    return spec


@pytest.mark.parametrize(("free_gib", "context", "recommended"), [
    pytest.param(80, 4096, "fp16", id="h100-16bit"),
    pytest.param(12, 4096, "int8", id="12g-int8"),
    pytest.param(8, 4096, "nf4", id="8g-laptop-nf4"),
    pytest.param(6.5, 4096, "nf4-dq", id="tight-double-quant"),
    pytest.param(4, 4096, None, id="too-small"),
])
def test_recommendation_is_the_best_precision_that_fits(free_gib: float, context: int,
                                                        recommended: str | None) -> None:
    report = fit.fit(spec_7b(), gpu_free_bytes=int(free_gib * fit.GiB), context=context)
    got = report.recommended
    assert (got.quant if got else None) == recommended
    for o in report.options:
        assert o.total_bytes == o.weights_bytes + o.kv_cache_bytes + o.overhead_bytes
        assert o.fits is (o.total_bytes <= report.gpu_free_bytes)  # type: ignore[operator]
        # max_context is the boundary: it fits, one more token does not (or max_position caps it).
        if o.max_context:
            at = fit.estimate(report.spec, o.quant, context=o.max_context)  # type: ignore[arg-type]
            assert at.total_bytes <= report.gpu_free_bytes  # type: ignore[operator]
            if o.max_context < 32768:
                assert fit.estimate(report.spec, o.quant, context=o.max_context + 1).total_bytes \
                    > report.gpu_free_bytes  # type: ignore[arg-type,operator]


def test_nothing_fits_names_the_shortfall_and_a_smaller_model() -> None:
    report = fit.fit(spec_7b(), gpu_free_bytes=4 * fit.GiB, context=4096)
    assert report.recommended is None
    assert report.advice == ("even nf4-dq needs 6.41 GiB at 4096 tokens, 2.41 GiB more than the 4.00 GiB free; "
                             "Qwen/Qwen3-4B fits in nf4 (provision model fit Qwen/Qwen3-4B)")
    check = fit.check_fit(report)
    assert check.status.value == "fail" and check.fix == report.advice


def test_shorter_context_is_offered_when_only_the_context_is_too_long() -> None:
    report = fit.fit(spec_7b(), gpu_free_bytes=int(6.5 * fit.GiB), context=32768, quants=("nf4",))
    assert report.recommended is None
    assert report.advice is not None and report.advice.startswith("nf4 fits with up to 3100 tokens")


def test_kv_cache_grows_with_context_and_batch_and_gqa_counts() -> None:
    spec = spec_7b()
    one = fit.estimate(spec, "nf4", context=4096)
    four = fit.estimate(spec, "nf4", context=4096, batch=4)
    assert one.kv_cache_bytes == 57_344 * 4096
    assert four.kv_cache_bytes == 4 * one.kv_cache_bytes
    mha = modelinfo.find_in_table("Qwen/Qwen1.5-7B-Chat")
    assert mha is not None
    assert fit.estimate(mha, "nf4", context=4096).kv_cache_bytes == 2 * 1024**3   # 512 KiB/token: 2 GiB


def test_context_beyond_max_position_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="longer than Qwen/Qwen2.5-7B-Instruct's 32768 positions"):
        fit.fit(spec_7b(), gpu_free_bytes=None, context=40000)


def test_gpu_memory_auto_reads_free_memory_from_nvml(fake_machine: Any) -> None:
    environ = fake_machine(FakeMachine(gpus=(FakeGpu(mem_used=2 * GIB),)))
    mem = fit.gpu_memory("auto", environ=environ)
    assert mem.free_bytes == 6 * GIB
    assert mem.prefer_bf16 is True                                    # CC 8.9
    assert mem.source == "NVML: GPU 0 NVIDIA GeForce RTX 4060 Laptop GPU, 6.00 GiB free of 8.00 GiB"
    pascal = fake_machine(FakeMachine(gpus=(FakeGpu(name="NVIDIA GeForce GTX 1080 Ti", cc="6.1"),)))
    assert fit.gpu_memory("auto", environ=pascal).prefer_bf16 is False


def test_gpu_memory_auto_without_a_gpu_gives_no_verdict(no_driver_environ: dict[str, str]) -> None:
    mem = fit.gpu_memory("auto", environ=no_driver_environ)
    assert mem.free_bytes is None and mem.source.startswith("no NVIDIA GPU found (")
    report = fit.fit(spec_7b(), gpu_free_bytes=None)
    assert report.recommended is None and report.advice is None
    assert all(o.fits is None and o.max_context is None for o in report.options)
    assert fit.check_fit(report).status.value == "skip"


@pytest.mark.parametrize(("value", "message"), [
    pytest.param("lots", "--gpu-memory must be a number of GiB or 'auto' (got 'lots')", id="word"),
    pytest.param("0", "--gpu-memory must be positive (got 0)", id="zero"),
    pytest.param("inf", "--gpu-memory must be a finite number of GiB (got inf)", id="infinite"),
    pytest.param("nan", "--gpu-memory must be a finite number of GiB (got nan)", id="nan"),
    pytest.param("1e30", "--gpu-memory must be at most 16384 GiB (got 1e30)", id="absurd"),
])
def test_gpu_memory_errors(value: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        fit.gpu_memory(value, environ={})
    assert e.value.message == message
    assert e.value.hint == "e.g. --gpu-memory 7.5 for 7.5 GiB free, or --gpu-memory auto to ask NVML"


# ---------------------------------------------------------------------------- the CLI

def test_json_document(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["model", "fit", "qwen2.5-7b-instruct", "--gpu-memory", "8", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc) == ["model", "params", "params_source", "params_source_note", "gpu_free_bytes", "options",
                         "recommended"]
    assert doc["model"] == "Qwen/Qwen2.5-7B-Instruct" and doc["params"] == 7_615_616_512
    assert doc["params_source"] == "built-in table" and doc["params_source_note"] is None
    assert doc["gpu_free_bytes"] == 8 * fit.GiB
    assert [o["quant"] for o in doc["options"]] == list(fit.QUANTS)
    assert all(list(o) == ["quant", "weights_bytes", "kv_cache_bytes", "overhead_bytes", "total_bytes", "fits",
                           "max_context"] for o in doc["options"])
    nf4 = doc["options"][4]
    assert nf4 == {"quant": "nf4", "weights_bytes": 5_851_143_936, "kv_cache_bytes": 234_881_024,
                   "overhead_bytes": 1_101_172_736, "total_bytes": 7_187_197_696, "fits": True,
                   "max_context": 10811}
    assert doc["recommended"] == {"quant": "nf4", "max_context": 10811}
    assert result.stderr == ""


def test_human_table_and_exit_code_when_nothing_fits() -> None:
    ok = CliRunner().invoke(main, ["model", "fit", "Qwen/Qwen2.5-7B-Instruct", "--gpu-memory", "8"])
    assert ok.exit_code == 0
    assert "Qwen/Qwen2.5-7B-Instruct: 7.62 B parameters (built-in table of config values)" in ok.stdout
    assert "nf4        5.45 GiB   0.22 GiB  1.03 GiB  6.69 GiB   yes   10811" in ok.stdout
    assert "Recommended: nf4, 6.69 GiB at 4096 tokens; up to 10811 tokens fit with it." in ok.stdout
    bad = CliRunner().invoke(main, ["model", "fit", "Qwen/Qwen2.5-7B-Instruct", "--gpu-memory", "4"])
    assert bad.exit_code == 1
    assert "Nothing fits in 4.00 GiB: even nf4-dq needs 6.41 GiB" in bad.stdout
    only = CliRunner().invoke(main, ["model", "fit", "qwen3-8b", "--gpu-memory", "24", "--quant", "nf4"])
    assert [line.split()[0] for line in only.stdout.splitlines() if line.startswith("nf4")] == ["nf4", "nf4-dq"]


@pytest.mark.parametrize(("args", "message", "hint"), [
    pytest.param(("qwen2.5-7b-instruc",), "error: unknown model 'qwen2.5-7b-instruc' (did you mean "
                 "'Qwen/Qwen2.5-7B-Instruct'?)", "hint: pass a folder with config.json, a hub id (org/name), "
                 "or one of the built-in names: Qwen/Qwen1.5-0.5B-Chat,", id="did-you-mean"),
    pytest.param(("./no-such-folder",), "error: model folder ./no-such-folder does not exist",
                 "hint: pass an existing folder", id="missing-folder"),
    pytest.param(("qwen3-8b", "--gpu-memory", "lots"), "error: --gpu-memory must be a number of GiB or 'auto' "
                 "(got 'lots')", "hint: e.g. --gpu-memory 7.5", id="gpu-memory"),
    pytest.param(("qwen3-8b", "--context", "50000"), "error: --context 50000 is longer than Qwen/Qwen3-8B's "
                 "40960 positions", "hint: use --context 40960 or less", id="context"),
])
def test_cli_errors(args: tuple[str, ...], message: str, hint: str | None) -> None:
    result = CliRunner().invoke(main, ["model", "fit", *args])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == message
    if hint:
        assert lines[1].startswith(hint)
    assert "Traceback" not in result.output


def test_hub_id_offline_and_not_in_the_table_says_what_works_offline() -> None:
    result = CliRunner().invoke(main, ["model", "fit", "acme/unknown-7b"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot read the config of acme/unknown-7b: acme/unknown-7b is not in "
                                    "the local cache and the hub is switched off (HF_HUB_OFFLINE)")
    assert "built-in names (see `provision model fit --help`) and local folders work offline" in result.stderr


def test_downloaded_hub_id_is_read_exactly_from_the_cache_offline(hub: HubServer, hub_repo: Repo,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert CliRunner().invoke(main, ["model", "download", "acme/tiny-qwen2", "--endpoint", hub.url]).exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = modelinfo.resolve("acme/tiny-qwen2", environ=dict(os.environ))
    assert spec.source == "safetensors" and spec.name == "acme/tiny-qwen2"
    assert spec.params == sum(_numel(shape) for _dtype, shape in tiny_tensors().values())


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
