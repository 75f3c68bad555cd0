"""The `provision` command line: Click only; each command parses, calls one function, renders."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from provisioner import __version__
from provisioner.cli.app import App
from provisioner.errors import ProvisionError


class ProvisionGroup(click.Group):
    """Turns ProvisionError into `error:`/`hint:` lines and its exit code (PROVISION_DEBUG=1 re-raises)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProvisionError as e:
            if os.environ.get("PROVISION_DEBUG") == "1":
                raise
            _record(ctx, e)
            click.echo(f"error: {e.message}", err=True)
            if e.hint:
                click.echo(f"hint: {e.hint}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            if os.environ.get("PROVISION_DEBUG") == "1":
                raise
            click.echo("error: interrupted", err=True)
            click.echo("hint: run the same command again: `up` and `model download` resume where they "
                       "stopped; a half-built environment is rebuilt by `env create --force`", err=True)
            ctx.exit(130)


def _record(ctx: click.Context, e: ProvisionError) -> None:
    from provisioner import state
    from provisioner.errors import CommandError

    detail = (e.stderr or e.stdout) if isinstance(e, CommandError) else ""
    state.record_failure(os.environ, sys.argv, e.message, e.hint, detail)


@click.group(cls=ProvisionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default="/",
              envvar="PROVISION_ROOT", show_envvar=True, hidden=False,
              help="Filesystem root under which system paths (usr/local/cuda*, proc, etc) are used.")
@click.option("-v", "--verbose", count=True, help="Print each external command as it runs.")
@click.option("--json", "json_out", is_flag=True, help="Print one JSON document on stdout.")
@click.version_option(__version__, "--version", prog_name="provision")
@click.pass_context
def main(ctx: click.Context, root: Path, verbose: int, json_out: bool) -> None:
    """Take an NVIDIA GPU machine from "driver installed" to "a 4-bit Qwen chat model answers".

    Start with `provision verify` (works without a GPU) or `provision up`.
    """
    app = ctx.ensure_object(App)
    app.root = root
    app.environ = dict(os.environ)
    app.verbose = verbose
    app.json = app.json or json_out
    app.install_trace()


def _register() -> None:
    # Command modules import only click and provisioner's light modules at import time.
    from provisioner.cli import chat, cuda, env, model, profile, up, verify

    for module in (profile, cuda, verify, env, model, chat, up):
        for command in module.COMMANDS:
            main.add_command(command)


_register()


def run() -> None:  # console_scripts entry point
    main(prog_name="provision")


if __name__ == "__main__":  # pragma: no cover
    run()
