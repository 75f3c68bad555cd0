"""Pasted text as the parsers see it: Markdown and mail quoting removed, and one flat string.

Users paste through GitHub, chat and mail: fences, `**bold**`, single backticks, `> ` quotes,
TAB indentation and hard-wrapped lines. The parsers match against `flat` (every run of white
space, newlines included, collapsed to one space) so that a wrapped line reads like the original,
and `line_of()` maps a match back to the pasted line it came from.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

_FENCE = re.compile(r"^\s*(```|~~~)")
_QUOTE = re.compile(r"^\s*(?:>\s?)+")
_COMMENT = re.compile(r"^#+ (?=\S)")          # `# NVIDIA-SMI version : ...` in a shell script's notes
_HTML = re.compile(r"</?(?:details|summary|pre|code|br|p)\b[^>]*>", re.IGNORECASE)


@dataclass(frozen=True)
class Doc:
    """One input: its name, its lines as pasted, and the cleaned flat text with a line map."""

    name: str
    lines: tuple[str, ...]
    flat: str
    _starts: tuple[int, ...] = field(repr=False, default=())     # flat offset where each kept line starts
    _numbers: tuple[int, ...] = field(repr=False, default=())    # its 1-based line number in `lines`

    def line_of(self, offset: int) -> int:
        """The 1-based pasted line holding flat[offset]."""
        if not self._starts:
            return 1
        i = bisect.bisect_right(self._starts, offset) - 1
        return self._numbers[max(i, 0)]

    def text_of(self, line: int) -> str:
        return self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""

    def clean_lines(self) -> list[tuple[int, str]]:
        """(line number, cleaned line) for every kept line, in order."""
        out = []
        for i, start in enumerate(self._starts):
            end = self._starts[i + 1] - 1 if i + 1 < len(self._starts) else len(self.flat)
            out.append((self._numbers[i], self.flat[start:end]))
        return out

    def where(self, offset: int) -> tuple[int, str]:
        n = self.line_of(offset)
        return n, self.text_of(n)


def clean_line(line: str) -> str:
    """One pasted line without its Markdown / quote decoration (table characters are kept)."""
    line = line.expandtabs(8)
    line = _QUOTE.sub("", line)
    line = _COMMENT.sub("", line)
    line = _HTML.sub(" ", line)
    line = line.replace("**", "").replace("`", "")
    line = line.replace("\u2019", "'").replace("\u2018", "'").replace("\u00a0", " ")
    return line


def read(name: str, data: str | bytes) -> Doc:
    """A Doc from raw input (bytes are decoded as UTF-8; undecodable bytes become U+FFFD)."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", " ")
    lines = tuple(text.split("\n"))
    parts: list[str] = []
    starts: list[int] = []
    numbers: list[int] = []
    pos = 0
    for n, raw in enumerate(lines, start=1):
        if _FENCE.match(raw):
            continue
        cleaned = " ".join(clean_line(raw).split())
        if not cleaned:
            continue
        starts.append(pos)
        numbers.append(n)
        parts.append(cleaned)
        pos += len(cleaned) + 1
    return Doc(name, lines, " ".join(parts), tuple(starts), tuple(numbers))
