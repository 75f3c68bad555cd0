"""Known error messages (data/known-messages.yaml) mapped to their real cause and the fix."""
from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner import yamldata

DATA_FILE = Path(__file__).parent / "data" / "known-messages.yaml"
_FIELDS = ("id", "pattern", "cause", "fix", "source")
_OPTIONAL = ("regex", "cause_id", "values")
#: The documented cause vocabulary (`provision explain --json`, causes[].id); README lists it.
CAUSE_IDS = ("driver-too-old", "driver-mismatch", "driver-not-loaded", "no-gpu-visible", "torch-cpu-build",
             "gpu-arch-unsupported", "toolkit-torch-mismatch", "cuda-runtime-missing", "out-of-memory",
             "offloaded", "bnb-cpu-library", "bnb-outdated", "bnb-cuda-version-override", "nvcc-not-found",
             "package-requirement", "other")


@dataclass(frozen=True)
class KnownMessage:
    id: str
    pattern: str
    cause: str
    fix: str
    source: str
    regex: bool = False
    cause_id: str = "other"
    values: tuple[tuple[str, str], ...] = ()     # (name, regular expression with one or more groups)

    def matches(self, text: str) -> bool:
        return self.search(text) is not None

    def search(self, text: str) -> re.Match[str] | None:
        """Where the message occurs in `text` (case-insensitive), or None."""
        pattern = self.pattern if self.regex else re.escape(self.pattern)
        return re.search(pattern, text, re.IGNORECASE)

    def extract(self, text: str) -> dict[str, str]:
        """The values this message carries (`found version 11040`, `sm_120`), from anywhere in `text`."""
        out = {}
        for name, pattern in self.values:
            m = re.search(pattern, text, re.IGNORECASE)
            if m:
                value = next((g for g in m.groups() if g), None) if m.groups() else m[0]
                if value:
                    out[name] = value.strip()
        return out

    def fix_with(self, **values: str | None) -> str:
        """The fix with `{name}` placeholders filled where a value is known (others stay visible)."""
        known = {k: v for k, v in values.items() if v}

        class Keep(dict[str, str]):
            def __missing__(self, key: str) -> str:
                return "{" + key + "}"

        return string.Formatter().vformat(self.fix, (), Keep(known))


def load(path: Path = DATA_FILE) -> tuple[KnownMessage, ...]:
    """Parse the table; a malformed entry is a bug in the shipped data, so it raises ValueError."""
    doc: Any = yamldata.load(path.read_text())
    entries = doc.get("messages") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path.name}: expected a top-level 'messages' list")
    out = []
    for i, entry in enumerate(entries):
        missing = [f for f in _FIELDS if not isinstance(entry.get(f), str) or not entry[f].strip()]
        if missing:
            raise ValueError(f"{path.name}: messages[{i}]: missing {', '.join(missing)}")
        unknown = set(entry) - set(_FIELDS) - set(_OPTIONAL)
        if unknown:
            raise ValueError(f"{path.name}: messages[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        cause_id = str(entry.get("cause_id") or "other")
        if cause_id not in CAUSE_IDS:
            raise ValueError(f"{path.name}: messages[{i}]: cause_id {cause_id!r} is not one of {', '.join(CAUSE_IDS)}")
        values = entry.get("values") or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path.name}: messages[{i}]: values must be a mapping of name to regex")
        for pattern in values.values():
            re.compile(pattern)   # a bad expression in shipped data fails the table test, not a user
        out.append(KnownMessage(**{f: entry[f].strip() for f in _FIELDS},
                                regex=bool(entry.get("regex", False)), cause_id=cause_id,
                                values=tuple((str(k), str(v)) for k, v in values.items())))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def table() -> tuple[KnownMessage, ...]:
    return load()


def match_all(text: str | None) -> list[KnownMessage]:
    """Every known message found in `text`, in table order (specific before generic)."""
    if not text:
        return []
    return [known for known in table() if known.matches(text)]


def match(text: str | None) -> KnownMessage | None:
    """The first known message found in `text` (case-insensitive), or None."""
    if not text:
        return None
    for known in table():
        if known.matches(text):
            return known
    return None


def explain(text: str | None, **values: str | None) -> tuple[str, str | None, str | None]:
    """(" (cause: ...)" suffix, the known fix, the known message id) for an error text."""
    known = match(text)
    if known is None:
        return "", None, None
    return f" (cause: {known.cause})", known.fix_with(**values), known.id
