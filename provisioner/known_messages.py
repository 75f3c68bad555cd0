"""Known error messages (data/known-messages.yaml) mapped to their real cause and the fix."""
from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DATA_FILE = Path(__file__).parent / "data" / "known-messages.yaml"
_FIELDS = ("id", "pattern", "cause", "fix", "source")


@dataclass(frozen=True)
class KnownMessage:
    id: str
    pattern: str
    cause: str
    fix: str
    source: str
    regex: bool = False

    def matches(self, text: str) -> bool:
        if self.regex:
            return re.search(self.pattern, text, re.IGNORECASE) is not None
        return self.pattern.lower() in text.lower()

    def fix_with(self, **values: str | None) -> str:
        """The fix with `{name}` placeholders filled where a value is known (others stay visible)."""
        known = {k: v for k, v in values.items() if v}

        class Keep(dict[str, str]):
            def __missing__(self, key: str) -> str:
                return "{" + key + "}"

        return string.Formatter().vformat(self.fix, (), Keep(known))


def load(path: Path = DATA_FILE) -> tuple[KnownMessage, ...]:
    """Parse the table; a malformed entry is a bug in the shipped data, so it raises ValueError."""
    doc: Any = yaml.safe_load(path.read_text())
    entries = doc.get("messages") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path.name}: expected a top-level 'messages' list")
    out = []
    for i, entry in enumerate(entries):
        missing = [f for f in _FIELDS if not isinstance(entry.get(f), str) or not entry[f].strip()]
        if missing:
            raise ValueError(f"{path.name}: messages[{i}]: missing {', '.join(missing)}")
        unknown = set(entry) - set(_FIELDS) - {"regex"}
        if unknown:
            raise ValueError(f"{path.name}: messages[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        out.append(KnownMessage(**{f: entry[f].strip() for f in _FIELDS},
                                regex=bool(entry.get("regex", False))))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def table() -> tuple[KnownMessage, ...]:
    return load()


def match(text: str | None) -> KnownMessage | None:
    """The first known message found in `text` (case-insensitive), or None."""
    if not text:
        return None
    for known in table():
        if known.matches(text):
            return known
    return None
