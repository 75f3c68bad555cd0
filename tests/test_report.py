"""report.py: the one result type, its table and JSON, and the exit code from checks."""
from __future__ import annotations

import json

import pytest

from provisioner import report
from provisioner.report import Check, Status

CHECKS = [Check("driver", Status.OK, "NVIDIA driver 575.57.08 loaded"),
          Check("cuda.link", Status.WARN, "no link", "provision cuda switch 12.6", {"x": 1}),
          Check("env.torch", Status.FAIL, "torch missing\nsecond line", "pip install torch"),
          Check("gpu", Status.SKIP, "no GPU")]


def test_exit_code_and_ok_follow_failures_only() -> None:
    assert report.exit_code(CHECKS) == 1 and not report.ok(CHECKS)
    assert report.exit_code(CHECKS[:2] + CHECKS[3:]) == 0


def test_document_is_versioned_json() -> None:
    doc = report.to_document(CHECKS, extra="yes")
    assert doc["version"] == report.JSON_VERSION and doc["ok"] is False and doc["extra"] == "yes"
    assert doc["checks"][1] == {"id": "cuda.link", "status": "warn", "message": "no link",
                                "fix": "provision cuda switch 12.6", "data": {"x": 1}}
    assert json.loads(report.dumps(doc)) == doc


def test_table_puts_the_fix_under_the_finding_and_counts() -> None:
    text = report.render_checks(CHECKS)
    lines = text.splitlines()
    assert lines[0].split() == ["status", "check", "finding"]
    assert any(line.startswith("FAIL") and "env.torch" in line and "torch missing" in line for line in lines)
    finding_col = lines[0].index("finding")
    (cont,) = [line for line in lines if line.strip() == "second line"]
    assert cont.index("second line") == finding_col                  # wrapped under its own column
    assert any(line.strip() == "fix: pip install torch" for line in lines)
    assert lines[-1] == "FAILED: 1 ok, 1 warning(s), 1 failed, 1 skipped"


def test_columns_align_on_the_longest_cell_and_lines_wrap_under_their_column() -> None:
    rows = [["a", "x" * 40, "short"], ["a-much-longer-first-cell", "y", "two\nlines"]]
    lines = report.table(rows, ["one", "two", "three"]).splitlines()
    assert lines == ["one                       two                                       three",
                     "------------------------  ----------------------------------------  --------",
                     "a                         " + "x" * 40 + "  short",
                     "a-much-longer-first-cell  y                                         two",
                     "                                                                    lines"]


def test_plain_text_ignores_the_terminal_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "20")
    monkeypatch.delenv("NO_COLOR", raising=False)
    text = report.render_checks(CHECKS)
    assert "\x1b" not in text                                   # a string is for a pipe or a file
    assert "fix: provision cuda switch 12.6" in text.splitlines()[4]   # and never wraps


def test_cells_mask_url_credentials() -> None:
    checks = [Check("env.index", Status.WARN, "index https://user:secret@pypi.example/simple",
                    "pip config set global.index-url https://user:secret@pypi.example/simple")]
    text = report.render_checks(checks)
    assert "secret" not in text and "https://***@pypi.example/simple" in text
    assert "secret" not in report.table([["https://u:secret@h.example/x"]], ["url"])
