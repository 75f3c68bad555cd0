"""A GPU's compute capability from its product name (data/gpu-archs.yaml), for facts read from text."""
from __future__ import annotations

import functools
import re
from pathlib import Path

from provisioner import yamldata

DATA_FILE = Path(__file__).parent.parent / "data" / "gpu-archs.yaml"
SOURCE = "NVIDIA CUDA GPUs compute capability table (data/gpu-archs.yaml)"


@functools.lru_cache(maxsize=1)
def _table() -> tuple[tuple[re.Pattern[str], tuple[int, int], str], ...]:
    doc = yamldata.load(DATA_FILE.read_text())
    out = []
    for entry in doc["archs"]:
        major, minor = str(entry["cc"]).split(".")
        out.append((re.compile(entry["pattern"], re.IGNORECASE), (int(major), int(minor)),
                    str(entry["family"])))
    return tuple(out)


def compute_capability(name: str | None) -> tuple[int, int] | None:
    """(major, minor) for a GPU product name, or None when the name matches no known family."""
    if not name:
        return None
    short = re.sub(r"\b(NVIDIA|GeForce)\b", " ", name, flags=re.IGNORECASE)
    for pattern, cc, _ in _table():
        if pattern.search(short):
            return cc
    return None
