"""The App object every command receives, and the small Click helpers shared by commands."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from provisioner import proc
from provisioner.redact import mask_urls

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    """Global options, resolved once: the filesystem root, the environment, output mode."""

    root: Path = Path("/")
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    verbose: int = 0
    json: bool = False
    emitted: bool = False      # a JSON document is on stdout already (a failure then adds none)

    @property
    def color(self) -> bool | None:
        return False if "NO_COLOR" in self.environ else None

    def echo(self, text: str = "", *, nl: bool = True) -> None:
        """Human output to stdout (suppressed under --json so stdout holds one document)."""
        if not self.json:
            click.echo(mask_urls(text), nl=nl, color=self.color)

    def info(self, text: str) -> None:
        """Progress and hints to stderr (always; never pollutes --json)."""
        click.echo(mask_urls(text), err=True, color=self.color)

    def debug(self, text: str) -> None:
        if self.verbose:
            click.echo(text, err=True, color=self.color)

    def emit_json(self, doc: Any) -> None:
        click.echo(json.dumps(mask_urls(doc), indent=2, default=str))
        self.emitted = True

    def emit_error(self, message: str, hint: str | None, exit_code: int) -> None:
        """Under --json, a failure is still one document on stdout (the human lines go to stderr)."""
        if self.json and not self.emitted:
            self.emit_json({"version": 1, "ok": False,
                            "error": {"message": message, "hint": hint, "exit_code": exit_code}})

    def show_plan(self, plan: Any) -> None:
        """A --dry-run's output: the plan's text, or under --json its to_dict() as one document."""
        if self.json:
            self.emit_json({"version": 1, "dry_run": True, **plan.to_dict()})
        else:
            self.echo(plan.describe())

    def install_trace(self) -> None:
        proc.trace = self.info if self.verbose else None


pass_app = click.make_pass_decorator(App, ensure=True)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(App).json = True
    return value


def json_option(f: F) -> F:
    """`--json`: print exactly one JSON document on stdout (also settable as `provision --json`)."""
    return click.option("--json", "json_out", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_json,
                        help="Print one JSON document on stdout, nothing else.")(f)


def dry_run_option(f: F) -> F:
    return click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")(f)
