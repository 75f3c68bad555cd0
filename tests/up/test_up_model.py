"""`provision up` chooses the model: the largest current Qwen chat model that fits the GPU's free
memory (fake libnvidia-ml), the smallest without a GPU, the one `--gpu-memory` allows; `--model` wins;
a rerun keeps the first choice unless the machine changed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from provisioner import up
from provisioner.model import fit
from provisioner.model import info as modelinfo
from provisioner.units import gib
from provisioner.up.stages import Fit
from tests.fixtures_env import REPO, BuiltEnv, isolated_environ, run_provision
from tests.hubserver import HubServer, Repo
from tests.fixtures_nvml import GIB, FakeGpu, FakeMachine, MachineFactory

TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"


def _environ(tmp_path: Path, fake_machine: MachineFactory | None, gpus: tuple[FakeGpu, ...] = ()) -> dict[str, str]:
    environ = isolated_environ(tmp_path / "home")
    if fake_machine is not None:
        nvml = fake_machine(FakeMachine(gpus=gpus))
        environ.update({k: v for k, v in nvml.items() if k.startswith("FAKE_NVML_") or k == "LD_LIBRARY_PATH"})
    return environ


def _dry_run(tmp_path: Path, environ: dict[str, str], *extra: str) -> dict[str, Any]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    before = _record(environ)
    done = run_provision(["--root", str(root), "--json", "up", "--profile", "cpu", "--prefix",
                          str(tmp_path / "envs" / "llm"), "--dry-run", *extra], environ)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    assert doc["version"] == 1 and doc["dry_run"] is True
    assert _record(environ) == before                 # the plan writes nothing
    return doc


def _record(environ: dict[str, str]) -> str | None:
    path = Path(environ["XDG_STATE_HOME"]) / "provision" / "up.json"
    return path.read_text() if path.exists() else None


def _need(model: str, quant: str) -> int:
    spec = modelinfo.find_in_table(model)
    assert spec is not None
    return fit.estimate(spec, quant, context=4096).total_bytes


def test_an_8_gib_laptop_gpu_gets_the_7b_class_in_nf4(tmp_path: Path, fake_machine: MachineFactory) -> None:
    environ = _environ(tmp_path, fake_machine, (FakeGpu(mem_total=8 * GIB),))
    doc = _dry_run(tmp_path, environ)
    model = doc["model"]
    # the 7B class: Qwen3-8B in nf4 needs 7.42 GiB at 4k tokens, so it fits the whole card
    assert _need("Qwen/Qwen3-8B", "nf4") <= 8 * GIB < _need("Qwen/Qwen3-8B", "int8")
    assert model == {
        "id": "Qwen/Qwen3-8B", "chosen_by": "default-for-gpu", "quant": "nf4",
        "reason": "the largest current Qwen chat model whose best precision fits 8.00 GiB free (NVML: GPU 0 "
                  "NVIDIA GeForce RTX 4060 Laptop GPU, 8.00 GiB free of 8.00 GiB) with 4096 tokens of context",
        "context": 4096, "estimate_bytes": _need("Qwen/Qwen3-8B", "nf4"), "fits": True,
        "gpu_free_bytes": 8 * GIB, "params": 8_190_735_360, "download_bytes": 2 * 8_190_735_360,
        "download_estimated": True,
        "next_up": {"id": "Qwen/Qwen3-14B", "quant": "nf4", "needs_bytes": _need("Qwen/Qwen3-14B", "nf4")},
        "kept": False}
    assert {"name": "download", "status": "todo", "message": "download the model: Qwen/Qwen3-8B",
            "data": {}} in doc["plan"]


def test_a_desktop_holding_0_7_gib_leaves_room_for_qwen25_7b(tmp_path: Path, fake_machine: MachineFactory) -> None:
    environ = _environ(tmp_path, fake_machine, (FakeGpu(mem_total=8 * GIB, mem_used=int(0.7 * GIB)),))
    root = tmp_path / "root"
    root.mkdir()
    done = run_provision(["--root", str(root), "up", "--profile", "cpu", "--prefix", str(tmp_path / "env"),
                          "--dry-run"], environ)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert _need("Qwen/Qwen2.5-7B-Instruct", "nf4") <= 7.3 * GIB < _need("Qwen/Qwen3-8B", "nf4")
    assert lines[0] == (f"Model: Qwen/Qwen2.5-7B-Instruct in nf4, {gib(_need('Qwen/Qwen2.5-7B-Instruct', 'nf4'))} "
                        "at 4096 tokens (default for this GPU)")
    assert "  download: about 15.2 GB (14.19 GiB) of weights (parameters x 2 bytes; the hub's files add a few MB)" \
        in lines
    assert f"  next size up: Qwen/Qwen3-8B needs {gib(_need('Qwen/Qwen3-8B', 'nf4'))} in nf4 at 4096 tokens" in lines
    assert "to do  download  download the model: Qwen/Qwen2.5-7B-Instruct" in done.stderr


def test_without_a_gpu_the_smallest(tmp_path: Path, no_driver_environ: dict[str, str]) -> None:
    environ = isolated_environ(tmp_path / "home", base=no_driver_environ)
    model = _dry_run(tmp_path, environ)["model"]
    assert (model["id"], model["chosen_by"], model["quant"], model["fits"], model["gpu_free_bytes"]) == (
        "Qwen/Qwen2.5-0.5B-Instruct", "default-cpu", "nf4", None, None)
    assert model["reason"].startswith("no NVIDIA GPU found")


def test_gpu_memory_makes_the_choice_for_that_many_gib(tmp_path: Path, fake_machine: MachineFactory) -> None:
    environ = _environ(tmp_path, fake_machine, (FakeGpu(mem_total=8 * GIB),))
    model = _dry_run(tmp_path, environ, "--gpu-memory", "24")["model"]
    assert (model["id"], model["quant"], model["chosen_by"], model["gpu_free_bytes"]) == (
        "Qwen/Qwen2.5-32B-Instruct", "nf4", "default-for-gpu", 24 * GIB)
    assert "(--gpu-memory 24 GiB)" in model["reason"]
    assert model["next_up"]["id"] == "Qwen/Qwen2.5-72B-Instruct"


@pytest.mark.parametrize(("given", "fits"), [("Qwen/Qwen2.5-14B-Instruct", False), ("Qwen/Qwen2.5-1.5B-Instruct", True)])
def test_model_flag_wins_and_its_fit_is_still_reported(given: str, fits: bool, tmp_path: Path,
                                                       fake_machine: MachineFactory) -> None:
    environ = _environ(tmp_path, fake_machine, (FakeGpu(mem_total=8 * GIB),))
    model = _dry_run(tmp_path, environ, "--model", given)["model"]
    assert (model["id"], model["chosen_by"], model["fits"], model["next_up"]) == (given, "flag", fits, None)
    assert model["estimate_bytes"] and model["reason"].startswith("given with --model; ")


def test_a_local_model_folder_has_nothing_to_download(tmp_path: Path, fake_machine: MachineFactory) -> None:
    environ = _environ(tmp_path, fake_machine, (FakeGpu(mem_total=8 * GIB),))
    model = _dry_run(tmp_path, environ, "--model", str(TINY))["model"]
    assert (model["id"], model["chosen_by"], model["fits"], model["download_bytes"]) == (str(TINY), "flag", True, None)


def _fit_once(tmp_path: Path, environ: dict[str, str], model: str | None = None) -> up.Up:
    """The plan, then the real fit stage (it records a default choice); no environment is built."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    u = up.Up(up.UpOptions(model=model, profile="cpu"), root=root, environ=environ, say=lambda _m: None,
              confirm=lambda _q: False)
    u.plan()
    Fit().run(u)
    return u


