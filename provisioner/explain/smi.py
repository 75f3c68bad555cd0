"""`nvidia-smi` as pasted: the table of every driver era and platform, `--version`, failure messages.

Everything is matched on the flat text (explain/text.py), anchored on what every layout shares:
the `Driver Version:` / `KMD Version:` / `DRIVER version :` field, the `CUDA (UMD) Version:` field,
GPU rows recognised by their PCI bus id, and the `used / total MiB` cell that follows each row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from provisioner.explain.reading import Reading
from provisioner.explain.text import Doc

_VER = r"(\d{2,3}(?:\.\d{1,3}){1,2})"
BANNER = re.compile(r"NVIDIA-SMI\s+(?:version\s*:\s*)?(\d+(?:\.\d+)+)", re.IGNORECASE)
DRIVER = re.compile(r"(?:Driver Version|KMD Version|DRIVER version)\s*:\s*" + _VER, re.IGNORECASE)
CUDA = re.compile(r"CUDA (?:UMD )?Version\s*:\s*(\d{1,2}\.\d{1,2}|N/A|ERR!)", re.IGNORECASE)
NVML = re.compile(r"NVML version\s*:\s*(\d+(?:\.\d+)+)", re.IGNORECASE)
ROW = re.compile(
    r"\|\s*(\d{1,2})\s+([^|]*?)(?:\s+(?:On|Off|WDDM|TCC|N/A))?\s*\|\s*"
    r"([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])")
LIST = re.compile(r"GPU (\d{1,2}): ([^()|]+?) \(UUID: ?GPU-")          # nvidia-smi -L
MEMORY = re.compile(r"(\d+)\s*(?:MiB|MB)\s*/\s*(\d+)\s*(?:MiB|MB)")
NOT_SUPPORTED = re.compile(r"Not Supported")
MISMATCH = re.compile(r"Driver/library version mismatch", re.IGNORECASE)
LIB_VERSION = re.compile(r"NVML library version\s*:\s*(\d+(?:\.\d+)+)", re.IGNORECASE)
NOT_LOADED = re.compile(r"couldn'?t communicate with the NVIDIA driver", re.IGNORECASE)
NO_DEVICES = re.compile(r"No devices were found", re.IGNORECASE)
PROCESSES = re.compile(r"\|\s*Processes\s*:", re.IGNORECASE)


@dataclass
class Smi:
    """What one input shows of nvidia-smi (None: not shown)."""

    status: str | None = None                 # "ok" | "mismatch" | "not-loaded" (None: no nvidia-smi seen)
    error: str | None = None                  # the failure line
    banner: str | None = None
    driver_version: str | None = None
    nvml_version: str | None = None
    cuda: str | None = None                   # None also when the cell says N/A / ERR!
    cuda_cell: str | None = None              # the raw cell ("12.2", "N/A", "ERR!")
    library_version: str | None = None
    gpus: list[dict[str, Any]] | None = None  # None: no GPU rows shown; []: "No devices were found"
    readings: list[Reading] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)


class _Reader:
    """One document's flat text and the `Smi` being filled from it."""

    def __init__(self, doc: Doc) -> None:
        self.doc, self.flat, self.out = doc, doc.flat, Smi()

    def read(self, fact: str, value: Any, offset: int) -> None:
        n, text = self.doc.where(offset)
        self.out.readings.append(Reading(fact, value, self.doc.name, n, text))

    def unread(self, offset: int, why: str) -> None:
        self.out.unread.append(f"{self.doc.name}:{self.doc.line_of(offset)}: {why}")


