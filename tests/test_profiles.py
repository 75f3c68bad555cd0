"""Profiles: every bundled file validates and cites its facts; broken files fail by file:key, exit 2."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from provisioner import profiles
from provisioner.system import compat
from provisioner.cli import main
from provisioner.errors import UsageError
from provisioner.profiles import FACT_KEYS, InvalidProfile, Profile
from provisioner.versions import CudaVersion, DriverVersion
from tests.conftest import CHAT_ENV_REQUIREMENTS

BUNDLED = sorted(profiles.bundled_dir().glob("*.yaml"))
BROKEN_DIR = Path(__file__).parent / "data" / "broken_profiles"
BROKEN = sorted(BROKEN_DIR.glob("*.yaml"))

# What the test machines install (conftest's chat env): the current-torch profiles must admit it.
TESTED_STACK = {Requirement(r).name: Version(str(Requirement(r).specifier).lstrip("=")) for r in
                CHAT_ENV_REQUIREMENTS}

# Python range per torch minor, from pytorch/pytorch RELEASE.md's Release Compatibility Matrix.
TORCH_PYTHON = {(2, 5): ("3.9", "3.12"), (2, 6): ("3.9", "3.13"), (2, 7): ("3.9", "3.13"),
                (2, 8): ("3.9", "3.13"), (2, 11): ("3.10", "3.14"), (2, 13): ("3.10", "3.15")}


def bundled(name: str) -> Profile:
    return profiles.load(profiles.bundled_dir() / f"{name}.yaml")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with its expected message"
    return first.removeprefix("# expect: ")


# --- every bundled profile -----------------------------------------------------------------------


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in BUNDLED])
def test_bundled_profile_validates(path: Path) -> None:
    p = profiles.load(path)
    assert p.name == path.stem
    assert p.description
    result = invoke("profile", "validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ok: {path}\n"


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in BUNDLED])
def test_every_fact_has_a_source(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    facts = [k for k in FACT_KEYS if raw.get(k) not in (None, [], {})]
    assert {"python", "torch", "packages"} <= set(facts)
    for key in facts:
        assert isinstance(raw["sources"].get(key), str) and raw["sources"][key].strip(), key
    p = profiles.load(path)
    assert set(p.sources) == set(facts)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in BUNDLED])
def test_profile_invariants(path: Path) -> None:
    p = profiles.load(path)
    assert p.torch_index_url == f"https://download.pytorch.org/whl/{p.variant}"
    if p.is_cpu:
        assert p.name == "cpu"
        assert p.driver_min is None and p.compute_capabilities == () and p.ptx is None
    else:
        assert p.cuda is not None and p.driver_min is not None
        assert p.name.startswith(p.cuda.tag)
        family = compat.family_min_driver(p.cuda)
        assert family is not None and p.driver_min >= family[0]
        if p.cuda.major >= 13:
            assert min(p.compute_capabilities) >= (7, 5), "CUDA 13 wheels have nothing below sm_75"
        assert list(p.compute_capabilities) == sorted(set(p.compute_capabilities))
        assert p.ptx is None or p.ptx == max(p.compute_capabilities)
    # torchvision 0.X pairs with torch 2.(X-15) (pytorch/vision README)
    if p.torchvision is not None:
        assert p.torchvision.minor == p.torch.minor + 15
    if p.torchaudio is not None:
        assert p.torchaudio.release[:2] == p.torch.release[:2]
    low, high = TORCH_PYTHON[(p.torch.major, p.torch.minor)]
    assert Version(low) <= Version(p.python) <= Version(high)
    transformers = p.packages["transformers"]
    # transformers 5.x disables torch < 2.6; bitsandbytes 0.50 needs torch >= 2.4
    if transformers.contains("5.0") or transformers.contains("5.24.0"):
        assert p.torch >= Version("2.6")
    else:
        assert not transformers.contains("5.0")
    assert p.torch >= Version("2.4") or not p.packages["bitsandbytes"].contains("0.50.2")
    assert set(p.packages) == {"transformers", "accelerate", "bitsandbytes"}


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in BUNDLED
                                  if profiles.load(p).torch >= Version("2.6")])
def test_profiles_admit_the_tested_stack(path: Path) -> None:
    p = profiles.load(path)
    for name in ("transformers", "accelerate", "bitsandbytes"):
        assert p.packages[name].contains(TESTED_STACK[name]), (name, p.packages[name])


def test_the_required_profiles_exist_with_the_matrix_torch() -> None:
    torch_of = {p.stem: str(profiles.load(p).torch) for p in BUNDLED}
    assert torch_of == {
        "cpu": "2.13.0", "cu118": "2.7.1", "cu121": "2.5.1", "cu124": "2.6.0", "cu126": "2.13.0",
        "cu126-torch27": "2.7.1", "cu128": "2.11.0", "cu129": "2.8.0", "cu130": "2.13.0",
        "cu132": "2.13.0",
    }
    assert bundled("cpu").torch == TESTED_STACK["torch"]
    assert bundled("cu126-torch27").cuda == CudaVersion(12, 6)


def test_profile_types() -> None:
    p = bundled("cu130")
    assert p.cuda == CudaVersion(13, 0)
    assert p.torch == Version("2.13.0")
    assert p.torchvision == Version("0.28.0") and p.torchaudio is None
    assert p.driver_min == DriverVersion.parse("580.65.06")
    assert p.compute_capabilities == ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0))
    assert p.ptx == (12, 0)
    assert isinstance(p.packages["bitsandbytes"], SpecifierSet)
    with pytest.raises(TypeError):
        p.packages["x"] = SpecifierSet(">=1")  # type: ignore[index]


# --- behaviour -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cc", "ok"),
    [
        ("cu126", (8, 9), True),     # sm_86 cubin runs on 8.9 (same major, newer minor)
        ("cu126", (6, 1), True),
        ("cu126", (5, 0), True),
        ("cu126", (3, 7), False),
        ("cu126", (12, 0), False),   # RTX 50xx: no kernel image in a cu126 wheel
        ("cu128", (12, 0), True),
        ("cu128", (7, 0), False),    # Volta dropped from 2.11 cu128
        ("cu130", (7, 0), False),
        ("cu130", (12, 1), True),
        ("cu130", (13, 0), True),    # newer than the PTX arch: JIT
        ("cu129", (10, 0), True),
        ("cpu", (8, 6), False),
    ],
)
def test_supports_cc(name: str, cc: tuple[int, int], ok: bool) -> None:
    assert bundled(name).supports_cc(cc) is ok


def test_requirements_and_install_commands() -> None:
    p = bundled("cu126")
    assert p.torch_requirements() == ["torch==2.13.0", "torchvision==0.28.0"]
    assert p.torch_requirements("2.13.0") == ["torch==2.13.0", "torchvision==0.28.0"]
    assert p.torch_requirements("2.12.1") == ["torch==2.12.1"]
    assert p.package_requirements() == ["transformers>=5.0,<6", "accelerate>=1.1.0",
                                        "bitsandbytes>=0.46.1"]
    assert p.install_commands("/env/bin/python") == [
        ["/env/bin/python", "-m", "pip", "install", "torch==2.13.0", "torchvision==0.28.0",
         "--index-url", "https://download.pytorch.org/whl/cu126"],
        ["/env/bin/python", "-m", "pip", "install", "transformers>=5.0,<6", "accelerate>=1.1.0",
         "bitsandbytes>=0.46.1"],
    ]
    assert bundled("cu126-torch27").torch_requirements() == [
        "torch==2.7.1", "torchvision==0.22.1", "torchaudio==2.7.1"]
    assert bundled("cpu").torch_requirements() == ["torch==2.13.0"]
    with pytest.raises(UsageError, match="'2.x' is not a valid torch version"):
        p.torch_requirements("2.x")


def test_check_versions() -> None:
    installed = {name: str(v) for name, v in TESTED_STACK.items()}
    assert bundled("cpu").check_versions(dict(installed, torch="2.13.0+cpu")) == []
    assert bundled("cu126").check_versions(dict(installed, torch="2.13.0+cu126",
                                                torchvision="0.28.0+cu126")) == []
    problems = bundled("cu126").check_versions(
        {"torch": "2.13.0+cpu", "Transformers": "4.57.6", "bitsandbytes": "0.50.2"})
    assert problems == [
        "torch 2.13.0+cpu is the cpu build; profile cu126 wants the cu126 build from "
        "https://download.pytorch.org/whl/cu126",
        "transformers 4.57.6 is outside profile cu126's range >=5.0,<6",
    ]
    assert bundled("cu121").check_versions({"torch": "2.7.1+cu126", "transformers": "5.24.0"}) == [
        "torch 2.7.1+cu126 is installed; profile cu121 pins 2.5.1",
        "transformers 5.24.0 is outside profile cu121's range >=4.57,<5",
    ]
    assert bundled("cu126").check_versions({"accelerate": "weird"}) == [
        "accelerate weird: not a valid version"]


@pytest.mark.parametrize(("cuda", "name"), [("12.6", "cu126"), ("12.6.85", "cu126"),
                                            ("cu130", "cu130"), ("11.8", "cu118"), ("13.2", "cu132")])
def test_for_cuda_picks_the_default_profile(cuda: str, name: str) -> None:
    p = profiles.for_cuda(CudaVersion.parse(cuda), os.environ)
    assert p is not None and p.name == name


def test_for_cuda_without_profile() -> None:
    assert profiles.for_cuda(CudaVersion.parse("12.7"), os.environ) is None


def test_get() -> None:
    assert profiles.get("cu126-torch27", os.environ).torch == Version("2.7.1")
    assert profiles.get("12.8", os.environ).name == "cu128"
    with pytest.raises(UsageError) as e:
        profiles.get("cu1266", os.environ)
    assert e.value.message == "no profile named 'cu1266' (did you mean 'cu126'?)"
    assert e.value.hint is not None and "cu126-torch27" in e.value.hint and "cpu" in e.value.hint


# --- user profiles -------------------------------------------------------------------------------


def user_profiles(home: Path) -> Path:
    d = home / ".config" / "provision" / "profiles"
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_user_profile_overrides_bundled(isolated_home: Path) -> None:
    text = (profiles.bundled_dir() / "cu126.yaml").read_text()
    mine = user_profiles(isolated_home) / "cu126.yaml"
    mine.write_text(text.replace('version: "2.13.0"', 'version: "2.12.1"')
                    .replace('torchvision: "0.28.0"', 'torchvision: "0.27.1"'))
    (user_profiles(isolated_home) / "mycpu.yaml").write_text(
        (profiles.bundled_dir() / "cpu.yaml").read_text().replace("name: cpu", "name: mycpu"))
    (user_profiles(isolated_home) / "notes.txt").write_text("not a profile")

    found = profiles.load_all(os.environ)
    assert found["cu126"].path == mine and found["cu126"].torch == Version("2.12.1")
    assert "mycpu" in found and found["cu130"].path.parent == profiles.bundled_dir()
    assert profiles.for_cuda(CudaVersion(12, 6), os.environ) == found["cu126"]

    result = invoke("profile", "list")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert "2.12.1" in rows["cu126"] and " user " in rows["cu126"]
    assert " bundled " in rows["cu130"] and " user " in rows["mycpu"]


def test_broken_user_profile_is_named(isolated_home: Path) -> None:
    bad = user_profiles(isolated_home) / "cu126.yaml"
    bad.write_text((profiles.bundled_dir() / "cu126.yaml").read_text().replace("torch:", "toch:"))
    # listing skips it with a warning naming file and key (one broken file must not block every command) ...
    result = invoke("profile", "list")
    assert result.exit_code == 0
    assert f"warning: skipping the invalid user profile {bad}: unknown key 'toch' (did you mean 'torch'?)" in result.stderr
    # ... and using it by name is the error, with the file and the key
    result = invoke("profile", "show", "cu126")
    assert result.exit_code == 2
    assert f"error: {bad}: unknown key 'toch' (did you mean 'torch'?)" in result.stderr
    assert f"hint: fix or remove the user profile {bad}" in result.stderr
    assert "Traceback" not in result.output


# --- the broken corpus ---------------------------------------------------------------------------


def test_corpus_is_big_enough() -> None:
    assert len(BROKEN) >= 10


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in BROKEN])
def test_broken_profile(path: Path) -> None:
    expected = f"{path}: {expected_message(path)}"
    with pytest.raises(InvalidProfile) as e:
        profiles.load(path, display=str(path))
    assert e.value.exit_code == 2
    assert any(line.startswith(expected) for line in e.value.problems), e.value.problems

    result = invoke("profile", "validate", str(path))
    assert result.exit_code == 2
    assert f"error: {expected}" in result.stderr
    assert result.stderr.endswith("error: 1 of 1 profile file(s) invalid\n"
                                  "hint: fix the lines above, then run this again\n")
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_paths_inside_the_repo_are_shown_relative_to_it() -> None:
    with pytest.raises(InvalidProfile) as e:
        profiles.load(BROKEN_DIR / "unknown-key.yaml")
    assert e.value.problems == (
        "tests/data/broken_profiles/unknown-key.yaml: unknown key 'toch' (did you mean 'torch'?)",
        "tests/data/broken_profiles/unknown-key.yaml: missing required key 'torch'",
    )
    assert e.value.hint == "fix the file, then check it with `provision profile validate FILE`"


# --- CLI output ----------------------------------------------------------------------------------


def test_validate_many_files_reports_each(tmp_path: Path) -> None:
    good = profiles.bundled_dir() / "cu126.yaml"
    bad = BROKEN_DIR / "bad-driver.yaml"
    missing = tmp_path / "nope.yaml"
    result = invoke("profile", "validate", str(good), str(bad), str(missing))
    assert result.exit_code == 2
    assert result.stdout == f"ok: {good}\n"
    assert result.stderr.splitlines() == [
        f"error: {bad}: driver_min: '525.abc' is not an NVIDIA driver version (write it as 525.60.13)",
        f"error: {missing}: cannot read: No such file or directory",
        "error: 2 of 3 profile file(s) invalid",
        "hint: fix the lines above, then run this again",
    ]


def test_validate_json_document() -> None:
    good = profiles.bundled_dir() / "cpu.yaml"
    bad = BROKEN_DIR / "bad-python.yaml"
    result = invoke("profile", "validate", "--json", str(good), str(bad))
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {
        "version": 1,
        "ok": False,
        "files": [
            {"path": str(good), "ok": True, "problems": []},
            {"path": str(bad), "ok": False,
             "problems": [f"{bad}: python: '3' is not a Python version (write it as 3.11)"]},
        ],
    }


def test_list_table() -> None:
    result = invoke("profile", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "cuda", "torch", "python", "min", "driver", "from", "archs"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {p.stem for p in BUNDLED}
    assert rows["cu130"] == ["cu130", "13.0", "2.13.0", "3.11", "580.65.06", "bundled",
                             "7.5", "8.0", "8.6", "9.0", "10.0", "12.0+PTX"]
    assert rows["cpu"] == ["cpu", "-", "2.13.0", "3.11", "-", "bundled", "-"]


@pytest.mark.parametrize("args", [["profile", "list", "--json"], ["--json", "profile", "list"]])
def test_list_json(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["version"] == 1
    assert [p["name"] for p in doc["profiles"]] == sorted(p.stem for p in BUNDLED)


def test_show() -> None:
    result = invoke("profile", "show", "cu126-torch27")
    assert result.exit_code == 0
    out = result.stdout
    assert "torch        2.7.1 (cu126)\n" in out
    assert ("install      python -m pip install torch==2.7.1 torchvision==0.22.1 torchaudio==2.7.1 "
            "--index-url https://download.pytorch.org/whl/cu126\n") in out
    for key in FACT_KEYS:
        assert f"\n  {key}: " in out


def test_show_json_is_the_profile() -> None:
    result = invoke("profile", "show", "cu128", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc == dict(bundled("cu128").to_dict(), origin="bundled")
    assert doc["torch"] == {"version": "2.11.0", "index_url": "https://download.pytorch.org/whl/cu128",
                            "torchvision": "0.26.0", "torchaudio": "2.11.0"}
    assert doc["driver_min"] == "525.60.13"
    assert doc["compute_capabilities"] == ["7.5", "8.0", "8.6", "9.0", "10.0", "12.0"]


def test_show_unknown_profile() -> None:
    result = invoke("profile", "show", "cu999")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no profile named 'cu999'")
    assert "hint: known profiles: cpu, cu118," in result.stderr
    assert "Traceback" not in result.output
