"""Recognised errors in pasted text: the cause table (data/known-messages.yaml), the values each
message carries, and one fix that fits the facts read beside it."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioner import known_messages
from provisioner.explain.text import Doc

_FRAME = re.compile(r"(?:site|dist)-packages[/\\]+([A-Za-z_]\w*)[/\\]")
_IMPORT = re.compile(r"^\s*(?:from\s+([A-Za-z_]\w*)[\w.]*\s+import|import\s+([A-Za-z_]\w*))")
_MODEL = re.compile(r"\b(Qwen/[\w.-]+|[\w-]+/[\w.-]*(?:Instruct|Chat|chat|instruct)[\w.-]*)\b")
#: Packages whose own compiled extension raises a loader error (not bitsandbytes' concern).
_FIXES = {
    "bitsandbytes": "pip install -U 'bitsandbytes>=0.46' (it finds the CUDA runtime that torch ships)",
    "flash_attn": ("reinstall flash-attn built against this torch and its CUDA: "
                   "pip install --force-reinstall --no-build-isolation flash-attn"),
    "vllm": "install the vllm build for torch's CUDA (pip install -U vllm pulls the torch it was built with)",
    "xformers": "install the xformers build matching torch: pip install -U xformers --index-url <torch's index>",
}


#: Root causes first: a driver problem explains everything above it, and so on down.
PRIORITY = ("driver-mismatch", "driver-not-loaded", "driver-too-old", "no-gpu-visible",
            "bnb-cuda-version-override", "torch-cpu-build", "gpu-arch-unsupported", "toolkit-torch-mismatch",
            "cuda-runtime-missing", "package-requirement", "bnb-cpu-library", "bnb-outdated", "out-of-memory",
            "offloaded", "nvcc-not-found", "other")
#: What each cause brings about: when both are in a paste, the second is reported as following
#: from the first (its own message stays visible) instead of as a second problem.
CONSEQUENCES: dict[str, frozenset[str]] = {
    "driver-mismatch": frozenset({"driver-not-loaded", "no-gpu-visible", "torch-cpu-build", "offloaded",
                                  "bnb-cpu-library", "bnb-outdated"}),
    "driver-not-loaded": frozenset({"no-gpu-visible", "offloaded", "bnb-cpu-library", "bnb-outdated"}),
    "driver-too-old": frozenset({"no-gpu-visible", "offloaded", "bnb-cpu-library", "bnb-outdated"}),
    "no-gpu-visible": frozenset({"offloaded", "bnb-cpu-library", "bnb-outdated"}),
    "bnb-cuda-version-override": frozenset({"bnb-outdated", "bnb-cpu-library", "cuda-runtime-missing"}),
    "torch-cpu-build": frozenset({"no-gpu-visible", "offloaded", "bnb-cpu-library", "bnb-outdated"}),
    "cuda-runtime-missing": frozenset({"bnb-outdated", "bnb-cpu-library"}),
    "bnb-cpu-library": frozenset({"offloaded"}),
    "out-of-memory": frozenset({"offloaded"}),
}


@dataclass
class Cause:
    id: str                                  # the cause vocabulary (known_messages.CAUSE_IDS)
    message_id: str                          # the known message that matched
    message: str                             # the cause, in words
    fix: str | None
    values: dict[str, str] = field(default_factory=dict)
    source: str = ""                         # input name
    line: int = 0
    text: str = ""
    follows_from: str | None = None          # the root cause in the same paste this one results from

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "message": self.message, "fix": self.fix, "values": dict(self.values),
                "line": {"source": self.source, "line": self.line, "text": self.text},
                "known_message": self.message_id, "follows_from": self.follows_from}


def _decode_cuda(raw: str) -> str:
    """12040 -> 12.4 (the encoding cudaDriverGetVersion and torch's message use)."""
    v = int(raw)
    return f"{v // 1000}.{(v % 1000) // 10}"


def _package(doc: Doc, line: int) -> str | None:
    """The top-level package whose import raised the error at `line`.

    Its last traceback frame before the error; for a message printed before its traceback (as
    bitsandbytes does), the traceback that follows; else a package the error line names.
    """
    def frames(lines: Sequence[str]) -> list[str]:
        return [m[1] for m in (_FRAME.search(raw) for raw in lines) if m]

    before = frames(doc.lines[:line])
    if before:
        return before[-1]
    after = frames(doc.lines[line:line + 40])
    if after:
        return after[0]
    for raw in doc.lines[:line]:
        i = _IMPORT.match(raw)
        if i:
            return i[1] or i[2]
    m = re.search(r"\b(bitsandbytes|flash_attn|vllm|xformers|torch)\b", doc.text_of(line))
    return m[1] if m else None


def find(docs: Sequence[Doc]) -> list[Cause]:
    """Every recognised cause, once per cause id, in the table's order of specificity."""
    out: list[Cause] = []
    seen: set[str] = set()
    for doc in docs:
        for known in known_messages.table():
            if known.cause_id == "other" and known.id in {c.message_id for c in out}:
                continue
            m = known.search(doc.flat)
            if m is None:
                continue
            values = known.extract(doc.flat)
            if known.cause_id in seen and known.cause_id != "other":
                # a second message of a cause already found: it may carry values the first lacks
                first = next(c for c in out if c.id == known.cause_id)
                for k, v in values.items():
                    first.values.setdefault(k, v)
                continue
            seen.add(known.cause_id)
            line, text = doc.where(m.start())
            if known.cause_id == "cuda-runtime-missing":
                package = _package(doc, line)
                if package:
                    values["package"] = package
            model = _MODEL.search(doc.flat)
            if model and known.cause_id in ("out-of-memory", "offloaded"):
                values["model"] = model[1]
            out.append(Cause(known.cause_id, known.id, known.cause, known.fix, values, doc.name, line, text))
    for c in out:
        values = c.values
        if "driver_cuda" in values and values["driver_cuda"].isdigit():
            values["driver_cuda"] = _decode_cuda(values["driver_cuda"])
        if "cc" in values and "sm" not in values:
            values["sm"] = "sm_" + values["cc"].replace(".", "")
        values.pop("cc", None)
    out.sort(key=lambda c: PRIORITY.index(c.id) if c.id in PRIORITY else len(PRIORITY))
    for i, c in enumerate(out):
        root = next((r for r in out[:i] if r.follows_from is None
                     and c.id in CONSEQUENCES.get(r.id, frozenset())), None)
        if root is not None:
            c.follows_from = root.id
    return out


def fix_for(cause: Cause, *, profile: str | None, driver_fix: str | None,
            torch_cuda: str | None, gpu_total_gib: float | None) -> str:
    """The one fix command for this cause, filled from its values and the facts beside it."""
    v = dict(cause.values)
    model = v.get("model")
    if cause.id == "cuda-runtime-missing":
        package = (v.get("package") or "").lower()
        lib = v.get("library", "the CUDA library")
        if package in _FIXES:
            return _FIXES[package]
        if package == "torch" or package.startswith("torch"):
            return f"reinstall the torch wheel for this machine: provision env create --profile {profile or 'auto'}"
        major = re.search(r"\.so\.(\d+)", lib)
        what = f"CUDA {major[1]}" if major else "this CUDA"
        return (f"{package or 'the package'} was built for {what}: reinstall it built for torch's CUDA "
                f"({torch_cuda or 'see provision verify'}), or install the nvidia-*-cu{major[1] if major else 'XX'} "
                "runtime wheels; provision verify --env <env> shows torch's CUDA")
    if cause.id in ("driver-too-old",) and profile:
        return (f"provision env create --profile {profile}  (the newest build this driver runs; "
                f"or upgrade the driver: {driver_fix or 'see provision verify'})")
    if cause.id == "driver-too-old":
        return driver_fix or "upgrade the NVIDIA driver"
    if cause.id in ("gpu-arch-unsupported", "torch-cpu-build") and profile:
        return f"provision env create --profile {profile}"
    if cause.id in ("out-of-memory", "offloaded"):
        size = f" --gpu-memory {gpu_total_gib:g}" if gpu_total_gib else ""
        target = model or "<model>"
        return (f"provision model fit {target}{size}  (it names the precision and context that fit; "
                f"then load it with --quant nf4: provision chat --quant nf4 {target})")
    values: Mapping[str, str | None] = {"profile": profile or "auto", "model": model or "<model>", **v}
    return known_messages.KnownMessage(cause.message_id, "", "", cause.fix or "", "").fix_with(**values)