def _header(r: _Reader) -> None:
    """The banner, the driver version, the NVML version and the CUDA cell."""
    out, flat = r.out, r.flat
    banner = BANNER.search(flat)
    if banner:
        out.banner = banner[1]
    driver = DRIVER.search(flat)
    if driver:
        out.status, out.driver_version = "ok", driver[1]
        r.read("driver.version", driver[1], driver.start())
        if out.banner and out.banner != driver[1]:
            r.unread(driver.start(), f"the NVIDIA-SMI banner ({out.banner}) differs from the driver "
                                     f"({driver[1]}), as under WSL2, Docker Desktop or after an upgrade "
                                     "without reboot: the driver value is used")
    elif banner:
        r.unread(banner.start(), "an nvidia-smi header without a readable driver version (cut off?)")
    nvml = NVML.search(flat)
    if nvml:
        out.nvml_version = nvml[1]
    cuda = CUDA.search(flat)
    if cuda and (driver or banner or nvml):
        out.cuda_cell = cuda[1]
        out.cuda = cuda[1] if cuda[1][0].isdigit() else None
        r.read("driver.cuda", out.cuda, cuda.start())


def _table_gpus(r: _Reader, rows: list[re.Match[str]]) -> None:
    """The table's GPU rows, each with the memory cell between it and the next row (or the Processes table)."""
    flat = r.flat
    r.out.status = r.out.status or "ok"
    end_of_table = PROCESSES.search(flat, rows[-1].end())
    gpus = []
    seen = set()
    for i, row in enumerate(rows):
        stop = rows[i + 1].start() if i + 1 < len(rows) else (
            end_of_table.start() if end_of_table else len(flat))
        segment = flat[row.end():stop]
        mem = MEMORY.search(segment)
        key = (row[1], row[3])
        if key in seen:
            continue
        seen.add(key)
        gpu = {"index": int(row[1]), "name": row[2].strip() or None, "bus_id": row[3],
               "memory_total_mib": int(mem[2]) if mem else None,
               "memory_used_mib": int(mem[1]) if mem else None}
        if mem is None:
            why = ("the memory cell says Not Supported" if NOT_SUPPORTED.search(segment)
                   else "the memory cell is not in the paste")
            r.unread(row.start(), f"GPU {row[1]} memory: {why}")
        gpus.append(gpu)
        r.read(f"gpu.{gpu['index']}", {k: gpu[k] for k in ("name", "memory_total_mib", "memory_used_mib")},
               row.start())
    r.out.gpus = gpus


def _listed_gpus(r: _Reader) -> None:
    """`nvidia-smi -L`: `GPU 0: NAME (UUID: GPU-...)` lines, names only."""
    listed = list(LIST.finditer(r.flat))
    if not listed:
        return
    r.out.gpus = []
    for m in listed:
        gpu = {"index": int(m[1]), "name": m[2].strip(), "bus_id": None,
               "memory_total_mib": None, "memory_used_mib": None}
        r.out.gpus.append(gpu)
        r.read(f"gpu.{gpu['index']}", {"name": gpu["name"], "memory_total_mib": None,
                                       "memory_used_mib": None}, m.start())
    r.out.status = r.out.status or "ok"


def _failures(r: _Reader, has_rows: bool) -> None:
    """The failure messages: a driver/library mismatch, no driver loaded, no devices found."""
    out, flat = r.out, r.flat
    failure = MISMATCH.search(flat)
    if failure:
        out.status, out.error = "mismatch", "Failed to initialize NVML: Driver/library version mismatch"
        r.read("driver.status", "mismatch", failure.start())
        lib = LIB_VERSION.search(flat)
        if lib:
            out.library_version = lib[1]
            r.read("driver.library_version", lib[1], lib.start())
    failure = NOT_LOADED.search(flat)
    if failure and out.status != "ok":
        out.status = "not-loaded"
        out.error = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
        r.read("driver.status", "not-loaded", failure.start())
    failure = NO_DEVICES.search(flat)
    if failure and not has_rows:
        out.status = out.status if out.status in ("mismatch", "not-loaded") else "ok"
        out.gpus = []
        out.error = "No devices were found"
        r.read("gpus", [], failure.start())


def parse(doc: Doc) -> Smi:
    r = _Reader(doc)
    _header(r)
    rows = list(ROW.finditer(r.flat))
    if rows:
        _table_gpus(r, rows)
    else:
        _listed_gpus(r)
    _failures(r, bool(rows))
    return r.out
