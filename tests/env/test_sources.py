"""env/sources.py against the real tools: pip reading real configuration files, and real wheel files
judged by their tags, with pip itself deciding the same question beside provision."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from click.testing import CliRunner
from packaging import tags

from provisioner.cli import main
from provisioner.env import sources
from provisioner.env.backends import step_environ
from provisioner.env.choose import MachineFacts
from provisioner.env.plan import CreateOptions, plan_create
from tests.bundle import pyindex
from tests.fixtures_env import isolated_environ

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
CP = f"cp{sys.version_info.major}{sys.version_info.minor}"
#: Platforms no x86_64 glibc machine installs (on another machine, those that are its own are dropped).
MINE = next((p for p in tags.platform_tags() if not p.startswith("linux_")), next(iter(tags.platform_tags())))
FOREIGN = ("manylinux_2_28_aarch64", "musllinux_1_2_x86_64", "win_amd64", "macosx_11_0_arm64",
           "manylinux_2_17_ppc64le")


# --- builders and pip's own answers ----------------------------------------------------------------

def make_wheel(folder: Path, name: str, version: str, tag: str) -> Path:
    """A minimal valid wheel (PEP 427) of `name` with tag `tag`, written into `folder`."""
    filename, data, _metadata = pyindex.make_wheel(name, version, tag, [])
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / filename
    wheel.write_bytes(data)
    return wheel


def pip_environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environ for pip: its HOME, an empty XDG_CONFIG_DIRS, no PIP_FIND_LINKS or
    PIP_CONFIG_FILE from the machine running the tests."""
    env = isolated_environ(tmp_path / "home", uv=False)
    env.pop("PIP_FIND_LINKS", None)
    env.pop("PIP_CONFIG_FILE", None)
    env["XDG_CONFIG_DIRS"] = str(tmp_path / "no-xdg")
    env.update(extra)
    return env


def pip_searches(environ: dict[str, str], python: Path | str = sys.executable) -> tuple[str, ...]:
    """The find-links a real `pip install` searches with this environ (its "Looking in links:" line)."""
    done = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "--no-index", "--ignore-installed",
                           "no-such-project-anywhere"], env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "No matching distribution" in done.stderr, done.stderr
    line = next((x for x in done.stdout.splitlines() if x.startswith("Looking in links: ")), "")
    return tuple(line.removeprefix("Looking in links: ").split(", ")) if line else ()


def pip_picks(folder: Path, requirement: str, *platform: str) -> Path | None:
    """The wheel a real `pip install --dry-run` takes from `folder` alone (None: it takes none); with
    `platform`, for CPython PY on those platforms instead of this machine."""
    # pip 23.2 takes --platform only with --target (nothing is written there: it is a dry run)
    target = ["--only-binary=:all:", "--python-version", PY, *(f"--platform={p}" for p in platform),
              "--target", str(folder.parent / "target")] if platform else []
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    env.pop("PIP_FIND_LINKS", None)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index",
                           "--ignore-installed", "--find-links", str(folder), *target, "--report", "-",
                           requirement], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        assert "No matching distribution" in done.stderr, done.stderr
        return None
    [item] = json.loads(done.stdout)["install"]
    return Path(unquote(urlsplit(item["download_info"]["url"]).path))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- pip's configuration, asked of pip -------------------------------------------------------------

def test_null_config_file_reads_no_file(tmp_path: Path) -> None:
    """PIP_CONFIG_FILE=/dev/null: pip reads no file at all, so the user's find-links is not taken."""
    env = pip_environ(tmp_path)
    write(tmp_path / "home/.config/pip/pip.conf", "[global]\nfind-links = /wheels/user\n")
    assert sources.pip_find_links(env) == pip_searches(env) == ("/wheels/user",)
    null = {**env, "PIP_CONFIG_FILE": os.devnull}
    assert sources.pip_find_links(null) == pip_searches(null) == ()


