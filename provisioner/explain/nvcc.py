"""`nvcc --version` as pasted (CUDA 7.5 to 13.x), partial pastes, and the "command not found" forms."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from provisioner.explain.reading import Reading
from provisioner.explain.text import Doc

# "Cuda compilation tools, release 12.1, V12.1.105" (since CUDA 7); "Build cuda_12.1.r12.1/compiler..."
RELEASE = re.compile(r"Cuda compilation tools,?\s*release\s+(\d{1,2})\.(\d{1,2}),?\s*V(\d+(?:\.\d+){1,2})",
                     re.IGNORECASE)
RELEASE_ONLY = re.compile(r"Cuda compilation tools,?\s*release\s+(\d{1,2})\.(\d{1,2})", re.IGNORECASE)
BUILD = re.compile(r"\bBuild (cuda_(\d{1,2})\.(\d{1,2})\.r\S+)")
NOT_FOUND = re.compile(
    r"nvcc: command not found|Command 'nvcc' not found|The program 'nvcc' is currently not installed"
    r"|'nvcc' is not recognized|nvcc\s*: The term 'nvcc' is not recognized|\bnvcc: not found"
    r"|nvcc: No such file or directory",
    re.IGNORECASE)


@dataclass
class Nvcc:
    version: str | None = None     # "12.1"
    full: str | None = None        # "12.1.105"
    build: str | None = None       # "cuda_12.1.r12.1/compiler.32688072_0"
    not_found: str | None = None   # the "command not found" line
    readings: list[Reading] = field(default_factory=list)


def parse(doc: Doc) -> Nvcc:
    out = Nvcc()
    flat = doc.flat
    m = RELEASE.search(flat) or RELEASE_ONLY.search(flat)
    if m:
        out.version = f"{int(m[1])}.{int(m[2])}"
        if m.re is RELEASE:
            out.full = m[3]
        n, text = doc.where(m.start())
        out.readings.append(Reading("toolkit.version", out.version, doc.name, n, text))
        if out.full:
            out.readings.append(Reading("toolkit.full", out.full, doc.name, n, text))
    b = BUILD.search(flat)
    if b:
        out.build = b[1]
        if out.version is None:
            out.version = f"{int(b[2])}.{int(b[3])}"
            n, text = doc.where(b.start())
            out.readings.append(Reading("toolkit.version", out.version, doc.name, n, text))
    nf = NOT_FOUND.search(flat)
    if nf and out.version is None:
        n, text = doc.where(nf.start())
        out.not_found = text
        out.readings.append(Reading("toolkit.nvcc", None, doc.name, n, text))
    return out
