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