def test_config_file_stands_in_for_the_user_files(tmp_path: Path) -> None:
    """An existing PIP_CONFIG_FILE makes pip skip the user's files (a missing one does not)."""
    write(tmp_path / "home/.pip/pip.conf", "[global]\nfind-links = /wheels/user\n")
    ci = write(tmp_path / "ci.conf", "[global]\ntimeout = 30\n")
    env = pip_environ(tmp_path, PIP_CONFIG_FILE=str(ci))
    assert sources.pip_find_links(env) == pip_searches(env) == ()
    write(ci, "[install]\nfind-links = /wheels/ci\n")
    assert sources.pip_find_links(env) == pip_searches(env) == ("/wheels/ci",)
    gone = {**env, "PIP_CONFIG_FILE": str(tmp_path / "missing.conf")}
    assert sources.pip_find_links(gone) == pip_searches(gone) == ("/wheels/user",)


def test_sections_kinds_and_values_as_pip_merges_them(tmp_path: Path) -> None:
    """[install] over [global], the user file over the global one, a multi-line value split, an empty
    value ignored, and PIP_FIND_LINKS over every file."""
    env = pip_environ(tmp_path, XDG_CONFIG_DIRS=str(tmp_path / "xdg"))
    write(tmp_path / "xdg/pip/pip.conf", "[install]\nfind-links = /wheels/global\n")
    assert sources.pip_find_links(env) == pip_searches(env) == ("/wheels/global",)
    user = write(tmp_path / "home/.config/pip/pip.conf",
                 "[global]\nfind-links = /wheels/g\n[install]\nfind-links =\n    /wheels/a\n    /wheels/b\n")
    assert sources.pip_find_links(env) == pip_searches(env) == ("/wheels/a", "/wheels/b")
    write(user, "[global]\nfind-links = /wheels/g\n[install]\nfind-links =\n")
    assert sources.pip_find_links(env) == pip_searches(env) == ("/wheels/g",)
    env["PIP_FIND_LINKS"] = "/x /y"
    assert sources.pip_find_links(env) == pip_searches(env) == ("/x", "/y")


def test_root_moves_no_pip_file(tmp_path: Path) -> None:
    """--root R: pip reads its files on the running system when it installs, so the plan does too;
    R/etc/pip.conf is not pip's. XDG_CONFIG_DIRS in the environ is, and is taken (uv is handed it)."""
    root = tmp_path / "root"
    write(root / "etc/pip.conf", "[global]\nfind-links = /wheels/root\n")
    write(root / "etc/xdg/pip/pip.conf", "[global]\nfind-links = /wheels/root-xdg\n")
    env = pip_environ(tmp_path, PATH=isolated_environ(tmp_path / "home")["PATH"])

    def planned(environ: dict[str, str]) -> list[str]:
        result = CliRunner().invoke(main, ["--root", str(root), "env", "create", "--dry-run", "--json",
                                           "--prefix", str(tmp_path / "env"), "--installer", "uv"],
                                    env={k: environ.get(k) for k in {*os.environ, *environ}})
        assert result.exit_code == 0, result.output
        links: list[str] = json.loads(result.stdout)["plan"]["indexes"]["find_links"]
        return links

    assert "/wheels/root" not in pip_searches(env) and "/wheels/root-xdg" not in pip_searches(env)
    assert not {"/wheels/root", "/wheels/root-xdg"} & set(planned(env))
    xdg = {**env, "XDG_CONFIG_DIRS": str(root / "etc/xdg")}
    assert pip_searches(xdg) == ("/wheels/root-xdg",)
    assert planned(xdg) == ["/wheels/root-xdg"]


