"""The CLI shell: lazy imports, global options, error rendering."""
from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.errors import ProvisionError

HEAVY = ("torch", "transformers", "bitsandbytes", "accelerate", "huggingface_hub", "pynvml", "rich")


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from provisioner.cli import main\n"
        "try:\n    main(['--help'], prog_name='provision')\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "Usage: provision" in out.stdout


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("provision, version ")


def test_provision_error_is_rendered_without_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command("boom")
    def boom() -> None:
        raise ProvisionError("the thing is broken", hint="run `provision fix`")

    main.add_command(boom)
    try:
        result = CliRunner().invoke(main, ["boom"])
        assert result.exit_code == 1
        assert result.stderr == "error: the thing is broken\nhint: run `provision fix`\n"
        assert "Traceback" not in result.output
        monkeypatch.setenv("PROVISION_DEBUG", "1")
        result = CliRunner().invoke(main, ["boom"])
        assert isinstance(result.exception, ProvisionError)
    finally:
        main.commands.pop("boom")


def test_root_option_reads_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    seen = {}

    @click.command("where")
    @click.pass_context
    def where(ctx: click.Context) -> None:
        seen["root"] = ctx.obj.root

    main.add_command(where)
    try:
        monkeypatch.setenv("PROVISION_ROOT", str(tmp_path))
        assert CliRunner().invoke(main, ["where"]).exit_code == 0
        assert seen["root"] == tmp_path
    finally:
        main.commands.pop("where")


def test_lazy_command_table_matches_the_commands() -> None:
    """`--help` lists commands from a static table; each entry must name the module that defines
    the command and repeat that command's own one-line help."""
    import importlib

    from provisioner.cli import LAZY_COMMANDS

    for name, (module_name, short_help) in LAZY_COMMANDS.items():
        module = importlib.import_module(module_name)
        defined = {c.name: c for c in module.COMMANDS}
        assert name in defined, f"{module_name} does not define {name}"
        assert defined[name].get_short_help_str(limit=300) == short_help, name
    all_defined = {c.name for m in {m for m, _ in LAZY_COMMANDS.values()}
                   for c in importlib.import_module(m).COMMANDS}
    assert all_defined == set(LAZY_COMMANDS)


def test_help_lists_every_command_without_loading_them() -> None:
    code = (
        "import sys\n"
        "from provisioner.cli import main\n"
        "try:\n    main(['--help'], prog_name='provision')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('provisioner.cli.') and m != 'provisioner.cli.app'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    for name in ("chat", "cuda", "doctor", "env", "model", "profile", "report", "up", "verify"):
        assert f"\n  {name} " in out
