"""No traceback ever reaches the user: hypothesis drives every command with odd arguments, and profile
loading with damaged profile files (fixed seed, bounded examples: the same inputs in CI every run)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner import profiles
from provisioner.cli import LAZY_COMMANDS, main

#: Commands that change the machine or start long work run with --dry-run (or not at all): the fuzz is
#: about argument handling, not about building environments on random input.
DRY = {("up",), ("env", "create"), ("env", "remove"), ("cuda", "switch"), ("cuda", "rollback"),
       ("cuda", "install"), ("model", "download"), ("cuda", "shell-init"), ("serve",),
       ("bundle", "create")}
SKIP = {("chat",), ("report",)}         # an interactive REPL; report writes files (tested on its own)
ODD = ["", " ", "-1", "0", "1e30", "nan", "../x", "a/b.", "cu126", "12.6", "99.9", "auto", "none", "é", "\t",
       "x" * 300, "--", "Qwen/Qwen2.5-7B-Instruct", "tests/fixtures/tiny-qwen2", "/dev/null", "-", "3.7"]


def _leaves() -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(main)
    for name in LAZY_COMMANDS:
        cmd = main.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                yield (name, sub.name or ""), sub
        else:
            yield (name,), cmd


LEAVES = sorted((path, cmd) for path, cmd in _leaves() if path not in SKIP and cmd.name != "doctor")


def _value(param: click.Parameter) -> st.SearchStrategy[str]:
    choices = getattr(param.type, "choices", None)
    odd = st.sampled_from(ODD) | st.text(alphabet="aZ9./-_ é:@", max_size=10)
    return (st.sampled_from(list(choices)) | odd) if choices else (odd | st.integers(-10**20, 10**20).map(str))


@st.composite
def argv(draw: st.DrawFn, path: tuple[str, ...], cmd: click.Command) -> list[str]:
    args = list(path)
    for param in cmd.params:
        if not draw(st.booleans()):
            continue
        if isinstance(param, click.Option):
            name = max(param.opts, key=len)
            if name in ("--help", "--version", "--dry-run", "--yes", "--smoke-chat"):
                continue
            args.append(name)
            if not param.is_flag:
                args.append(draw(_value(param)))
        elif isinstance(param, click.Argument):
            args.append(draw(_value(param)))
    if path in DRY:
        args.append("--dry-run")
    if path == ("up",):
        args.append("--yes")
    return args


@pytest.mark.parametrize(("path", "cmd"), LEAVES, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_no_traceback_from_any_arguments(path: tuple[str, ...], cmd: click.Command, tmp_path: Path) -> None:
    environ = {**os.environ, "PROVISION_NVML_LIBRARY": str(tmp_path / "none.so"), "HF_HUB_OFFLINE": "1",
               "PROVISION_NVCC_TIMEOUT": "2"}

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(argv(path, cmd), st.booleans())
    def run(args: list[str], as_json: bool) -> None:
        full = ["--root", str(tmp_path / "root"), *(["--json"] if as_json else []), *args]
        result = CliRunner().invoke(main, full, env=environ, catch_exceptions=True)
        exc = result.exception
        assert exc is None or isinstance(exc, SystemExit), (full, repr(exc), result.output[-2000:])
        assert "Traceback" not in result.output, full
        assert result.exit_code in (0, 1, 2, 4), (full, result.exit_code, result.output[-1000:])

    run()


BASE = yaml.safe_load((profiles.bundled_dir() / "cu126.yaml").read_text())


@st.composite
def damaged_profile(draw: st.DrawFn) -> Any:
    doc: Any = {k: v for k, v in BASE.items() if draw(st.booleans()) or k == "name"}
    junk = st.none() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8) | st.lists(st.integers(),
                                                                                                  max_size=3)
    for key in draw(st.lists(st.sampled_from(sorted(BASE) + ["toch", "cuda ", "1"]), max_size=4)):
        doc[key] = draw(junk | st.dictionaries(st.text(max_size=5), junk, max_size=3))
    return draw(st.sampled_from([doc, [doc], "just text", None, 42])) if draw(st.integers(0, 9)) == 0 else doc


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged_profile())
def test_no_traceback_from_a_damaged_profile(tmp_path_factory: pytest.TempPathFactory, doc: Any) -> None:
    config = tmp_path_factory.mktemp("cfg")
    d = config / "provision" / "profiles"
    d.mkdir(parents=True)
    (d / "cu126.yaml").write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    environ = {**os.environ, "XDG_CONFIG_HOME": str(config)}
    for args in (["profile", "validate", str(d / "cu126.yaml")], ["profile", "list"], ["profile", "show", "cu126"]):
        result = CliRunner().invoke(main, args, env=environ, catch_exceptions=True)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert result.exit_code in (0, 2), (args, result.output)