@pytest.fixture(scope="module")
def venv_with_site_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real venv (with pip) whose own site file, <venv>/pip.conf, names a wheel folder."""
    venv = tmp_path_factory.mktemp("site") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    write(venv / "pip.conf", f"[global]\nfind-links = {venv.parent / 'site-wheels'}\n")
    return venv


def test_the_plan_reads_what_the_new_environments_pip_reads(tmp_path: Path, venv_with_site_file: Path) -> None:
    """The venv provision is asked from has a site pip.conf: its own pip uses it, but the new env
    made from its python does not, and neither does the plan. The user's file counts for both."""
    venv = venv_with_site_file
    site_wheels, user_wheels = venv.parent / "site-wheels", tmp_path / "user-wheels"
    make_wheel(site_wheels, "torch", "2.13.0+cpu", f"{CP}-{CP}-{MINE}")
    fitting = make_wheel(user_wheels, "torch", "2.13.0+cpu", f"{CP}-none-any")
    env = pip_environ(tmp_path, PATH=os.pathsep.join([str(venv / "bin"), os.environ["PATH"]]))
    assert pip_searches(env, venv / "bin/python") == (str(site_wheels),)       # pip uses its site file
    assert sources.pip_config_find_links(env, [venv / "bin/python"]) == ()     # the plan leaves it out
    plan = plan_create(CreateOptions(prefix=tmp_path / "env", profile="cpu", torch="2.13.0", python=PY,
                                     installer="pip", backend="venv"), root=tmp_path, environ=env, facts=MachineFacts())
    create = next(s for s in plan.steps if s.key == "create")
    assert create.argv[:3] == (str(venv / "bin" / f"python{PY}"), "-m", "venv")
    assert plan.torch_source == "index"

    write(tmp_path / "home/.config/pip/pip.conf", f"[global]\nfind-links = {user_wheels}\n")
    plan = plan_create(CreateOptions(prefix=tmp_path / "env", profile="cpu", torch="2.13.0", python=PY,
                                     installer="pip", backend="venv"), root=tmp_path, environ=env, facts=MachineFacts())
    assert plan.torch_source == "local" and dict(plan.local_wheels) == {"torch": fitting}
    # run the plan's own create step, then ask the new env's pip what it will search
    create = next(s for s in plan.steps if s.key == "create")
    subprocess.run(create.argv, env=step_environ(env), check=True, timeout=300)
    assert pip_searches(step_environ(env), plan.python) == (str(user_wheels),)


def test_no_pip_to_ask_means_no_configuration(tmp_path: Path) -> None:
    """An interpreter without pip is passed over for the next one."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=300)
    write(tmp_path / "home/.config/pip/pip.conf", "[global]\nfind-links = /wheels/user\n")
    env = pip_environ(tmp_path)
    assert sources.read_pip_config([bare / "bin/python"], env) is None
    assert sources.pip_config_find_links(env, [bare / "bin/python"]) == ("/wheels/user",)   # then this one


def test_a_config_file_pip_cannot_parse_is_an_error(tmp_path: Path) -> None:
    """pip refuses to run with a broken file, so the install would fail: the plan says so first."""
    broken = write(tmp_path / "broken.conf", "find-links = /wheels/no-section\n")
    env = pip_environ(tmp_path, PIP_CONFIG_FILE=str(broken))
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "env", "create", "--dry-run",
                                       "--prefix", str(tmp_path / "env"), "--installer", "pip"],
                                env={k: env.get(k) for k in {*os.environ, *env}})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: pip cannot read its configuration" in result.stderr
    assert "File contains no section headers" in result.stderr and str(broken) in result.stderr


def test_pip_config_debug_output_parsed() -> None:
    """The shape `pip config debug` prints (pip 23.2), with a multi-line value."""
    text = ("env_var:\n  PIP_FIND_LINKS='/env'\nenv:\nglobal:\n  /etc/xdg/pip/pip.conf, exists: False\n"
            "  /etc/pip.conf, exists: True\n    global.find-links: /g\nsite:\n  /v/pip.conf, exists: True\n"
            "    install.find-links: /s\nuser:\n  /h/.pip/pip.conf, exists: False\n"
            "  /h/.config/pip/pip.conf, exists: True\n    install.find-links: \n    /u1\n    /u2\n")
    config = sources.PipConfig.parse(text)
    assert config.option("find-links") == "\n/u1\n/u2"
    assert config.option("find-links", kinds=("global",)) == "/g"
    assert config.option("find-links", kinds=("global", "site")) == "/s"
    assert config.option("index-url") is None


# --- wheel tags --------------------------------------------------------------------------------------

def test_supported_tags_are_packagings() -> None:
    """For this interpreter's version they are sys_tags(); another version or platform gets its own."""
    assert sources.supported_tags(PY) == tuple(tags.sys_tags())
    other = sources.supported_tags("3.12", ["manylinux_2_28_aarch64"])
    assert other[0] == tags.Tag("cp312", "cp312", "manylinux_2_28_aarch64")
    assert {t.platform for t in other} == {"manylinux_2_28_aarch64", "any"}
    assert not any(t.interpreter == "cp311" and t.abi == "cp311" for t in other)