def test_a_rerun_keeps_the_first_choice_until_the_machine_changes(tmp_path: Path,
                                                                  fake_machine: MachineFactory) -> None:
    busy = _environ(tmp_path, fake_machine, (FakeGpu(mem_total=8 * GIB, mem_used=int(0.7 * GIB)),))
    first = _fit_once(tmp_path, busy).choose_model()
    assert (first.model, first.kept) == ("Qwen/Qwen2.5-7B-Instruct", False)

    # Later the desktop holds less: Qwen3-8B would fit now, but the model set up stays.
    idle = _environ(tmp_path, fake_machine, (FakeGpu(mem_total=8 * GIB),))
    assert _record(idle) is not None
    doc = _dry_run(tmp_path, idle)
    assert (doc["model"]["id"], doc["model"]["kept"]) == ("Qwen/Qwen2.5-7B-Instruct", True)
    assert "Qwen/Qwen3-8B would fit now (pass --model Qwen/Qwen3-8B to switch)" in doc["model"]["reason"]

    # --model wins and leaves the record alone: without it, the kept model is back.
    assert _fit_once(tmp_path, idle, model="Qwen/Qwen2.5-1.5B-Instruct").choose_model().chosen_by == "flag"
    assert _fit_once(tmp_path, idle).choose_model().model == "Qwen/Qwen2.5-7B-Instruct"

    # Another GPU is another machine: chosen afresh.
    bigger = _environ(tmp_path, fake_machine, (FakeGpu(name="NVIDIA GeForce RTX 4090", mem_total=24 * GIB),))
    fresh = _fit_once(tmp_path, bigger).choose_model()
    assert (fresh.model, fresh.kept) == ("Qwen/Qwen2.5-32B-Instruct", False)


@pytest.mark.slow
def test_up_without_a_model_sets_up_the_smallest_on_a_cpu_machine(cpu_env: BuiltEnv, fake_machine: MachineFactory,
                                                                   tmp_path: Path) -> None:
    """The whole walkthrough with no --model on a machine without a GPU: the local hub serves the tiny
    Qwen2 under the smallest candidate's id, so the chosen id is what is downloaded and smoke-tested."""
    smallest = "Qwen/Qwen2.5-0.5B-Instruct"
    hub = HubServer([Repo(smallest, {p.name: p.read_bytes() for p in TINY.iterdir() if p.name != "README.md"})])
    hub.start()
    try:
        environ = dict(cpu_env.environ, HF_ENDPOINT=hub.url, XDG_STATE_HOME=str(tmp_path / "state"),
                       HF_HOME=str(tmp_path / "hf"))
        environ.pop("HF_HUB_OFFLINE", None)
        environ.update({k: v for k, v in fake_machine(FakeMachine(gpus=())).items()
                        if k.startswith("FAKE_NVML_") or k == "LD_LIBRARY_PATH"})
        done = run_provision(["--root", str(cpu_env.root), "--json", "up", "--profile", "cpu", "--prefix",
                              str(cpu_env.prefix), "--yes"], environ)
    finally:
        hub.stop()
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["model"]["id"], doc["model"]["chosen_by"]) == (smallest, "default-cpu")
    stages = {s["name"]: s for s in doc["stages"]}
    assert stages["fit"]["data"]["chosen_by"] == "default-cpu" and stages["download"]["status"] == "ran"
    assert doc["summary"]["reply"] == "I am fine, thank you."
    record = json.loads((tmp_path / "state" / "provision" / "up.json").read_text())
    assert record["stages"]["model"]["result"] == {"model": smallest, "quant": "nf4", "chosen_by": "default-cpu"}
