"""`provision explain` end to end: the command, verify/report/explain agreement, probes counted,
and parsers that never raise on damaged input (hypothesis)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner import explain
from provisioner.cli import main
from provisioner.explain import nvcc as nvcc_mod
from provisioner.explain import pyenv, smi, text
from tests.fixtures_nvml import FakeMachine, MachineFactory
from tests.helpers_cuda import link_cuda, make_toolkit

CORPUS = Path(__file__).parent.parent / "data" / "explain"
CORPUS_FILES = sorted(CORPUS.glob("*/*.txt"))
SMI = CORPUS / "nvidia-smi"


def run(args: list[str], environ: dict[str, str], stdin: str | bytes | None = None) -> Any:
    return CliRunner().invoke(main, args, env=environ, input=stdin, catch_exceptions=False)


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config"),
            "XDG_STATE_HOME": str(tmp_path / ".state"), "PATH": "/usr/bin:/bin"}


# ---------------------------------------------------------------------------- the command

def test_a_driver_too_old_traceback_names_the_cause_the_value_and_a_profile_it_can_run(
        environ: dict[str, str]) -> None:
    paste = CORPUS / "errors" / "err-t-003-driver-too-old-11040-runtimeerror-oneline.txt"
    r = run(["explain", "--json", str(paste)], environ)
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["version"] == 1
    (cause,) = [c for c in doc["causes"] if c["id"] == "driver-too-old"]
    assert cause["values"]["driver_cuda"] == "11.4"
    assert "found version 11040" in cause["line"]["text"]
    # a CUDA 11.4 driver runs the CUDA 11.8 build through minor-version compatibility, not 12.x
    assert cause["fix"].startswith("provision env create --profile cu118")
    assert doc["facts"]["driver"]["cuda"] == "11.4"
    assert doc["facts"]["driver"]["version"] is None      # the paste shows no driver version: none invented


def test_an_nvidia_smi_paste_alone_names_the_newest_profile_and_the_models_that_fit(
        environ: dict[str, str]) -> None:
    paste = SMI / "smi-m-019-rtx4060-windows-591-driver-model.txt"
    r = run(["explain", str(paste)], environ)
    assert r.exit_code == 0, r.output
    assert "driver.version  591.86" in r.output
    assert "newest bundled profile this driver and GPU run: cu132" in r.output
    # 8 GB (8188 MiB): the walkthrough's 7B in NF4, not bf16
    assert "Qwen/Qwen2.5-7B-Instruct in nf4" in r.output
    assert "Verdict: nothing wrong found" in r.output


def test_json_document_has_the_documented_keys(environ: dict[str, str]) -> None:
    paste = SMI / "smi-m-002-b200x2-r610.txt"
    doc = json.loads(run(["explain", "--json", str(paste)], environ).stdout)
    assert set(doc) >= {"version", "facts", "checks", "causes", "unread"}
    facts = doc["facts"]
    assert facts["driver"] == {"version": "610.43.02", "cuda": "13.3", "status": "ok"}
    assert [(g["name"], g["memory_total_mib"], g["cc"]) for g in facts["gpus"]] == [
        ("NVIDIA B200", 183359, "10.0"), ("NVIDIA B200", 183359, "10.0")]
    assert facts["toolkit"] == {"version": None, "full": None}
    assert all(set(c) == {"id", "status", "message", "fix", "data"} for c in doc["checks"])
    assert {c["id"] for c in doc["checks"]} >= {"driver", "driver.cuda", "gpu.0", "gpu.0.memory", "gpu.1"}


def test_na_cuda_cell_is_not_available_not_a_number(environ: dict[str, str]) -> None:
    paste = next(p for p in SMI.glob("*.txt") if "CUDA Version: N/A" in p.read_text(errors="replace"))
    doc = json.loads(run(["explain", "--json", str(paste)], environ).stdout)
    assert doc["facts"]["driver"]["cuda"] is None
    (check,) = [c for c in doc["checks"] if c["id"] == "driver.cuda"]
    assert check["status"] in ("warn", "fail") and "N/A" in check["message"]


def test_stdin_several_files_and_exit_codes(environ: dict[str, str], tmp_path: Path) -> None:
    nothing = tmp_path / "notes.txt"
    nothing.write_text("I tried everything and it still does not work, please help\n")
    r = run(["explain", str(nothing)], environ)
    assert r.exit_code == 2 and "nothing recognisable" in r.output
    r = run(["explain"], environ, stdin=(SMI / "smi-o-001-mismatch-570.txt").read_bytes())
    assert r.exit_code == 1 and "[driver-mismatch]" in r.output and "sudo reboot" in r.output
    both = run(["explain", str(SMI / "smi-m-019-rtx4060-windows-591-driver-model.txt"),
                str(CORPUS / "nvcc" / "nvcc-003-cuda-11.0-build-line.txt")], environ)
    assert "toolkit.version" in both.output


def test_bad_files_are_one_clear_error(environ: dict[str, str], tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["explain", str(tmp_path / "missing.txt")], env=environ)
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["explain", str(tmp_path)], env=environ)
    assert r.exit_code == 2 and "is a directory" in r.output


def test_binary_input_is_read_without_a_traceback(environ: dict[str, str], tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 40)
    r = run(["explain", "--json", str(blob)], environ)
    assert r.exit_code == 2 and json.loads(r.stdout)["unread"]


# ---------------------------------------------------------------------------- verify == explain(report)

def _world(tmp_path: Path, fake_machine: MachineFactory) -> tuple[Path, dict[str, str], Path]:
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.8")
    link_cuda(root, "cuda-12.6")
    environ = fake_machine(FakeMachine(driver="560.35.03", cuda=12060))
    environ.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"),
                   XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"),
                   PATH="/usr/local/cuda/bin:/usr/bin:/bin")
    log = tmp_path / "calls.log"
    environ["NVCC_CALL_LOG"] = str(log)
    environ["FAKE_NVML_INIT_LOG"] = str(log)
    return root, environ, log


def _cli(root: Path, environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", "--root", str(root), *args],
                          capture_output=True, text=True, env=environ, timeout=600)


def _same(checks: list[dict[str, Any]]) -> list[tuple[str, str, str, str | None]]:
    """The verdicts with the wall-clock figures (import 0.94 s) masked: two runs differ only there."""
    import re

    def mask(s: str | None) -> str | None:
        return re.sub(r"\d+(?:\.\d+)? s\b", "N s", s) if s else s

    return [(c["id"], c["status"], mask(c["message"]), mask(c["fix"])) for c in checks]


@pytest.mark.slow
def test_explain_of_a_report_gives_the_checks_verify_gave(tmp_path: Path, fake_machine: MachineFactory,
                                                          chat_env_python: Path) -> None:
    root, environ, _ = _world(tmp_path, fake_machine)
    env = str(chat_env_python.parent.parent)
    live = json.loads(_cli(root, environ, "verify", "--json", "--env", env).stdout)
    for fmt in ("--json", None):
        out = tmp_path / f"report{'.json' if fmt else '.md'}"
        args = ["report", "--env", env, "--output", str(out)] + ([fmt] if fmt else [])
        assert _cli(root, environ, *args).returncode == 0
        # explained elsewhere: another HOME, no fake driver, not under the root
        elsewhere = {"HOME": str(tmp_path / "other"), "PATH": "/usr/bin:/bin"}
        r = subprocess.run([sys.executable, "-m", "provisioner", "explain", "--json", str(out)],
                           capture_output=True, text=True, env=elsewhere, timeout=120)
        explained = json.loads(r.stdout)
        # the same verdicts as a live verify on that machine ...
        assert _same(explained["checks"]) == _same(live["checks"]), fmt
        assert r.returncode == (1 if not live["ok"] else 0)
        # ... and exactly (data and timings included) the checks the report itself recorded
        if fmt:
            assert explained["checks"] == json.loads(out.read_text())["checks"]


def test_verify_runs_nvcc_once_per_toolkit_and_nvml_once(tmp_path: Path, fake_machine: MachineFactory,
                                                        bare_env_python: Path) -> None:
    root, environ, log = _world(tmp_path, fake_machine)
    r = _cli(root, environ, "verify", "--json", "--env", str(bare_env_python.parent.parent))
    doc = json.loads(r.stdout)
    assert {c["id"] for c in doc["checks"]} >= {"cuda.link", "cuda.driver", "cuda.nvcc_path", "driver"}
    calls = log.read_text().splitlines()
    nvcc = [c for c in calls if "nvcc" in c]
    assert sorted(Path(c.split()[0]).parent.parent.name for c in nvcc) == ["cuda-12.6", "cuda-12.8"]
    assert calls.count("nvmlInit") == 1


def test_verify_with_one_toolkit_runs_nvcc_once(tmp_path: Path, fake_machine: MachineFactory,
                                                bare_env_python: Path) -> None:
    root, environ, log = _world(tmp_path, fake_machine)
    import shutil

    shutil.rmtree(root / "usr/local/cuda-12.8")
    _cli(root, environ, "verify", "--env", str(bare_env_python.parent.parent))
    calls = log.read_text().splitlines()
    assert len([c for c in calls if "nvcc" in c]) == 1 and calls.count("nvmlInit") == 1


# ---------------------------------------------------------------------------- the parsers never raise

def _all(data: str | bytes, name: str = "paste") -> None:
    doc = text.read(name, data)
    smi.parse(doc)
    nvcc_mod.parse(doc)
    pyenv.parse(doc)
    explain.explain([(name, data)], environ={"HOME": "/nonexistent"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(data: bytes) -> None:
    _all(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS_FILES), st.floats(0, 1), st.floats(0, 1))
def test_truncated_corpus_files_never_raise(path: Path, start: float, length: float) -> None:
    data = path.read_bytes()
    a = int(start * len(data))
    _all(data[a:a + int(length * (len(data) - a))], path.name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS_FILES), st.integers(10, 120), st.sampled_from(["", "> ", "\t", "    "]))
def test_rewrapped_corpus_files_never_raise(path: Path, width: int, prefix: str) -> None:
    import textwrap

    lines = path.read_text(errors="replace").splitlines()
    wrapped = "\n".join(prefix + w for line in lines for w in (textwrap.wrap(line, width) or [""]))
    _all(wrapped, path.name)


# ---------------------------------------------------------------------------- the same paste, re-sent

def _smi_facts(data: str) -> tuple[Any, Any, list[Any]]:
    r = smi.parse(text.read("x", data))
    return r.driver_version, r.cuda, [(g["index"], g["name"], g["memory_total_mib"]) for g in r.gpus or []]


COMPLETE_TABLES = [p for p in sorted(SMI.glob("smi-m-*.txt"))
                   if "Processes" in p.read_text(errors="replace") or p.name in {
                       "smi-m-019-rtx4060-windows-591-driver-model.txt"}]


@pytest.mark.parametrize("path", COMPLETE_TABLES, ids=lambda p: p.name)
def test_a_table_reads_the_same_however_it_was_pasted(path: Path) -> None:
    """Real tables from the corpus re-sent the ways people send them: TAB-indented, fenced, bold,
    without the top and bottom border, and hard-wrapped at 72 columns as mail clients do."""
    original = path.read_text(errors="replace")
    want = _smi_facts(original)
    assert want[0] is not None and want[2]
    lines = original.splitlines()
    import textwrap

    variants = {
        "tabs": "\n".join("\t" + line for line in lines),
        "fenced": "```\n" + original + "\n```",
        "bold header": "\n".join(f"**{line}**" if "Driver Version" in line or "KMD Version" in line
                                 else line for line in lines),
        "backticks": "\n".join(f"`{line}`" for line in lines),
        "no borders": "\n".join(line for line in lines if not line.startswith("+")),
        "mail-wrapped": "\n".join("> " + w for line in lines
                                  for w in (textwrap.wrap(line, 72, break_long_words=False) or [""])),
    }
    for name, variant in variants.items():
        assert _smi_facts(variant) == want, name


def test_a_flash_attn_loader_error_is_not_called_a_bitsandbytes_problem(environ: dict[str, str]) -> None:
    paste = next(p for p in (CORPUS / "errors").glob("*flash*attn*") if "libcudart.so.12" in p.read_text())
    doc = json.loads(run(["explain", "--json", str(paste)], environ).stdout)
    (cause,) = [c for c in doc["causes"] if c["id"] == "cuda-runtime-missing"]
    assert cause["values"]["package"] == "flash_attn" and cause["values"]["library"] == "libcudart.so.12"
    assert "flash-attn" in cause["fix"] and "bitsandbytes" not in cause["fix"]
    assert not any(c["id"].startswith("bnb-") for c in doc["causes"])