def foreign_platforms() -> list[str]:
    mine = set(tags.platform_tags())
    return [p for p in FOREIGN if p not in mine]


def test_real_wheels_with_foreign_tags_are_refused(tmp_path: Path) -> None:
    """aarch64, musllinux, Windows, macOS and other-Python wheels of the pinned torch: pip takes none
    of them here and neither does provision, so the plan goes to the index. A fitting one is taken."""
    wheels = tmp_path / "wheels"
    for plat in foreign_platforms():
        make_wheel(wheels, "torch", "2.13.0+cpu", f"{CP}-{CP}-{plat}")
    make_wheel(wheels, "torch", "2.13.0+cpu", f"cp39-cp39-{MINE}")
    assert pip_picks(wheels, "torch==2.13.0+cpu") is None
    assert sources.find_local_wheels(["torch==2.13.0+cpu"], [str(wheels)], PY) is None
    env = pip_environ(tmp_path, PIP_CONFIG_FILE=os.devnull)
    args = ["--root", str(tmp_path), "env", "create", "--dry-run", "--json", "--prefix", str(tmp_path / "env"),
            "--profile", "cpu", "--torch", "2.13.0", "--python", PY, "--installer", "pip", "--find-links", str(wheels)]
    run_env = {k: env.get(k) for k in {*os.environ, *env}}
    result = CliRunner().invoke(main, args, env=run_env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["torch"]["source"] == "index"

    # one that fits this machine, and a pure-Python one: the more specific wins, for pip and provision
    fitting = make_wheel(wheels, "torch", "2.13.0+cpu", f"{CP}-{CP}-{MINE}")
    make_wheel(wheels, "torch", "2.13.0+cpu", "py3-none-any")
    assert pip_picks(wheels, "torch==2.13.0+cpu") == fitting
    result = CliRunner().invoke(main, args, env=run_env)
    assert result.exit_code == 0, result.output
    torch = json.loads(result.stdout)["plan"]["torch"]
    assert torch["source"] == "local" and torch["local_wheels"] == {"torch": str(fitting)}


@pytest.mark.parametrize("platform", ["manylinux_2_28_aarch64", "musllinux_1_2_x86_64", "win_amd64"])
def test_wheels_for_another_platform(tmp_path: Path, platform: str) -> None:
    """With an explicit platform (a bundle for another machine) its wheel is the one taken, as pip's
    --platform takes it."""
    wheels = tmp_path / "wheels"
    for plat in ("manylinux_2_28_aarch64", "musllinux_1_2_x86_64", "win_amd64", "manylinux_2_28_x86_64"):
        make_wheel(wheels, "torch", "2.13.0+cpu", f"{CP}-{CP}-{plat}")
    make_wheel(wheels, "torch", "2.13.0+cpu", "py3-none-any")
    found = sources.find_local_wheels(["torch==2.13.0+cpu"], [f"file://{wheels}"], PY, platforms=[platform])
    assert found == {"torch": wheels / f"torch-2.13.0+cpu-{CP}-{CP}-{platform}.whl"}
    assert pip_picks(wheels, "torch==2.13.0+cpu", platform) == found["torch"]


def test_only_exact_pins_are_looked_up(tmp_path: Path) -> None:
    make_wheel(tmp_path, "torch", "2.13.0+cpu", "py3-none-any")
    for req in ("torch>=2.13.0", "torch==2.13.*", "torch"):
        assert sources.find_local_wheels([req], [str(tmp_path)], PY) is None
    assert sources.find_local_wheels(["Torch==2.13.0+cpu"], [str(tmp_path)], PY) == {
        "torch": tmp_path / "torch-2.13.0+cpu-py3-none-any.whl"}
