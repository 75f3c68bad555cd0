"""report.py: the one result type, its table and JSON, and the exit code from checks."""
from __future__ import annotations

import json

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
