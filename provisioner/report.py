"""Check and Status: the one result type of every diagnostic, rendered as a table (rich) or JSON."""
from __future__ import annotations

import enum
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from provisioner.redact import mask_urls

if TYPE_CHECKING:       # rich is imported where a table is drawn, never on `provision --help`
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

JSON_VERSION = 1


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Check:
    id: str                    # stable dotted id: "driver", "cuda.link", "model.fit"
    status: Status             # ok / warn / fail / skip
    message: str               # what was found, with the numbers
    fix: str | None = None     # the command or step that fixes it
    data: Mapping[str, object] = field(default_factory=dict)   # extra facts for --json

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status.value, "message": self.message,
                "fix": self.fix, "data": dict(self.data)}


def ok(checks: Iterable[Check]) -> bool:
    return all(c.status is not Status.FAIL for c in checks)


def exit_code(checks: Iterable[Check]) -> int:
    """1 if any check failed, else 0."""
    return 0 if ok(checks) else 1


def to_document(checks: Sequence[Check], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": JSON_VERSION, "ok": ok(checks),
                           "checks": [c.to_dict() for c in checks]}
    doc.update(extra)
    return doc


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, default=str)


#: A status as the table shows it, and its style in a terminal (the word alone carries the meaning:
#: NO_COLOR and piped output drop the style, never the word).
MARKS = {Status.OK: "ok", Status.WARN: "warn", Status.FAIL: "FAIL", Status.SKIP: "skip"}
STYLES = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.SKIP: "dim"}

#: Plain text never wraps: a piped or captured table keeps one row per line for grep.
PLAIN_WIDTH = 1 << 16

Cell = Union[str, "Text"]


def rich_table(rows: Sequence[Sequence[Cell]], headers: Sequence[str] | None = None) -> Table:
    """Rows as a rich Table without a box: columns two spaces apart, a dashed rule under the
    headers (none without headers), a cell's lines under its own column. rich sizes the columns
    (and wraps the widest ones in a narrow terminal); cells have their URL credentials masked."""
    from rich.rule import Rule
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, show_header=headers is not None, show_edge=False, pad_edge=False,
                 padding=(0, 1), header_style="bold")
    names = list(headers) if headers is not None else [""] * max((len(r) for r in rows), default=0)
    for name in names:
        grid.add_column(name, overflow="fold")
    if headers is not None and names:
        # the last column's rule is as long as its header (at least 8), not its longest cell
        last = Text("-" * max(len(names[-1]), 8), style="dim")
        grid.add_row(*[Rule(characters="-", style="dim") for _ in names[:-1]], last)
    for row in rows:
        grid.add_row(*[c if isinstance(c, Text) else Text(mask_urls(str(c))) for c in row])
    return grid


def text(renderable: RenderableType) -> str:
    """A renderable as plain text: no ANSI codes, no wrapping, no trailing blanks (what a pipe gets)."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=PLAIN_WIDTH, color_system=None, force_terminal=False,
                      force_jupyter=False, force_interactive=False, no_color=True, highlight=False,
                      markup=False, emoji=False, legacy_windows=False, _environ={})
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def table(rows: Sequence[Sequence[Cell]], headers: Sequence[str]) -> str:
    """`rich_table` as plain text."""
    return text(rich_table(rows, headers))


def check_table(checks: Sequence[Check]) -> Table:
    """status / check / finding, the fix on its own line under the finding; statuses coloured."""
    from rich.text import Text

    rows: list[list[Cell]] = []
    for c in checks:
        finding = Text(mask_urls(c.message))
        if c.fix:
            finding.append("\n")
            finding.append(mask_urls(f"fix: {c.fix}"), style="cyan")
        rows.append([Text(MARKS[c.status], style=STYLES[c.status]), c.id, finding])
    return rich_table(rows, ["status", "check", "finding"])


def summary(checks: Sequence[Check]) -> Text:
    """`OK: 3 ok, 1 warning(s), 0 failed, 1 skipped` (FAILED when any check failed)."""
    from rich.text import Text

    counts = {s: sum(1 for c in checks if c.status is s) for s in Status}
    verdict = ("OK", "bold green") if ok(checks) else ("FAILED", "bold red")
    return Text.assemble(verdict, f": {counts[Status.OK]} ok, {counts[Status.WARN]} warning(s), "
                                  f"{counts[Status.FAIL]} failed, {counts[Status.SKIP]} skipped")


def render_checks(checks: Sequence[Check]) -> str:
    """The checks table and its summary line as plain text."""
    return f"{text(check_table(checks))}\n\n{summary(checks).plain}"
