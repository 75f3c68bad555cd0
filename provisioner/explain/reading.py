"""One fact read from a paste, with the line it came from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reading:
    fact: str          # "driver.version", "driver.cuda", "gpu.0", "toolkit.version", "torch.version", ...
    value: Any
    source: str        # the input's name (a file, or "stdin")
    line: int          # 1-based line in that input
    text: str          # the line itself, stripped

    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        return {"fact": self.fact, "value": self.value, "source": self.source, "line": self.line,
                "text": self.text}
