"""What `provision serve` and `provision chat --web` decide before they start anything: the environment and model
(as `chat`), the profile extra still missing and how it is installed (asked first, --yes answers), the
script's argv (the API key kept out of it), and the warning for an address beyond this machine."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from provisioner import profiles
from provisioner.cli import main
from provisioner.model import serve
from tests.serve.running import TINY

BUNDLED = sorted(profiles.bundled_dir().glob("*.yaml"))


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def bare_env(bare_env_python: Path) -> str:
    return str(bare_env_python.parent.parent)


def test_serve_dry_run_names_the_missing_extra_and_the_command(bare_env: str) -> None:
    code, out, err = invoke("serve", str(TINY), "--env", bare_env, "--dry-run", "--api-key", "s3cret",
                            "--port", "8123", "--max-waiting", "2")
    assert code == 0, err
    python = f"{bare_env}/bin/python"
    assert f"Environment: venv {bare_env}\n" in out
    assert "Extra:       serve = fastapi>=0.115.2,<1 uvicorn>=0.30 (profile cpu, default: the environment " \
           "names no profile)\n" in out
    assert "Missing:     fastapi (not installed), uvicorn (not installed)\n" in out
    # a bare venv has no torch: nothing to keep pinned
    assert (f"Install:     {python} -m pip install --disable-pip-version-check 'fastapi>=0.115.2,<1' "
            f"'uvicorn>=0.30'\n") in out
    assert (f"Run:         {python} {serve.SERVE.script} {TINY} --quant nf4 --host 127.0.0.1 --port 8123 "
            f"--max-new-tokens 512 --max-waiting 2\n") in out
    assert "with PROVISION_SERVE_API_KEY set (the API key)" in out
    assert "s3cret" not in out + err                        # never in argv, never printed
    assert "warning" not in out + err                       # loopback: nothing to warn about


def test_dry_run_json_is_the_plan(bare_env: str) -> None:
    code, out, _ = invoke("--json", "serve", str(TINY), "--env", bare_env, "--dry-run")
    assert code == 0
    doc = json.loads(out)
    assert doc["dry_run"] is True and doc["front_end"] == "serve" and doc["env"] == bare_env
    assert doc["requirements"] == ["fastapi>=0.115.2,<1", "uvicorn>=0.30"]
    assert doc["install"][:4] == [f"{bare_env}/bin/python", "-m", "pip", "install"]
    assert doc["argv"][1] == str(serve.SERVE.script) and doc["environ"] == []


def test_web_dry_run_installs_gradio_and_warns_beyond_loopback(bare_env: str) -> None:
    code, out, err = invoke("chat", "--web", str(TINY), "--env", bare_env, "--dry-run", "--host", "0.0.0.0",
                            "--system", "Be brief.", "--greedy")
    assert code == 0, err
    assert "Extra:       web = gradio>=6.0,<7 (profile cpu" in out
    assert "Missing:     gradio (not installed)\n" in out
    assert (f"{serve.WEB.script} {TINY} --quant nf4 --host 0.0.0.0 --port 7860 --max-new-tokens 512 "
            f"--system 'Be brief.' --greedy\n") in out
    assert ("warning: --host 0.0.0.0: anyone who can reach this machine on that network can use the chat; "
            "the page asks for no password") in out


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("::", False),
                                                ("192.168.1.20", False), ("myhost.lan", False)])
def test_which_addresses_stay_on_this_machine(host: str, loopback: bool) -> None:
    assert serve.is_loopback(host) is loopback
    note = serve.exposure_note(host, "the model (the API)", api_key=False)
    assert (note is None) is loopback
    if note is not None:
        assert "pass --api-key KEY" in note


def test_serve_warns_on_a_public_address_even_with_a_key(bare_env: str) -> None:
    code, out, _ = invoke("serve", str(TINY), "--env", bare_env, "--dry-run", "--host", "0.0.0.0",
                          "--api-key", "k")
    assert code == 0
    assert "can use the model (the API); only requests with the API key are answered" in out


def test_without_yes_and_without_a_terminal_nothing_is_installed(bare_env: str, bare_env_python: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "provisioner", "serve", str(TINY), "--env", bare_env],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert ("error: the OpenAI-compatible server needs fastapi (not installed), uvicorn (not installed) in "
            f"{bare_env}; install fastapi>=0.115.2,<1 uvicorn>=0.30 there? (needs confirmation, and stdin "
            "is not a terminal)") in done.stderr
    assert "hint: re-run with --yes, or see the command with --dry-run" in done.stderr
    assert "Traceback" not in done.stderr
    versions, _ = serve.installed(bare_env_python, ["fastapi", "uvicorn"], dict(os.environ))
    assert versions == {"fastapi": None, "uvicorn": None}


def test_the_extra_comes_from_the_profile_the_env_was_built_with(tmp_path: Path) -> None:
    """An environment provision built records its profile; a user profile of that name overrides the
    bundled one, so its pin is what gets installed. No pip in the env: uv installs from outside."""
    prefix = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    (prefix / "provision-env.json").write_text(json.dumps({"profile": "cu126", "status": "complete"}))
    user = tmp_path / "config" / "provision" / "profiles"
    user.mkdir(parents=True)
    doc = yaml.safe_load((profiles.bundled_dir() / "cu126.yaml").read_text())
    doc["extras"]["web"] = {"gradio": ">=6.5,<7"}
    (user / "cu126.yaml").write_text(yaml.safe_dump(doc))
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is in the test extra (pip install -e .[test])")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": str(Path(uv).parent)}
    code, out, err = invoke("chat", "--web", str(TINY), "--env", str(prefix), "--dry-run", env=env)
    assert code == 0, err
    assert "web = gradio>=6.5,<7 (profile cu126, the environment's record)" in out
    assert f"Install:     {uv} pip install --python {prefix}/bin/python 'gradio>=6.5,<7'\n" in out


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in BUNDLED])
def test_every_profile_pins_both_extras(path: Path) -> None:
    p = profiles.load(path)
    assert {name: {k: profiles.spec_text(v) for k, v in pkgs.items()} for name, pkgs in p.extras.items()} == {
        "web": {"gradio": ">=6.0,<7"}, "serve": {"fastapi": ">=0.115.2,<1", "uvicorn": ">=0.30"}}
    assert "extras" in p.sources and p.to_dict()["extras"]["web"] == {"gradio": ">=6.0,<7"}


def test_a_bad_extra_is_named_by_file_and_key(tmp_path: Path) -> None:
    doc = yaml.safe_load((profiles.bundled_dir() / "cpu.yaml").read_text())
    doc["extras"] = {"web": {"gradio": 6}, "serve": ["fastapi"], "b@d": {}}
    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(profiles.InvalidProfile) as bad:
        profiles.load(path)
    assert set(bad.value.problems) == {f"{path}: extras.web.gradio: expected a string, got an integer 6 "
                                       "(quote it: \"6\")",
                                       f"{path}: extras.serve: expected a mapping, got a list",
                                       f"{path}: extras.b@d: not a valid extra name"}


def test_web_options_need_web() -> None:
    code, _, err = invoke("chat", str(TINY), "--port", "7861", "--yes")
    assert code == 2
    assert "error: --port, --yes are for the web chat only" in err and "hint: add --web" in err


def test_serve_refuses_a_missing_model_folder_before_anything(tmp_path: Path, bare_env: str) -> None:
    code, _, err = invoke("serve", str(tmp_path / "nothing"), "--env", bare_env)
    assert code == 2
    assert f"error: model folder {tmp_path / 'nothing'} does not exist" in err


def test_serve_with_no_arguments_serves_what_up_set_up(tmp_path: Path, bare_env: str) -> None:
    """After `provision up`, its record names the env, model and quant: `serve` alone uses them."""
    state = tmp_path / "state"
    (state / "provision").mkdir(parents=True)
    (state / "provision" / "up.json").write_text(json.dumps({"version": 1, "stages": {
        "env": {"status": "done", "result": {"prefix": bare_env}},
        "smoke": {"status": "done", "result": {"model": str(TINY), "quant": "int8"}}}}))
    code, out, err = invoke("serve", "--dry-run", env={"XDG_STATE_HOME": str(state), "VIRTUAL_ENV": ""})
    assert code == 0, err
    assert "using the environment `provision up` built" in err
    assert f"Environment: venv {bare_env}\n" in out
    assert f"{serve.SERVE.script} {TINY} --quant int8 " in out
