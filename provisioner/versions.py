"""Version value types with one parser each: CudaVersion ("12.6" | "cu126" | "12.6.85")."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from provisioner.errors import UsageError

_DOTTED = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?\s*$")
_TAG = re.compile(r"^\s*cu(\d{2,3})\s*$", re.IGNORECASE)


@total_ordering
@dataclass(frozen=True)
class CudaVersion:
    major: int
    minor: int
    patch: int | None = None   # e.g. 85 in 12.6.85; None when only X.Y is known

    @classmethod
    def parse(cls, text: str | int | float) -> CudaVersion:
        """Parse "12.6", "12.6.85", "cu126" or "cu118"; raise UsageError with the accepted forms."""
        s = str(text)
        m = _DOTTED.match(s)
        if m:
            return cls(int(m[1]), int(m[2]), int(m[3]) if m[3] is not None else None)
        m = _TAG.match(s)
        if m:
            digits = m[1]
            # cu118 -> 11.8, cu126 -> 12.6, cu130 -> 13.0; the last digit is always the minor.
            return cls(int(digits[:-1]), int(digits[-1]))
        raise UsageError(f"'{s}' is not a CUDA version",
                         hint="write it as 12.6, 12.6.85 or cu126")

    @classmethod
    def from_int(cls, value: int) -> CudaVersion:
        """NVML/cudart encoding 1000*major + 10*minor (12080 -> 12.8)."""
        return cls(value // 1000, (value % 1000) // 10)

    @property
    def short(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def tag(self) -> str:
        return f"cu{self.major}{self.minor}"

    def same_release(self, other: CudaVersion) -> bool:
        """12.6 matches 12.6.85; 12.6.85 matches only 12.6.85 (or 12.6)."""
        if (self.major, self.minor) != (other.major, other.minor):
            return False
        return self.patch is None or other.patch is None or self.patch == other.patch

    def _key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, -1 if self.patch is None else self.patch)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, CudaVersion):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        return self.short if self.patch is None else f"{self.short}.{self.patch}"


@total_ordering
@dataclass(frozen=True)
class DriverVersion:
    """An NVIDIA driver version such as 575.57.08 (compared numerically, part by part)."""

    parts: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> DriverVersion:
        s = str(text).strip()
        if not re.fullmatch(r"\d+(\.\d+){0,3}", s):
            raise UsageError(f"'{s}' is not an NVIDIA driver version",
                             hint="write it as major.minor[.patch], e.g. 560.35.03")
        return cls(tuple(int(p) for p in s.split(".")))

    @property
    def branch(self) -> int:
        return self.parts[0]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, DriverVersion):
            return NotImplemented
        return self.parts < other.parts

    def __str__(self) -> str:
        # keep the conventional two-digit patch ("560.35.03")
        head, *rest = self.parts
        return ".".join([str(head)] + [f"{p:02d}" for p in rest])
