"""The CUDA toolkit/driver table in provisioner/data/cuda-drivers.yaml and its lookups."""
from __future__ import annotations

import pytest

from provisioner.system import compat
from provisioner.versions import CudaVersion, DriverVersion


@pytest.mark.parametrize(
    ("cuda", "driver", "release"),
    [
        pytest.param("12.8", "570.26", "CUDA 12.8 GA", id="12.8-ga"),
        pytest.param("12.8.0", "570.26", "CUDA 12.8 GA", id="12.8.0"),
        pytest.param("12.8.1", "570.124.06", "CUDA 12.8 Update 1", id="12.8.1-update"),
        pytest.param("cu126", "560.28.03", "CUDA 12.6 GA", id="cu126-tag"),
        pytest.param("12.6.3", "560.35.05", "CUDA 12.6 Update 3", id="12.6.3-update"),
        # nvcc reports a build number as the patch (release 12.6, V12.6.85): no row, so the GA row
        pytest.param("12.6.85", "560.28.03", "CUDA 12.6 GA", id="12.6.85-nvcc-build"),
        pytest.param("12.9.1", "575.57.08", "CUDA 12.9 Update 1", id="12.9.1"),
        pytest.param("13.0", "580.65.06", "CUDA 13.0 GA", id="13.0"),
        pytest.param("13.2.2", "595.71.05", "CUDA 13.2 Update 2", id="13.2.2"),
        pytest.param("12.0", "525.60.13", "CUDA 12.0 GA", id="12.0"),
        pytest.param("11.8", "520.61.05", "CUDA 11.8 GA", id="11.8"),
        pytest.param("11.0", "450.51.05", "CUDA 11.0.2 GA", id="11.0-ga-is-11.0.2"),
        pytest.param("11.0.1", "450.36.06", "CUDA 11.0.1 RC", id="11.0.1-rc"),
    ],
)
def test_toolkit_min_driver(cuda: str, driver: str, release: str) -> None:
    found = compat.toolkit_min_driver(CudaVersion.parse(cuda))
    assert found is not None
    got, source = found
    assert got == DriverVersion.parse(driver)
    assert str(got) == driver
    assert source.startswith(f"{release} >= {driver}: ")
    assert "docs.nvidia.com/cuda/archive/13.2.2/cuda-toolkit-release-notes" in source


@pytest.mark.parametrize("cuda", ["12.7", "13.4", "10.2", "14.0"])
def test_toolkit_without_row_is_unknown(cuda: str) -> None:
    # 12.7 never shipped; 13.3+ rows were not available; 10.x is out of the table
    assert compat.toolkit_min_driver(CudaVersion.parse(cuda)) is None


@pytest.mark.parametrize(
    ("cuda", "driver"),
    [("13.0", "580"), ("13.2.1", "580"), ("12.4", "525.60.13"), ("12.9", "525.60.13"),
     ("11.8", "450.80.02"), ("10.2", None)],
)
def test_family_min_driver(cuda: str, driver: str | None) -> None:
    found = compat.family_min_driver(CudaVersion.parse(cuda))
    if driver is None:
        assert found is None
        return
    assert found is not None
    assert found[0] == DriverVersion.parse(driver)
    assert "Minor Version Compatibility" in found[1] or "Table 2" in found[1]


@pytest.mark.parametrize(
    ("branch", "cuda"),
    [(450, "11.0"), (470, "11.4"), (535, "12.2"), (550, "12.4"), (570, "12.8"), (575, "12.9"),
     (580, "13.0"), (595, "13.2"), (565, None), (600, None), (0, None)],
)
def test_cuda_for_branch(branch: int, cuda: str | None) -> None:
    expected = None if cuda is None else CudaVersion.parse(cuda)
    assert compat.cuda_for_branch(branch) == expected


def test_table_is_loaded_once() -> None:
    assert compat.table() is compat.table()


def test_every_minor_has_exactly_one_ga_row() -> None:
    lines: dict[tuple[int, int], int] = {}
    for row in compat.table().toolkits:
        key = (row.cuda.major, row.cuda.minor)
        lines[key] = lines.get(key, 0) + row.ga
    assert lines and all(n == 1 for n in lines.values()), lines
    assert (12, 7) not in lines


def test_driver_minimums_never_fall_as_toolkits_rise() -> None:
    rows = sorted(compat.table().toolkits, key=lambda r: r.cuda)
    for older, newer in zip(rows, rows[1:], strict=False):
        assert older.cuda < newer.cuda, f"duplicate row {newer.cuda}"
        assert older.driver <= newer.driver, (older, newer)


def test_family_floor_is_below_every_toolkit_of_the_family() -> None:
    for row in compat.table().toolkits:
        floor = compat.family_min_driver(row.cuda)
        assert floor is not None
        if (row.cuda.major, row.cuda.minor) == (11, 0):
            continue   # NVIDIA's footnote: 11.0 shipped with older drivers than the 11.x floor
        assert floor[0] <= row.driver, row


def test_each_branch_is_the_branch_of_its_toolkit_ga_driver() -> None:
    for row in compat.table().branches:
        found = compat.toolkit_min_driver(row.cuda)
        assert found is not None, row
        assert found[0].branch == row.branch, row
        assert row.basis in ("observed", "inferred")
        assert row.source


def test_every_fact_has_a_source() -> None:
    t = compat.table()
    assert "Table 3" in t.toolkits_source
    assert all(f.source for f in t.families)
    assert all(b.source for b in t.branches)
