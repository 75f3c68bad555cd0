"""`provision explain`: diagnose a paste (Click layer only)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from provisioner.cli import ui
from provisioner.cli.app import App, json_option, pass_app
from provisioner.errors import UsageError

if TYPE_CHECKING:
    from rich.console import RenderableType

    from provisioner.explain import Explanation

#: Larger inputs are cut: an issue body or a report is far smaller, and the parsers stay linear.
MAX_BYTES = 8 * 1024 * 1024


def _read(path: str) -> tuple[str, bytes]:
    if path == "-":
        return "stdin", sys.stdin.buffer.read(MAX_BYTES)
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return p.name, f.read(MAX_BYTES)
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory", hint="pass the files to explain, or - for stdin") from None
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", hint="pass a file that holds the paste, or - for stdin") from None
    except OSError as e:
        raise UsageError(f"{path} cannot be read: {e.strerror or e}",
                         hint="check its permissions, or pipe it in: provision explain - < FILE") from None


@click.command("explain")
@click.argument("files", nargs=-1, metavar="[FILE ...]")
@json_option
@pass_app
def explain_cmd(app: App, files: tuple[str, ...]) -> None:
    """Explain a paste: nvidia-smi, nvcc --version, pip/conda lists, collect_env, errors, a report.

    Reads FILEs (stdin with none or `-`), runs the verify checks the facts allow and names each
    recognised error's cause and fix. Exit 0: nothing wrong found; 1: problems; 2: nothing readable.
    """
    from provisioner import explain

    inputs = [_read(f) for f in (files or ("-",))]
    result = explain.explain(inputs, environ=app.environ, root=app.root)
    if app.json:
        app.emit_json(result.to_dict())
    else:
        ui.show(app, *render(result))
    if result.exit_code:
        raise SystemExit(result.exit_code)


def render(result: Explanation) -> list[RenderableType]:
    """Lines and tables (indented by two spaces) for ui.show."""
    from provisioner.report import check_table, rich_table, summary

    out: list[RenderableType] = []
    if result.readings:
        out.append("Facts read:")
        rows = [[r.fact, _value(r.value), f"{r.where()}  {r.text[:90]}"] for r in result.readings]
        out += [ui.indented(rich_table(rows, ["fact", "value", "from"])), ""]
    if result.checks:
        out.append("Checks (as provision verify runs them, on these facts):")
        out += [ui.indented(check_table(result.checks)), "", ui.indented(summary(result.checks)), ""]
    if result.causes:
        out.append("Recognised errors:")
        for c in result.causes:
            values = ", ".join(f"{k}={v}" for k, v in c.values.items())
            out.append(f"  [{c.id}] {c.source}:{c.line}: {c.text[:120]}")
            out.append(f"    cause: {c.message}")
            if values:
                out.append(f"    values: {values}")
            if c.fix:
                out.append(f"    fix: {c.fix}")
        out.append("")
    if result.next_steps:
        out.append("Next:")
        out += [f"  {s}" for s in result.next_steps]
        out.append("")
    if result.unread:
        out.append("Not read:")
        out += [f"  {u}" for u in result.unread]
        out.append("")
    verdict = {0: "nothing wrong found", 1: "problems found", 2: "nothing readable"}[result.exit_code]
    out.append(f"Verdict: {verdict}")
    return out


def _value(v: object) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items() if x is not None) or "-"
    return "n/a" if v is None else str(v)


COMMANDS: list[click.Command] = [explain_cmd]
