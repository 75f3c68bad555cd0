"""The `provision` command line: Click only; each command parses, calls one function, renders."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from provisioner import __version__
from provisioner.cli.app import App
from provisioner.errors import ProvisionError

#: Command name -> (module defining it, one-line help). `provision --help` lists these without
#: importing a single command module (pip imports a command's module only when it runs); a
#: command's module is imported when that command is used. tests/test_cli.py keeps the help
#: text equal to each command's own.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "bundle": ("provisioner.cli.bundle",
               "Make one folder or tar with all an offline machine needs for `up`; verify and list one."),
    "chat": ("provisioner.cli.chat",
             "Chat with MODEL (default: a current Qwen chat model) loaded as the smoke chat loads it."),
    "cuda": ("provisioner.cli.cuda",
             "List, switch, roll back and install CUDA toolkits (/usr/local/cuda-X.Y)."),
    "doctor": ("provisioner.cli.verify", "Alias of `provision verify`."),
    "explain": ("provisioner.cli.explain",
                "Explain a paste: nvidia-smi, nvcc --version, pip/conda lists, collect_env, errors, a report."),
    "env": ("provisioner.cli.env",
            "Build, list, export and remove the torch + bitsandbytes environments provision creates."),
    "fleet": ("provisioner.cli.fleet", "Compare many hosts: one table from their saved results (Ansible, verify, report)."),
    "model": ("provisioner.cli.model",
              "Check that a model fits the GPU, and download it (mirror-safe, resumable)."),
    "profile": ("provisioner.cli.profile",
                "List, show and validate profiles (torch wheel + stack for one CUDA line)."),
    "report": ("provisioner.cli.up",
               "Write one Markdown (or --json) file for a bug report; secrets are redacted."),
    "serve": ("provisioner.cli.serve", "Serve MODEL over HTTP as an OpenAI-compatible API (/v1/chat/completions)."),
    "up": ("provisioner.cli.up",
           "Run the whole walkthrough: diagnose, profile, toolkit, environment, fit, download, smoke chat."),
    "verify": ("provisioner.cli.verify",
               "Check driver, GPUs, CUDA toolkit, the environment's torch wheel and bitsandbytes."),
}


class ProvisionGroup(click.Group):
    """Loads command modules on first use, and turns ProvisionError into `error:`/`hint:` lines and
    its exit code (PROVISION_DEBUG=1 re-raises)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            module = importlib.import_module(LAZY_COMMANDS[cmd_name][0])
            for defined in module.COMMANDS:
                self.add_command(defined)
            command = super().get_command(ctx, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            loaded = self.commands.get(name)
            if loaded is not None:
                if loaded.hidden:
                    continue
                rows.append((name, loaded.get_short_help_str(limit=formatter.width)))
            else:
                rows.append((name, LAZY_COMMANDS[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProvisionError as e:
            if os.environ.get("PROVISION_DEBUG") == "1":
                raise
            _record(ctx, e)
            _fail(ctx, e.message, e.hint, e.exit_code)
        except click.exceptions.Exit:
            raise
        except click.ClickException as e:
            # usage errors (a bad option value, a missing argument): exit 2, one document under --json
            app = ctx.find_object(App)
            if not _wants_json(app):
                raise
            app = ctx.ensure_object(App)
            e.show()
            app.json = True
            app.emit_error(e.format_message(), None, e.exit_code)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            if os.environ.get("PROVISION_DEBUG") == "1":
                raise
            _interrupted(ctx)
        except Exception as e:
            # Python 3.11 re-raises what a descriptor's __set_name__ raises as a RuntimeError: a Ctrl-C
            # that lands while a module defining a dataclass is imported arrives in that form.
            if not _from_interrupt(e) or os.environ.get("PROVISION_DEBUG") == "1":
                raise
            _interrupted(ctx)


def _from_interrupt(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in the chain of exceptions that led to `e`."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _interrupted(ctx: click.Context) -> None:
    _fail(ctx, "interrupted", "run the same command again: `up` and `model download` resume where they "
          "stopped; a half-built environment is rebuilt by `env create --force`", 130)


def _wants_json(app: App | None) -> bool:
    return (app is not None and app.json) or "--json" in sys.argv[1:]


def _fail(ctx: click.Context, message: str, hint: str | None, code: int) -> None:
    """`error:` and `hint:` on stderr; under --json also one document on stdout; then the exit code."""
    from provisioner.redact import mask_urls

    click.echo(mask_urls(f"error: {message}"), err=True)
    if hint:
        click.echo(mask_urls(f"hint: {hint}"), err=True)
    app = ctx.find_object(App)
    if app is not None:
        app.emit_error(message, hint, code)
    ctx.exit(code)


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
    from provisioner import profiles

    profiles.on_skip = app.info


def run() -> None:  # console_scripts entry point
    main(prog_name="provision")


if __name__ == "__main__":  # pragma: no cover
    run()
