"""A Ctrl-C that lands while a module defining a dataclass is being imported.

Python 3.11 re-raises whatever a descriptor's `__set_name__` raises as "RuntimeError: Error calling
__set_name__ on 'Field' instance ..." (3.12 lets it through), so the KeyboardInterrupt reached the
command as a RuntimeError and `provision up` printed a traceback (seen in CI: SIGINT during the
import of model/smoke_result.py). A real provision process, with `profile list`'s call replaced by a
class definition whose field's __set_name__ is interrupted, the exact mechanism."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r'''
import sys
from provisioner import profiles
from provisioner.cli import run

class Interrupted:
    def __set_name__(self, owner, name):
        raise KeyboardInterrupt

def load_all(environ):
    class Late:                     # as a dataclass module imported while Ctrl-C lands
        placement = Interrupted()
    return {}

profiles.load_all = load_all
sys.argv = ["provision", *sys.argv[1:]]
run()
'''


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_an_interrupt_wrapped_by_set_name_is_an_interrupt(tmp_path: Path, json_out: bool) -> None:
    args = ["--json", "profile", "list"] if json_out else ["profile", "list"]
    done = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, HOME=str(tmp_path)), cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 130
    assert "error: interrupted" in done.stderr and "run the same command again" in done.stderr
    if json_out:
        assert '"interrupted"' in done.stdout


def test_a_runtime_error_of_another_cause_still_fails_loudly(tmp_path: Path) -> None:
    script = SCRIPT.replace("raise KeyboardInterrupt", "raise ValueError('a real bug')")
    done = subprocess.run([sys.executable, "-c", script, "profile", "list"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, HOME=str(tmp_path)), cwd=tmp_path)
    assert done.returncode not in (0, 130)
    assert "a real bug" in done.stderr and "error: interrupted" not in done.stderr
