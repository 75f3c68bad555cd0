"""Check and Status: the one result type of every diagnostic, rendered as a table or JSON."""
from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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


MARKS = {Status.OK: "ok", Status.WARN: "warn", Status.FAIL: "FAIL", Status.SKIP: "skip"}


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A plain fixed-width table; the last column may wrap onto continuation lines."""
    cols = len(headers)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[: cols - 1]):
            widths[i] = max(widths[i], max((len(x) for x in cell.splitlines()), default=0))
    lines = []

    def emit(row: Sequence[str]) -> None:
        cells = [c.splitlines() or [""] for c in row]
        height = max(len(c) for c in cells)
        for k in range(height):
            parts = []
            for i, c in enumerate(cells):
                text = c[k] if k < len(c) else ""
                parts.append(text if i == cols - 1 else text.ljust(widths[i]))
            lines.append("  ".join(parts).rstrip())

    emit(headers)
    emit(["-" * w for w in widths[:-1]] + ["-" * max(widths[-1], 8)])
    for row in rows:
        emit(row)
    return "\n".join(lines)


def check_rows(checks: Sequence[Check]) -> list[list[str]]:
    rows = []
    for c in checks:
        finding = c.message + (f"\nfix: {c.fix}" if c.fix else "")
        rows.append([MARKS[c.status], c.id, finding])
    return rows


def render_checks(checks: Sequence[Check]) -> str:
    body = table(check_rows(checks), ["status", "check", "finding"])
    counts = {s: sum(1 for c in checks if c.status is s) for s in Status}
    verdict = "OK" if ok(checks) else "FAILED"
    summary = (f"{verdict}: {counts[Status.OK]} ok, {counts[Status.WARN]} warning(s), "
               f"{counts[Status.FAIL]} failed, {counts[Status.SKIP]} skipped")
    return f"{body}\n\n{summary}"
