"""CudaVersion and DriverVersion: parsing, order, and the error for what they are not."""
from __future__ import annotations

import pytest

from provisioner.errors import UsageError
from provisioner.versions import CudaVersion, DriverVersion


@pytest.mark.parametrize(("text", "want"), [
    ("12.6", (12, 6, None)), ("12.6.85", (12, 6, 85)), ("cu126", (12, 6, None)), ("cu118", (11, 8, None)),
    ("cu130", (13, 0, None)), (12.4, (12, 4, None)),
])
def test_cuda_parse(text: object, want: tuple[int, int, int | None]) -> None:
    v = CudaVersion.parse(text)  # type: ignore[arg-type]
    assert (v.major, v.minor, v.patch) == want


@pytest.mark.parametrize("text", ["", "12", "twelve", "cu1", "12.6.85.1x"])
def test_cuda_parse_refuses_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(UsageError) as e:
        CudaVersion.parse(text)
    assert "is not a CUDA version" in e.value.message and "12.6, 12.6.85 or cu126" in (e.value.hint or "")


def test_cuda_order_encoding_and_release_matching() -> None:
    assert CudaVersion.from_int(12080) == CudaVersion(12, 8) and CudaVersion.from_int(11040).short == "11.4"
    assert sorted([CudaVersion(12, 6, 85), CudaVersion(12, 6), CudaVersion(11, 8), CudaVersion(13, 0)]) == [
        CudaVersion(11, 8), CudaVersion(12, 6), CudaVersion(12, 6, 85), CudaVersion(13, 0)]
    assert CudaVersion(12, 6).same_release(CudaVersion(12, 6, 85))
    assert not CudaVersion(12, 6, 77).same_release(CudaVersion(12, 6, 85))
    assert CudaVersion(12, 6).tag == "cu126" and str(CudaVersion(12, 6, 85)) == "12.6.85"


def test_driver_versions_compare_numerically_and_keep_their_spelling() -> None:
    assert DriverVersion.parse("560.35.03") > DriverVersion.parse("560.9")
    assert DriverVersion.parse("535.104.05") > DriverVersion.parse("535.54.03")
    assert str(DriverVersion.parse("560.35.03")) == "560.35.03" and DriverVersion.parse("418.67").branch == 418
    with pytest.raises(UsageError, match="not an NVIDIA driver version"):
        DriverVersion.parse("latest")
