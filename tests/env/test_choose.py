"""Profile auto-choice: from MachineFacts directly, and end to end from the fake NVML library."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner import profiles
from provisioner import facts as facts_mod
from provisioner.env import choose
from provisioner.env.choose import GpuFact, MachineFacts
from provisioner.cli import main
from provisioner.errors import ProvisionError, UsageError
from provisioner.versions import CudaVersion, DriverVersion
from tests.fixtures_nvml import GTX_1080_TI, H100, RTX_5090, FakeGpu, FakeMachine, MachineFactory

RTX_4060 = FakeGpu()


@pytest.fixture
def bundled() -> dict[str, profiles.Profile]:
    return profiles.load_all({"HOME": "/nonexistent", "XDG_CONFIG_HOME": "/nonexistent"})


def facts(driver: str | None = "575.57.08", cuda: str | None = "12.9",
          gpus: tuple[tuple[str, tuple[int, int]], ...] = (("RTX 4060", (8, 9)),),
          toolkit: str | None = None, status: str = "ok") -> MachineFacts:
    return MachineFacts(
        driver_status=status,
        driver_version=DriverVersion.parse(driver) if driver else None,
        driver_cuda=CudaVersion.parse(cuda) if cuda else None,
        gpus=tuple(GpuFact(i, name, cc) for i, (name, cc) in enumerate(gpus)),
        toolkit=CudaVersion.parse(toolkit) if toolkit else None,
    )


PASCAL = (("GTX 1080 Ti", (6, 1)),)
BLACKWELL = (("RTX 5090", (12, 0)),)

AUTO_CASES = [
    pytest.param(facts(status="no-library", driver=None, cuda=None, gpus=()), "cpu",
                 "no NVIDIA GPU/driver detected", None, id="no-driver"),
    pytest.param(facts(gpus=()), "cpu", "reports no GPU", None, id="driver-without-gpu"),
    pytest.param(facts(), "cu126", "newest profile the driver and every GPU support",
                 ("cu130", "needs driver >= 580.65.06, this machine has 575.57.08"), id="ada-575"),
    pytest.param(facts(driver="580.95.05", cuda="13.0"), "cu132",
                 "CUDA 13.2 on a CUDA 13.0 driver through minor version compatibility", None,
                 id="ada-580"),
    pytest.param(facts(driver="580.95.05", cuda="13.0", gpus=PASCAL), "cu126", "wheel supports sm_61",
                 ("cu130", "has no kernels for sm_61 (GPU 0 GTX 1080 Ti)"), id="pascal-new-driver"),
    pytest.param(facts(driver="580.95.05", cuda="13.0", gpus=PASCAL + (("RTX 4060", (8, 9)),)),
                 "cu126", "wheel supports sm_61, sm_89",
                 ("cu132", "has no kernels for sm_61 (GPU 0 GTX 1080 Ti)"), id="pascal-plus-ada"),
    pytest.param(facts(driver="470.256.02", cuda="11.4", gpus=PASCAL), "cu118",
                 "driver 470.256.02 >= 450.80.02",
                 ("cu126", "needs driver >= 525.60.13, this machine has 470.256.02"), id="old-driver"),
    pytest.param(facts(driver="580.95.05", cuda="13.0", toolkit="12.8.93"), "cu128",
                 "matches the linked toolkit CUDA 12.8",
                 ("cu132", "fits, but cu128 matches the linked toolkit CUDA 12.8"), id="toolkit-line"),
    pytest.param(facts(driver="595.71.05", cuda="13.2", gpus=(("H100", (9, 0)),) + BLACKWELL), "cu132",
                 "wheel supports sm_120, sm_90", None, id="hopper-plus-blackwell"),
]


@pytest.mark.parametrize(("machine", "want", "reason", "rejected"), AUTO_CASES)
def test_auto_choice(bundled: dict[str, profiles.Profile], machine: MachineFacts, want: str,
                     reason: str, rejected: tuple[str, str] | None) -> None:
    choice = choose.choose_profile(machine, bundled)
    assert choice.profile.name == want
    assert any(reason in r for r in choice.reasons), choice.reasons
    if rejected is not None:
        name, why = rejected
        assert any(n == name and why in r for n, r in choice.rejected), choice.rejected
    # only newer profiles are listed as rejected, never the chosen one
    assert want not in [n for n, _ in choice.rejected]


REFUSALS = [
    pytest.param(facts(driver="418.226.00", cuda="10.1"), {}, "no CUDA profile fits this machine",
                 "upgrade the NVIDIA driver", id="ancient-driver"),
    pytest.param(facts(driver="580.95.05", cuda="13.0", gpus=PASCAL + BLACKWELL), {},
                 "cu126: its torch 2.13.0 cu126 wheel has no kernels for sm_120 (GPU 1 RTX 5090)",
                 "upgrade the NVIDIA driver", id="pascal-plus-blackwell"),
    pytest.param(facts(status="mismatch", gpus=()), {}, "installed but not usable (mismatch",
                 "--profile cpu", id="nvml-mismatch"),
    pytest.param(facts(), {"cuda": CudaVersion.parse("13.0")},
                 "CUDA 13.0 cannot run on this machine: needs driver >= 580.65.06", None,
                 id="cuda-13-old-driver"),
    pytest.param(facts(gpus=BLACKWELL), {"cuda": CudaVersion.parse("cu126")},
                 "no kernels for sm_120 (GPU 0 RTX 5090)", None, id="cuda-12.6-blackwell"),
    # named, but the driver this machine shows contradicts it: still refused, GPU or not
    pytest.param(facts(driver="470.256.02", cuda="11.4", gpus=()), {"requested": "cu126"},
                 "profile cu126 cannot run on this machine: needs driver >= 525.60.13, this machine has "
                 "470.256.02", "upgrade the NVIDIA driver", id="named-driver-too-old-no-gpu"),
    pytest.param(facts(driver="580.95.05", cuda="13.0", gpus=PASCAL), {"requested": "cu130"},
                 "profile cu130 cannot run on this machine: its torch 2.13.0 cu130 wheel has no kernels "
                 "for sm_61", "upgrade the NVIDIA driver", id="named-gpu-too-old"),
]


@pytest.mark.parametrize(("machine", "kwargs", "message", "hint"), REFUSALS)
def test_refusals(bundled: dict[str, profiles.Profile], machine: MachineFacts,
                  kwargs: dict[str, object], message: str, hint: str | None) -> None:
    with pytest.raises(ProvisionError) as e:
        choose.choose_profile(machine, bundled, **kwargs)  # type: ignore[arg-type]
    assert message in e.value.message
    if hint:
        assert e.value.hint and hint in e.value.hint


def test_explicit_requests(bundled: dict[str, profiles.Profile]) -> None:
    c = choose.choose_profile(facts(), bundled, cuda=CudaVersion.parse("12.6"))
    assert c.profile.name == "cu126" and c.reasons[0] == "requested with --cuda 12.6"
    c = choose.choose_profile(facts(), bundled, requested="cu126-torch27")
    assert c.profile.name == "cu126-torch27"
    c = choose.choose_profile(facts(), bundled, requested="cpu")
    assert "a CPU build although 1 NVIDIA GPU(s) are present" in c.reasons[0]
    with pytest.raises(UsageError, match="no profile named 'cu999'"):
        choose.choose_profile(facts(), bundled, requested="cu999")
    with pytest.raises(UsageError, match="no profile for CUDA 12.3"):
        choose.choose_profile(facts(), bundled, cuda=CudaVersion.parse("12.3"))


# --- a named profile where this machine cannot check it: built for the target, with a warning -----

NO_DRIVER = facts(status="no-library", driver=None, cuda=None, gpus=())

UNCHECKED = [
    pytest.param(NO_DRIVER, {"requested": "cu126"}, "cu126",
                 "no NVIDIA driver/GPU visible here (no libnvidia-ml.so.1 found): profile cu126 needs driver "
                 ">= 525.60.13 and a GPU of compute capability 5.0-9.x; `provision verify` on the target "
                 "machine checks it", id="no-driver-profile"),
    pytest.param(NO_DRIVER, {"cuda": CudaVersion.parse("13.0")}, "cu130",
                 "no NVIDIA driver/GPU visible here (no libnvidia-ml.so.1 found): profile cu130 needs driver "
                 ">= 580.65.06 and a GPU of compute capability 7.5-10.x, 12.0 or newer; `provision verify` "
                 "on the target machine checks it", id="no-driver-cuda"),
    # the driver is there (and new enough, which is checked): only the GPU is left to the target
    pytest.param(facts(gpus=()), {"requested": "cu128"}, "cu128",
                 "NVIDIA driver 575.57.08 reports no GPU here: profile cu128 needs a GPU of compute "
                 "capability 7.5-10.x, 12.x; `provision verify` on the target machine checks it",
                 id="driver-without-gpu"),
    pytest.param(facts(status="mismatch", driver=None, cuda=None, gpus=()), {"requested": "cu126"}, "cu126",
                 "no NVIDIA driver/GPU visible here (mismatch): profile cu126 needs driver >= 525.60.13",
                 id="driver-not-usable"),
]


@pytest.mark.parametrize(("machine", "kwargs", "want", "line"), UNCHECKED)
def test_named_profile_without_a_visible_gpu_is_chosen_with_a_warning(
        bundled: dict[str, profiles.Profile], machine: MachineFacts, kwargs: dict[str, object], want: str,
        line: str) -> None:
    choice = choose.choose_profile(machine, bundled, **kwargs)  # type: ignore[arg-type]
    assert choice.profile.name == want and choice.refusal is None
    assert choice.unchecked is not None and line in choice.unchecked.line()
    assert "\n" not in choice.unchecked.line()
    assert choice.to_dict()["unchecked"] == choice.unchecked.line()


@pytest.mark.parametrize("machine", [NO_DRIVER, facts(gpus=())], ids=["no-driver", "driver-without-gpu"])
def test_auto_still_chooses_from_this_machine(bundled: dict[str, profiles.Profile], machine: MachineFacts) -> None:
    for requested in (None, "auto"):
        choice = choose.choose_profile(machine, bundled, requested=requested)
        assert choice.profile.name == "cpu" and choice.unchecked is None


def test_checked_profiles_carry_no_warning(bundled: dict[str, profiles.Profile]) -> None:
    assert choose.choose_profile(facts(), bundled, requested="cu126").unchecked is None
    assert choose.choose_profile(NO_DRIVER, bundled, requested="cpu").unchecked is None


def test_a_refusal_kept_for_a_plan_that_only_prints(bundled: dict[str, profiles.Profile]) -> None:
    pascal = facts(driver="580.95.05", cuda="13.0", gpus=PASCAL)
    choice = choose.choose_profile(pascal, bundled, requested="cu130", keep_refusal=True)
    assert choice.profile.name == "cu130" and choice.unchecked is None
    assert choice.refusal is not None and "has no kernels for sm_61" in choice.refusal.message
    choice = choose.choose_profile(facts(), bundled, cuda=CudaVersion.parse("13.0"), keep_refusal=True)
    assert choice.profile.name == "cu130" and choice.refusal is not None
    assert choice.refusal.message.startswith("CUDA 13.0 cannot run on this machine: needs driver >= 580.65.06")


@pytest.mark.parametrize(("name", "want"), [
    ("cu118", "5.0-9.x"), ("cu128", "7.5-10.x, 12.x"), ("cu130", "7.5-10.x, 12.0 or newer"),
    ("cpu", "any")])
def test_cc_range(bundled: dict[str, profiles.Profile], name: str, want: str) -> None:
    assert choose.cc_range(bundled[name]) == want


def test_facts_round_trip() -> None:
    f = facts(driver="580.95.05", cuda="13.0", gpus=PASCAL, toolkit="12.6.85")
    assert MachineFacts.from_dict(f.to_dict()) == f
    assert f.summary() == "driver 580.95.05 (CUDA 13.0), GPU 0 GTX 1080 Ti (sm_61), toolkit 12.6"


# --- end to end: the real pynvml against the fake libnvidia-ml.so.1, through the CLI -----------

MACHINES = [
    pytest.param(FakeMachine(driver="470.256.02", cuda=11040, gpus=(GTX_1080_TI,)), "cu118",
                 "not cu126: needs driver >= 525.60.13, this machine has 470.256.02", id="old-driver"),
    pytest.param(FakeMachine(driver="580.95.05", cuda=13000, gpus=(GTX_1080_TI,)), "cu126",
                 "not cu130: its torch 2.13.0 cu130 wheel has no kernels for sm_61 "
                 "(GPU 0 NVIDIA GeForce GTX 1080 Ti)", id="pascal-new-driver"),
    pytest.param(FakeMachine(driver="580.95.05", cuda=13000, gpus=(H100, GTX_1080_TI)), "cu126",
                 "wheel supports sm_61, sm_90", id="two-different-gpus"),
    pytest.param(FakeMachine(driver="575.57.08", cuda=12090, gpus=(RTX_5090, RTX_4060)), "cu128",
                 "not cu126: its torch 2.13.0 cu126 wheel has no kernels for sm_120 "
                 "(GPU 0 NVIDIA GeForce RTX 5090)", id="blackwell-plus-ada"),
]


@pytest.mark.parametrize(("machine", "want", "printed"), MACHINES)
def test_choice_from_fake_nvml(fake_machine: MachineFactory, tmp_path: Path, machine: FakeMachine, want: str,
                               printed: str) -> None:
    environ = fake_machine(machine)
    f = facts_mod.gather_machine(root=tmp_path, environ=environ).machine()
    assert f.driver_status == "ok" and len(f.gpus) == len(machine.gpus)
    assert choose.choose_profile(f, profiles.load_all(environ)).profile.name == want

    result = CliRunner().invoke(main, ["--root", str(tmp_path), "env", "create", "--dry-run",
                                       "--prefix", str(tmp_path / "env")], env=environ)
    assert result.exit_code == 0, result.output
    assert f"Profile:     {want}: " in result.stdout
    assert printed in result.stdout
    assert not (tmp_path / "env").exists()


def test_no_gpu_from_fake_nvml(no_driver_environ: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "env", "create", "--dry-run",
                                       "--prefix", str(tmp_path / "env")], env=no_driver_environ)
    assert result.exit_code == 0, result.output
    assert "Profile:     cpu: no NVIDIA GPU/driver detected -> the CPU build of torch" in result.stdout
    assert "torch==2.13.0+cpu" in result.stdout


def test_impossible_cuda_request_from_fake_nvml(fake_machine: MachineFactory, tmp_path: Path) -> None:
    environ = fake_machine(FakeMachine(driver="535.183.01", cuda=12020, gpus=(RTX_4060,)))
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "env", "create", "--cuda", "13.0",
                                       "--dry-run"], env=environ)
    assert result.exit_code == 1
    assert ("error: CUDA 13.0 cannot run on this machine: needs driver >= 580.65.06, this machine "
            "has 535.183.01") in result.stderr
    assert "hint: upgrade the NVIDIA driver" in result.stderr
    assert "Traceback" not in result.output
