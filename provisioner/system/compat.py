"""CUDA toolkit/driver facts from data/cuda-drivers.yaml: minimum drivers and what a branch reports."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

from provisioner import yamldata

from provisioner.versions import CudaVersion, DriverVersion

DATA_FILE = "cuda-drivers.yaml"


@dataclass(frozen=True)
class ToolkitRow:
    """One row of NVIDIA's "CUDA Toolkit and Corresponding Driver Versions" table."""

    cuda: CudaVersion       # X.Y.U as version.json states it (12.8 Update 1 = 12.8.1)
    release: str            # the row's name in the table: "CUDA 12.8 Update 1"
    driver: DriverVersion   # minimum Linux x86_64 driver
    ga: bool                # the row used when only X.Y is known


@dataclass(frozen=True)
class FamilyRow:
    """Minimum driver for CUDA minor version compatibility across a major family."""

    major: int
    driver: DriverVersion
    source: str


@dataclass(frozen=True)
class BranchRow:
    """The CUDA version a driver branch reports (nvidia-smi "CUDA Version")."""

    branch: int
    cuda: CudaVersion
    basis: str              # "observed" or "inferred"
    source: str


@dataclass(frozen=True)
class DriverTable:
    toolkits: tuple[ToolkitRow, ...]
    toolkits_source: str
    families: tuple[FamilyRow, ...]
    branches: tuple[BranchRow, ...]


def _text(value: Any) -> str:
    # The data file is ours and tested; a wrong type here is a bug, so fail loudly.
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{DATA_FILE}: expected a non-empty string, got {value!r}")
    return " ".join(value.split())


def _parse(doc: dict[str, Any]) -> DriverTable:
    toolkits = tuple(
        ToolkitRow(cuda=CudaVersion.parse(_text(row["cuda"])), release=_text(row["release"]),
                   driver=DriverVersion.parse(_text(row["driver"])), ga=bool(row.get("ga", False)))
        for row in doc["toolkits"]["rows"]
    )
    families = tuple(
        FamilyRow(major=int(row["major"]), driver=DriverVersion.parse(_text(row["driver"])),
                  source=_text(row["source"]))
        for row in doc["families"]
    )
    branches = tuple(
        BranchRow(branch=int(row["branch"]), cuda=CudaVersion.parse(_text(row["cuda"])),
                  basis=_text(row["basis"]), source=_text(row["source"]))
        for row in doc["branches"]
    )
    return DriverTable(toolkits=toolkits, toolkits_source=_text(doc["toolkits"]["source"]),
                       families=families, branches=branches)


@functools.cache
def table() -> DriverTable:
    """The parsed data file, read once per process."""
    text = resources.files("provisioner").joinpath("data").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return _parse(yamldata.load(text))


def toolkit_row(v: CudaVersion) -> ToolkitRow | None:
    """The exact X.Y.U row when v has a patch that names an update, else the GA row of X.Y.

    nvcc reports a build number as the patch (12.6.85); that names no row, so the GA row answers.
    """
    rows = [r for r in table().toolkits if (r.cuda.major, r.cuda.minor) == (v.major, v.minor)]
    if v.patch is not None:
        for r in rows:
            if r.cuda.patch == v.patch:
                return r
    return next((r for r in rows if r.ga), None)


def toolkit_min_driver(v: CudaVersion) -> tuple[DriverVersion, str] | None:
    """Minimum Linux driver for toolkit v (the driver it was released with) and its source."""
    row = toolkit_row(v)
    if row is None:
        return None
    return row.driver, f"{row.release} >= {row.driver}: {table().toolkits_source}"


def family_min_driver(v: CudaVersion) -> tuple[DriverVersion, str] | None:
    """Minimum driver for minor version compatibility in v's major family (12.x: 525.60.13)."""
    row = next((r for r in table().families if r.major == v.major), None)
    return None if row is None else (row.driver, row.source)


def branch_row(branch: int) -> BranchRow | None:
    return next((r for r in table().branches if r.branch == branch), None)


def cuda_for_branch(branch: int) -> CudaVersion | None:
    """The CUDA version driver branch `branch` (e.g. 570) reports, or None when unknown."""
    row = branch_row(branch)
    return None if row is None else row.cuda
