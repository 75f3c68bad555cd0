"""The hub-related tests at the lowest huggingface_hub setup.cfg allows, as well as the newest.

CI runs `./install.sh --test && .venv/bin/python -m pytest`: the tool's venv holds the newest
huggingface_hub below the bound. The slow test here builds a second, real venv with the floor version
(the other requirements as setup.cfg gives them; this checkout on PYTHONPATH), and runs the hub tests
in it. That inner run sets PROVISION_HUB_FLOOR, which skips the slow test (no recursion; it also runs
`-m "not slow"`) and makes test_the_floor_run_imports_the_floor_version check what was imported.
"""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import CACHE, _key
from tests.fixtures_env import uv_dir

REPO = Path(__file__).resolve().parents[2]
FLOOR_ENV = "PROVISION_HUB_FLOOR"
#: Every test module that talks to huggingface_hub (the worker) or to tests/hubserver.py.
HUB_TESTS = ("tests/model/test_download.py", "tests/model/test_fit.py", "tests/model/test_hub_params.py",
             "tests/model/test_hub_floor.py")


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def hub_requirement() -> Requirement:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return next(r for r in map(Requirement, _lines(cfg["options"]["install_requires"]))
                if canonicalize_name(r.name) == "huggingface-hub")


#: What the hub tests need of the `test` extra (the rest builds venvs or drives browsers).
TEST_TOOLS = ("pytest", "hypothesis", "pytest-timeout")


def floor_requirements() -> tuple[str, list[str]]:
    """(the floor version, what the floor venv installs): setup.cfg's requirements and TEST_TOOLS as
    its test extra bounds them, huggingface_hub pinned to its lower bound."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    hub = hub_requirement()
    floor = next(s.version for s in hub.specifier if s.operator == ">=")
    base = [r for r in _lines(cfg["options"]["install_requires"]) if Requirement(r).name != hub.name]
    test = [r for r in _lines(cfg["options.extras_require"]["test"])
            if canonicalize_name(Requirement(r).name) in TEST_TOOLS]
    return floor, sorted(base) + [f"huggingface_hub=={floor}"] + sorted(test)


def test_setup_cfg_bounds_huggingface_hub() -> None:
    """A floor with the public API the worker uses (hf_hub_download(dry_run=True) and the httpx
    client behind get_session() arrived in 1.0) and a ceiling below the next major version."""
    spec = hub_requirement().specifier
    assert Version("1.0.0") in spec and Version("0.36.2") not in spec
    assert Version("2.99") in spec and Version("3.0.0") not in spec


def test_the_floor_run_imports_the_floor_version() -> None:
    want = os.environ.get(FLOOR_ENV)
    if not want:
        pytest.skip(f"only in the floor run ({FLOOR_ENV} unset)")
    import huggingface_hub

    assert Version(huggingface_hub.__version__) == Version(want)
    # The worker is started as sys.executable too: the child sees the same version.
    child = subprocess.run([sys.executable, "-c", "import huggingface_hub; print(huggingface_hub.__version__)"],
                           capture_output=True, text=True, check=True, timeout=120)
    assert Version(child.stdout.strip()) == Version(want)


def _floor_venv(requirements: list[str]) -> Path:
    """A real venv (stdlib venv, filled by uv) under the test cache; `.complete` marks it built."""
    prefix = CACHE / f"hub-floor-{_key(requirements)}"
    python = prefix / "bin" / "python"
    if (prefix / ".complete").exists() and python.exists():
        return python
    venv.EnvBuilder(clear=True, with_pip=False).create(prefix)
    subprocess.run([str(uv_dir() / "uv"), "pip", "install", "--quiet", "--python", str(python), *requirements],
                   check=True, timeout=600, env=dict(os.environ))
    (prefix / ".complete").write_text("ok\n")
    return python


@pytest.mark.slow
def test_hub_tests_pass_at_the_floor_version(tmp_path: Path) -> None:
    if os.environ.get(FLOOR_ENV):
        pytest.skip("this is the floor run")
    floor, requirements = floor_requirements()
    python = _floor_venv(requirements)
    report = tmp_path / "floor.xml"
    env = dict(os.environ, PYTHONPATH=str(REPO), **{FLOOR_ENV: floor})
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           f"--junitxml={report}", *HUB_TESTS],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, f"hub tests failed at huggingface_hub=={floor}:\n{done.stdout[-6000:]}"
    cases = {c.get("name"): c for c in ET.parse(report).iter("testcase")}
    version_check = cases["test_the_floor_run_imports_the_floor_version"]
    assert version_check.find("skipped") is None and version_check.find("failure") is None
    assert len(cases) > 100                 # the hub tests ran, not just this module
