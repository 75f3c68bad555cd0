"""Byte counts as people read them: one formatter for every message and table."""
from __future__ import annotations

GiB = 1 << 30


def human_bytes(n: float | None) -> str:
    """The largest binary unit that keeps the number >= 1 ("1.5 KiB", "6.7 GiB"); "?" when unknown."""
    if n is None:
        return "?"
    for unit, size in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def gib(n: float | None, *, digits: int = 2, unknown: str = "?") -> str:
    """Always in GiB, for tables and side-by-side figures ("14.19 GiB")."""
    return unknown if n is None else f"{n / GiB:.{digits}f} GiB"
