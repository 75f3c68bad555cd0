"""`provision explain` against the corpus of real pastes in tests/data/explain (sources in its tables).

Each file is read through the whole pipeline (explain.explain) and must give exactly the values
and causes its table records; the failure pastes must give "not available", never a number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import explain, known_messages

CORPUS = Path(__file__).parent.parent / "data" / "explain"
KINDS = ("nvidia-smi", "nvcc", "errors", "envs")


def _entries(folder: str) -> list[dict[str, Any]]:
    out = []
    for table in sorted((CORPUS / folder).glob("sources*.yaml")):
        for entry in yaml.safe_load(table.read_text()):
            out.append(dict(entry, folder=folder, table=table.name))
    return out


ALL = [e for k in KINDS for e in _entries(k)]


def _run(entry: dict[str, Any], environ: dict[str, str]) -> explain.Explanation:
    path = CORPUS / entry["folder"] / entry["file"]
    return explain.explain([(path.name, path.read_bytes())], environ=environ)


@pytest.fixture(scope="module")
def environ(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "PATH": "/usr/bin:/bin"}


def test_corpus_tables_cover_every_file_and_note_a_source() -> None:
    counts = {}
    for kind in KINDS:
        entries = _entries(kind)
        listed = {e["file"] for e in entries}
        on_disk = {p.name for p in (CORPUS / kind).glob("*.txt")}
        assert listed == on_disk, f"{kind}: files without a table row or rows without a file"
        assert all(str(e.get("source") or "").strip() for e in entries)
        assert all(isinstance(e.get("expect"), dict) for e in entries)
        counts[kind] = len(entries)
    smi = sum(1 for e in _entries("nvidia-smi"))
    assert smi >= 30 and counts["nvcc"] >= 15 and counts["errors"] >= 30, counts
    for e in ALL:
        for cause in e["expect"].get("causes") or []:
            assert cause in known_messages.CAUSE_IDS, (e["file"], cause)


def _causes(result: explain.Explanation) -> list[str]:
    """The root causes found (those that follow from another one are reported as such)."""
    return [c.id for c in result.causes if c.follows_from is None]


def _check_causes(entry: dict[str, Any], result: explain.Explanation) -> None:
    expected = [c for c in entry["expect"].get("causes") or [] if c != "other"]
    found = [c for c in _causes(result) if c != "other"]
    assert set(expected) <= set(found), (entry["file"], expected, found)
    extra = set(found) - set(expected) - set(entry["expect"].get("also") or [])
    assert not extra, (entry["file"], "causes not in the table", extra)
    values = entry["expect"].get("values") or {}
    seen: dict[str, set[str]] = {}
    for c in result.causes:
        for k, v in c.values.items():
            seen.setdefault(k, set()).add(v)
    for key, value in values.items():
        assert str(value) in seen.get(key, set()), (entry["file"], key, seen.get(key), value)


@pytest.mark.parametrize("entry", _entries("nvidia-smi"), ids=lambda e: e["file"])
def test_nvidia_smi_paste(entry: dict[str, Any], environ: dict[str, str]) -> None:
    result = _run(entry, environ)
    exp = entry["expect"]
    facts = result.facts_summary()
    assert facts["driver"]["version"] == exp.get("driver_version")
    assert facts["driver"]["cuda"] == exp.get("cuda")
    got = [{k: g[k] for k in ("index", "name", "memory_total_mib", "memory_used_mib")} for g in facts["gpus"]]
    want = [{k: g.get(k) for k in ("index", "name", "memory_total_mib", "memory_used_mib")}
            for g in exp.get("gpus") or []]
    assert got == want
    _check_causes(entry, result)
    assert result.exit_code in (0, 1)


@pytest.mark.parametrize("entry", _entries("nvcc"), ids=lambda e: e["file"])
def test_nvcc_paste(entry: dict[str, Any], environ: dict[str, str]) -> None:
    result = _run(entry, environ)
    exp = entry["expect"]
    facts = result.facts_summary()
    assert facts["toolkit"]["version"] == exp.get("version")
    assert facts["toolkit"]["full"] == exp.get("full")
    _check_causes(entry, result)


@pytest.mark.parametrize("entry", _entries("errors"), ids=lambda e: e["file"])
def test_error_paste(entry: dict[str, Any], environ: dict[str, str]) -> None:
    result = _run(entry, environ)
    _check_causes(entry, result)
    expected = [c for c in entry["expect"].get("causes") or [] if c != "other"]
    if expected:
        assert result.exit_code == 1
        assert all(c.fix for c in result.causes)


@pytest.mark.parametrize("entry", _entries("envs"), ids=lambda e: e["file"])
def test_env_paste(entry: dict[str, Any], environ: dict[str, str]) -> None:
    result = _run(entry, environ)
    exp = entry["expect"]
    facts = result.facts_summary()
    assert facts["torch"]["version"] == exp.get("torch_version")
    assert facts["torch"]["cuda"] == exp.get("torch_cuda")
    if exp.get("torch_cpu"):
        assert facts["torch"]["build"] == "cpu"
    assert facts["driver"]["version"] == exp.get("driver_version")
    assert [g["name"] for g in facts["gpus"]] == list(exp.get("gpus") or [])
    assert facts["toolkit"]["version"] == exp.get("toolkit")
    for name, version in (exp.get("packages") or {}).items():
        assert facts["packages"].get(name) == version, (name, facts["packages"])
    _check_causes(entry, result)
