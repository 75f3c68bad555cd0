"""Terminal output through rich: the two consoles, tables, spinners and progress bars (Click layer).

A stream that is a terminal gets colour (unless NO_COLOR is set: https://no-color.org) and, on an
interactive stderr, spinners and progress bars. Anything else (a pipe, a file, a captured run)
gets plain text: the same columns, no ANSI codes, no wrapping, no spinner; and under --json stdout
holds the one document only. rich reads NO_COLOR, FORCE_COLOR, COLUMNS, TERM=dumb (and from rich 14
TTY_COMPATIBLE, TTY_INTERACTIVE) itself, here from the run's environment `App.environ` (Console's
`_environ` parameter) rather than os.environ. FORCE_COLOR colours a pipe; spinners still need a real
terminal, so a log never fills with their frames.

rich is imported inside these functions only: `provision --help` does not load it.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ContextManager

import click

from provisioner.cli.app import App
from provisioner.redact import mask_urls

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.padding import Padding

    from provisioner.model.download import Progress

#: What a long step reports: `say(line)`.
Say = Callable[[str], None]


def console(app: App, *, err: bool = False) -> Console:
    """A console on stdout (or stderr) that follows the run's environment (NO_COLOR, FORCE_COLOR, ...)."""
    from rich.console import Console

    return Console(file=sys.stderr if err else sys.stdout, highlight=False, markup=False, emoji=False,
                   _environ=app.environ)


def show(app: App, *parts: RenderableType | str, err: bool = False) -> None:
    """Print each part on its own line(s): text as it is, a table aligned by rich. To stdout, where
    --json leaves nothing else; with err=True to stderr (always). A terminal gets styles and tables
    fitted to its width; anything else the plain text of report.text."""
    from provisioner import report

    if app.json and not err:
        return
    out = console(app, err=err)
    for part in parts:
        if isinstance(part, str):
            click.echo(mask_urls(part), err=err, color=app.color)
        elif out.is_terminal:
            out.print(part)
        else:
            click.echo(report.text(part), err=err)


def indented(part: RenderableType) -> Padding:
    """A table (or any renderable) two spaces in, as show() prints it under a heading line."""
    from rich.padding import Padding

    return Padding(part, (0, 0, 0, 2), expand=False)


def _live_console(app: App) -> Console | None:
    """stderr's console when a spinner may be drawn there: a real, interactive terminal, not --json."""
    if app.json:
        return None
    out = console(app, err=True)
    isatty = getattr(out.file, "isatty", None)
    if isatty is None or not isatty() or not out.is_interactive:
        return None
    return out


def spinners(app: App) -> Callable[[str], ContextManager[Any]] | None:
    """A spinner factory for `env.apply_create(status=...)`: `with status(title):` shows `title ...`
    spinning while the step runs; None (no spinner) when stderr is not an interactive terminal."""
    out = _live_console(app)
    if out is None:
        return None

    @contextlib.contextmanager
    def status(title: str) -> Iterator[None]:
        from rich.text import Text

        with out.status(Text(mask_urls(f"{title} ..."))):
            yield

    return status


@contextlib.contextmanager
def spinner(app: App, title: str) -> Iterator[None]:
    """One spinner for one long call (nothing when stderr is not an interactive terminal)."""
    status = spinners(app)
    with status(title) if status is not None else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def activity(app: App) -> Iterator[Say]:
    """`say` for a long call that reports progress lines: each line is printed (to stderr, as
    app.info does) and, on an interactive terminal, also spins as the current step until the next
    line or the end. Code that writes to the terminal itself (a child's progress bars) must not run
    inside: the spinner would redraw over it."""
    out = _live_console(app)
    if out is None:
        yield app.info
        return
    from rich.text import Text

    with out.status("") as live:
        def say(line: str) -> None:
            line = mask_urls(line)
            out.print(Text(line))
            live.update(Text(line.rstrip(". ") + " ..."))

        yield say


@contextlib.contextmanager
def transfer(app: App, title: str) -> Iterator[Progress]:
    """The hook a download reports through (download.Progress): `update(name, done, total)` drives
    one progress bar per file (bytes in KiB/MiB as the plan prints them, speed, time left) on an
    interactive terminal; elsewhere each finished file is one line (`downloaded NAME (SIZE)`) and
    nothing else, so logs stay short."""
    from provisioner.units import human_bytes

    out = _live_console(app)
    if out is None:
        finished: set[str] = set()

        def plain(name: str, done: int, total: int | None) -> None:
            if total is not None and done >= total and name not in finished:
                finished.add(name)
                app.info(f"downloaded {name} ({human_bytes(total)})")

        yield plain
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    bars: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=out, transient=False) as progress:
        out.print(mask_urls(title))

        def update(name: str, done: int, total: int | None) -> None:
            if name not in bars:
                bars[name] = progress.add_task(name, total=total)
            progress.update(bars[name], completed=done, total=total)

        yield update
