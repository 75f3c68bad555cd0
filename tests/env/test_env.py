"""env: plans (no builds), pins, index URLs, the record/registry safety rules, list/remove/export."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from provisioner import env as envmod
from provisioner.env.choose import MachineFacts
from provisioner.cli import main
from provisioner.errors import ProvisionError, UsageError
from tests.fixtures_env import CondaStandin, isolated_environ

NO_GPU = MachineFacts()


def plan(tmp_path: Path, environ: dict[str, str] | None = None, **options: object) -> envmod.CreatePlan:
    options.setdefault("prefix", tmp_path / "env")
    return envmod.plan_create(envmod.CreateOptions(**options),  # type: ignore[arg-type]
                              root=tmp_path, environ=environ or dict(os.environ), facts=NO_GPU)


def step(p: envmod.CreatePlan, key: str) -> list[str]:
    return list(next(s for s in p.steps if s.key == key).argv)


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(main, args, env=env)
    assert "Traceback" not in result.output
    return result


# --- pins, URLs, local wheels --------------------------------------------------------------------

@pytest.mark.parametrize(("req", "variant", "want"), [
    ("torch==2.13.0", "cpu", "torch==2.13.0+cpu"),
    ("torchvision==0.28.0", "cu126", "torchvision==0.28.0+cu126"),
    ("torch==2.13.0+cu126", "cu126", "torch==2.13.0+cu126"),
    ("transformers==5.24.0", "cpu", "transformers==5.24.0"),
    ("torch>=2.4", "cpu", "torch>=2.4"),
])
def test_pin_build(req: str, variant: str, want: str) -> None:
    assert envmod.pin_build(req, variant) == want


def test_pin_build_refuses_another_build() -> None:
    with pytest.raises(UsageError) as e:
        envmod.pin_build("torch==2.13.0+cu130", "cpu")
    assert "is the cu130 build, but the profile is the cpu build" in e.value.message
    assert e.value.hint is not None and "--torch 2.13.0" in e.value.hint


@pytest.mark.parametrize("url", ["https://mirror.example/simple", "file:///srv/simple", "/srv/wheels",
                                 "relative/wheels"])
def test_urls_accepted(url: str) -> None:
    assert envmod.check_url(url, option="--index-url", allow_insecure=False) == url


def test_http_needs_the_flag() -> None:
    with pytest.raises(UsageError) as e:
        envmod.check_url("http://mirror.example/simple", option="--index-url", allow_insecure=False)
    assert "--index-url http://mirror.example/simple is not https" in e.value.message
    assert e.value.hint is not None and "--allow-insecure-index" in e.value.hint
    assert envmod.check_url("http://m/simple", option="x", allow_insecure=True) == "http://m/simple"
    with pytest.raises(UsageError, match="unsupported URL scheme 'ftp'"):
        envmod.check_url("ftp://m/simple", option="--find-links", allow_insecure=True)


def test_local_wheels_must_match_pin_python_and_platform(tmp_path: Path) -> None:
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.12.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl",
                 "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", "not-a-wheel.whl"):
        (tmp_path / name).write_bytes(b"")
    links = ["https://mirror.example/wheels", f"file://{tmp_path}"]
    found = envmod.find_local_wheels(["torch==2.13.0+cpu"], links, "3.11")
    assert found == {"torch": tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"}
    assert envmod.find_local_wheels(["torch==2.12.0+cpu"], links, "3.11") is None     # cp312 only
    assert envmod.find_local_wheels(["torch==2.13.0+cpu", "torchvision==0.28.0+cpu"], links,
                                    "3.11") is None                                     # all or none


# --- plans ---------------------------------------------------------------------------------------

def test_cpu_plan_with_pip_uses_the_local_torch_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    env = isolated_environ(tmp_path / "home", uv=False)
    env["PIP_FIND_LINKS"] = str(wheels)
    p = plan(tmp_path, env)
    assert (p.action, p.backend, p.installer, p.profile.name) == ("create", "venv", "pip", "cpu")
    assert step(p, "create")[1:] == ["-m", "venv", str(tmp_path / "env")]
    py = str(tmp_path / "env/bin/python")
    assert step(p, "torch") == [py, "-m", "pip", "install", "--disable-pip-version-check",
                                "torch==2.13.0+cpu", "--find-links", str(wheels)]
    # torch pinned again so the resolver keeps the installed build; pip reads PIP_* itself
    assert step(p, "packages") == [py, "-m", "pip", "install", "--disable-pip-version-check",
                                   "torch==2.13.0+cpu", "transformers>=5.0,<6", "accelerate>=1.1.0",
                                   "bitsandbytes>=0.49"]
    assert [s.key for s in p.steps] == ["create", "torch", "packages", "verify", "record"]
    text = p.describe()
    assert "from local wheel(s)" in text and "is not needed" in text
    assert not (tmp_path / "env").exists()


def test_uv_plan_passes_pip_settings_explicitly(tmp_path: Path) -> None:
    env = isolated_environ(tmp_path / "home")
    env.update(PIP_INDEX_URL="https://mirror.example/simple", PIP_EXTRA_INDEX_URL="file:///srv/extra",
               PIP_FIND_LINKS="/srv/none")
    p = plan(tmp_path, env, torch="2.12.0", extra_index_urls=("https://more.example/simple",))
    assert p.installer == "uv" and p.torch_source == "index"
    uv = step(p, "create")[0]
    assert step(p, "create") == [uv, "venv", "--quiet", "--python", str(p.interpreter),
                                 str(tmp_path / "env")]
    torch = step(p, "torch")
    assert torch[:5] == [uv, "pip", "install", "--python", str(tmp_path / "env/bin/python")]
    # uv's --torch-backend routes torch to the profile's PyTorch index; PIP_INDEX_URL stays the default
    assert torch[5:] == ["torch==2.12.0+cpu", "--torch-backend", "cpu", "--index-url", "https://mirror.example/simple",
                         "--extra-index-url", "https://more.example/simple",
                         "--extra-index-url", "file:///srv/extra", "--find-links", "/srv/none",
                         "--index-strategy", "unsafe-best-match"]
    pkgs = step(p, "packages")
    assert pkgs[pkgs.index("--index-url") + 1] == "https://mirror.example/simple"
    assert "file:///srv/extra" in pkgs and "/srv/none" in pkgs


def test_explicit_index_url_is_used_even_when_a_local_wheel_exists(tmp_path: Path) -> None:
    p = plan(tmp_path, isolated_environ(tmp_path / "home", uv=False),
             index_url="https://mirror.example/pytorch/cpu")
    assert p.torch_source == "index"
    assert step(p, "torch")[-2:] == ["--index-url", "https://mirror.example/pytorch/cpu"]


def test_http_index_refused_before_anything_happens(tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    result = invoke(["--root", str(tmp_path), "env", "create", "--prefix", str(prefix),
                     "--index-url", "http://mirror.example/simple"])
    assert result.exit_code == 2
    assert "error: --index-url http://mirror.example/simple is not https" in result.stderr
    assert "hint: use the https URL of the index, or pass --allow-insecure-index" in result.stderr
    assert not prefix.exists()
    result = invoke(["--root", str(tmp_path), "env", "create", "--prefix", str(prefix), "--dry-run",
                     "--index-url", "http://mirror.example/simple", "--allow-insecure-index"])
    assert result.exit_code == 0
    assert "--index-url http://mirror.example/simple" in result.stdout


def test_torch_override_of_another_build_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["--root", str(tmp_path), "env", "create", "--torch", "2.13.0+cu126", "--dry-run"])
    assert result.exit_code == 2
    assert "torch 2.13.0+cu126 is the cu126 build, but the profile is the cpu build" in result.stderr


def test_dry_run_json_is_one_document(tmp_path: Path) -> None:
    result = invoke(["--root", str(tmp_path), "env", "create", "--dry-run", "--json",
                     "--prefix", str(tmp_path / "env")])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["status"] == "planned" and doc["plan"]["profile"] == "cpu"
    assert doc["plan"]["torch"]["requirements"] == ["torch==2.13.0+cpu"]
    assert [s["key"] for s in doc["plan"]["steps"]] == ["create", "torch", "packages", "verify", "record"]


def test_default_prefix_is_under_the_data_dir(tmp_path: Path) -> None:
    p = envmod.plan_create(envmod.CreateOptions(), root=tmp_path, environ=dict(os.environ), facts=NO_GPU)
    assert p.prefix == Path(os.environ["XDG_DATA_HOME"]) / "provision" / "envs" / "llm"
    assert p.location.name == "llm"
    with pytest.raises(UsageError, match="is not an environment name"):
        plan(tmp_path, prefix=None, name="../escape")


def test_conda_plan_names_the_env_and_asks_conda_where(
        tmp_path: Path, conda_standin: Callable[[str], CondaStandin]) -> None:
    sim = conda_standin("micromamba")
    p = envmod.plan_create(envmod.CreateOptions(), root=tmp_path, environ=sim.environ, facts=NO_GPU)
    assert p.backend == "micromamba" and p.prefix == sim.root / "envs" / "llm"
    assert step(p, "create")[1:] == ["create", "-y", "-n", "llm", "python=3.11", "pip", "-c", "conda-forge"]
    assert sim.calls() == [["micromamba", "info", "--json"]]
    p = envmod.plan_create(envmod.CreateOptions(prefix=tmp_path / "p", channels=("my-mirror",)),
                           root=tmp_path, environ=sim.environ, facts=NO_GPU)
    assert step(p, "create")[1:] == ["create", "-y", "-p", str(tmp_path / "p"), "python=3.11", "pip",
                                     "-c", "my-mirror", "--override-channels"]


def test_backend_not_on_path(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError) as e:
        plan(tmp_path, isolated_environ(tmp_path / "home"), backend="mamba")
    assert e.value.message == "`mamba` not found on PATH"


# --- what is already at the prefix ----------------------------------------------------------------

def fake_env(prefix: Path, status: str = "complete", profile: str = "cpu",
             spec: dict[str, object] | None = None) -> Path:
    """A directory that looks like a provision env to the record-reading code (no real Python)."""
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").write_text("")
    (prefix / envmod.RECORD_NAME).write_text(json.dumps({
        "version": 1, "status": status, "profile": profile, "backend": "venv", "name": prefix.name,
        "python": "bin/python", "torch": "torch==2.13.0+cu126", "spec": spec or {"profile": profile,
        "torch": ["torch==2.13.0+cu126"], "python": "3.11"}, "error": None}))
    return prefix


def test_foreign_directory_is_never_touched(tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    prefix.mkdir()
    (prefix / "precious.txt").write_text("mine")
    for extra in ([], ["--force"]):
        result = invoke(["--root", str(tmp_path), "env", "create", "--prefix", str(prefix), *extra])
        assert result.exit_code == 1
        assert f"error: {prefix} already exists and was not created by provision" in result.stderr
        assert "hint: choose another --prefix or --name" in result.stderr
    assert (prefix / "precious.txt").read_text() == "mine"


def test_empty_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "env").mkdir()
    assert plan(tmp_path).action == "create"


def test_half_built_needs_force(tmp_path: Path) -> None:
    fake_env(tmp_path / "env", status="building")
    with pytest.raises(ProvisionError) as e:
        plan(tmp_path)
    assert "is half-built: an earlier `env create` for profile cpu did not finish" in e.value.message
    assert e.value.hint is not None and "--force" in e.value.hint
    p = plan(tmp_path, force=True)
    assert p.action == "replace" and [s.key for s in p.steps][:2] == ["remove", "create"]


def test_other_profile_needs_force(tmp_path: Path) -> None:
    fake_env(tmp_path / "env", profile="cu126")
    with pytest.raises(ProvisionError) as e:
        plan(tmp_path)
    assert ("holds an environment built from profile cu126 (torch==2.13.0+cu126, Python 3.11)"
            in e.value.message)
    assert "not profile cpu (torch==2.13.0+cpu, Python 3.11)" in e.value.message
    assert plan(tmp_path, force=True).action == "replace"


def test_same_spec_is_up_to_date(tmp_path: Path) -> None:
    first = plan(tmp_path)
    prefix = fake_env(tmp_path / "env", spec=dict(first.spec))
    # "up to date" asks the environment itself: a real interpreter, and a lock whose one pin it holds
    (prefix / "bin" / "python").unlink()
    (prefix / "bin" / "python").symlink_to(sys.executable)
    name, have = subprocess.run(
        [prefix / "bin" / "python", "-I", "-c",
         "import importlib.metadata as m; d = next(d for d in m.distributions() if d.metadata['Name'] != 'pip'); "
         "print(d.metadata['Name'], d.version)"], capture_output=True, text=True, check=True).stdout.split()
    (prefix / "provision.lock.json").write_text(json.dumps({"packages": {name: have},
                                                            "torch": {"requirements": []}}))
    p = plan(tmp_path)
    assert p.action == "up-to-date" and p.steps == ()
    assert "is up to date: profile cpu" in p.describe()
    result = envmod.apply_create(p, environ=dict(os.environ))
    assert result.status == "up-to-date"


def test_env_status(tmp_path: Path) -> None:
    assert envmod.env_status(tmp_path / "nothing") is None
    prefix = fake_env(tmp_path / "env")
    assert envmod.env_status(prefix) == "complete"
    (prefix / "bin" / "python").unlink()
    assert envmod.env_status(prefix) == "broken"


# --- list, remove, export ------------------------------------------------------------------------

def test_list_remove_export(tmp_path: Path) -> None:
    result = invoke(["env", "list"])
    assert result.exit_code == 0 and "No environments yet" in result.stdout

    data = Path(os.environ["XDG_DATA_HOME"]) / "provision" / "envs"
    done = fake_env(data / "llm")
    half = fake_env(tmp_path / "half", status="building", profile="cu126")
    envmod.update_registry(os.environ, half, {"name": "half", "backend": "venv"})
    envmod.update_registry(os.environ, tmp_path / "gone", {"name": "gone", "backend": "venv"})

    result = invoke(["env", "list", "--json"])
    assert result.exit_code == 0
    rows = {e["name"]: e for e in json.loads(result.stdout)["envs"]}
    assert {n: rows[n]["status"] for n in rows} == {"llm": "complete", "half": "building", "gone": "missing"}
    assert rows["half"]["profile"] == "cu126" and rows["llm"]["prefix"] == str(done)
    assert "llm   cpu" in invoke(["env", "list"]).stdout

    result = invoke(["env", "export", "llm"])
    assert result.exit_code == 1
    assert f"error: {done} has no lock (complete)" in result.stderr

    result = invoke(["env", "remove", "half", "--dry-run"])
    assert result.exit_code == 0 and f"Remove {half}" in result.stdout and half.exists()
    result = invoke(["env", "remove", str(half)])
    assert result.exit_code == 0 and not half.exists()
    assert "half" not in {e.name for e in envmod.list_envs(os.environ)}


def test_remove_refuses_what_provision_did_not_create(tmp_path: Path) -> None:
    foreign = tmp_path / "venv"
    (foreign / "bin").mkdir(parents=True)
    result = invoke(["env", "remove", str(foreign)])
    assert result.exit_code == 1
    assert f"error: {foreign} was not created by provision" in result.stderr
    assert "hint: provision only removes environments it built" in result.stderr
    assert foreign.is_dir()
    result = invoke(["env", "remove", "nosuch"])
    assert result.exit_code == 1 and "error: no environment at" in result.stderr


def test_export_without_env() -> None:
    result = invoke(["env", "export"])
    assert result.exit_code == 1
    assert "error: no environment created by provision at" in result.stderr


def test_pip_config_find_links_reach_uv(tmp_path: Path) -> None:
    """A wheel folder configured in pip.conf (not in PIP_FIND_LINKS) is handed to uv too: uv reads no
    pip configuration. (How pip's files are read, asked of pip itself: tests/env/test_sources.py.)"""
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nfind-links = {tmp_path / 'wheels'}\n")
    env = isolated_environ(tmp_path / "home")
    env.pop("PIP_FIND_LINKS", None)
    env["PIP_CONFIG_FILE"] = str(conf)
    p = plan(tmp_path, env)
    assert p.installer == "uv" and p.find_links == (str(tmp_path / "wheels"),)
    for key in ("torch", "packages"):
        argv = step(p, key)
        assert argv[argv.index("--find-links") + 1] == str(tmp_path / "wheels")


# --- audit additions: local wheel folders, completion only after verify, progress, export -------

def test_missing_find_links_folder_is_refused(tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    for where in (str(tmp_path / "no-wheels"), f"file://{tmp_path / 'no-wheels'}"):
        result = invoke(["--root", str(tmp_path), "env", "create", "--prefix", str(prefix),
                         "--find-links", where])
        assert result.exit_code == 2
        assert result.stderr.splitlines() == [
            f"error: --find-links {where}: no such folder",
            "hint: give the folder that holds the wheel files (or an https:// URL)"]
    assert not prefix.exists()
    assert str(prefix) not in envmod.read_registry(os.environ)


def test_failed_verify_is_never_recorded_complete(tmp_path: Path) -> None:
    """The verify and record steps of a real plan, run on a real venv that has no torch."""
    p = plan(tmp_path, isolated_environ(tmp_path / "home", uv=False))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(p.prefix)], check=True)
    last = replace(p, steps=tuple(s for s in p.steps if s.key in ("verify", "record")))
    said: list[str] = []
    with pytest.raises(ProvisionError) as e:
        envmod.apply_create(last, environ=dict(os.environ), progress=said.append)
    assert e.value.message.startswith(f"verify the environment failed; {p.prefix} is left half-built\n"
                                      "the new environment failed ")
    assert "env.torch: torch is not installed" in e.value.message
    assert e.value.hint is not None and f"provision verify --env {p.prefix}" in e.value.hint
    assert said == ["[1/2] verify the environment ..."]      # the record step never ran
    rec = envmod.read_record(p.prefix)
    assert rec is not None and rec["status"] == "building"
    assert str(rec["error"]).startswith("verify the environment failed")
    assert not (p.prefix / "provision.lock.json").exists()
    assert envmod.env_status(p.prefix) == "building"
    with pytest.raises(ProvisionError, match="is half-built: .* \\(it failed: verify the environment failed"):
        plan(tmp_path)


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal (rich draws its spinner only on one)."""

    def isatty(self) -> bool:
        return True


def test_long_steps_get_a_spinner_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.cli.app import App
    from provisioner.cli.ui import spinners

    assert spinners(App(environ={})) is None                   # pytest's stderr is not a terminal
    assert spinners(App(environ={}, json=True)) is None
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    status = spinners(App(environ={"NO_COLOR": "1"}))
    assert status is not None
    with status("install torch"):
        time.sleep(0.3)
    assert "install torch ..." in screen.getvalue()


def test_export_writes_the_lock_and_reports_it_as_json(tmp_path: Path) -> None:
    from provisioner.env import lock as lockmod
    from provisioner import profiles

    prefix = fake_env(tmp_path / "env")
    profile = profiles.get("cpu", dict(os.environ))
    found = lockmod.Installed("3.11.7", {"torch": "2.13.0+cpu", "transformers": "5.24.0"})
    lockmod.write(prefix, lockmod.build(
        profile=profile, torch_requirements=["torch==2.13.0+cpu"], found=found, facts=NO_GPU,
        backend="venv", installer="pip", prefix=prefix, torch_index_url=profile.torch_index_url,
        index_url=None, extra_index_urls=[], find_links=[]))
    out = tmp_path / "copy.lock.json"
    result = invoke(["env", "export", str(prefix), "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"version": 1, "output": str(out),
                                         "lock": str(prefix / "provision.lock.json"), "pylock": None}
    assert lockmod.read(out).torch_requirements == ("torch==2.13.0+cpu",)
    result = invoke(["env", "export", str(prefix), "--output", str(tmp_path / "env" / "bin" / "python" / "x")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot write {tmp_path / 'env' / 'bin' / 'python' / 'x'}: ")
    assert "hint: choose a writable path for --output" in result.stderr


def test_broken_conda_is_explained(tmp_path: Path) -> None:
    """A `conda` that fails `info --json` (a stand-in: no conda can be installed here, and a broken
    one is what this checks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    conda = bin_dir / "conda"
    conda.write_text("#!/bin/sh\necho 'CondaError: corrupted .condarc' >&2\nexit 1\n")
    conda.chmod(0o755)
    env = isolated_environ(tmp_path / "home", uv=False, extra_path=[bin_dir])
    # a dry run runs no conda command, so it cannot see the breakage: it says the build asks conda
    result = invoke(["--root", str(tmp_path), "env", "create", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "the build asks `conda info --json` for the envs directory" in result.stdout
    result = invoke(["--root", str(tmp_path), "env", "create"], env=env)
    assert result.exit_code == 1
    assert f"error: `{conda} info --json` exited 1\n    CondaError: corrupted .condarc\n" in result.stderr
    assert "hint: check that `conda info --json` works, or pass --prefix PATH (or --backend venv)" \
        in result.stderr
