"""proc.run: the one way a process starts (real processes, steered through env and PATH)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from provisioner import proc
from provisioner.errors import CommandError


def test_output_and_exit_code_come_back() -> None:
    done = proc.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                    check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert done.args[0] == sys.executable


def test_a_failure_carries_the_command_and_the_last_lines_of_stderr() -> None:
    code = "import sys\nfor i in range(30): print(f'line {i}', file=sys.stderr)\nsys.exit(2)"
    with pytest.raises(CommandError) as e:
        proc.run([sys.executable, "-c", code])
    msg = e.value.message
    assert "exited 2" in msg and "    line 29" in msg and "line 9\n" not in msg   # the last 20 lines, indented
    assert e.value.returncode == 2 and "line 0" in e.value.stderr


def test_missing_program_and_timeout_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="`no-such-program-here` not found on PATH"):
        proc.run(["no-such-program-here"], env={"PATH": str(tmp_path)})
    with pytest.raises(CommandError, match=r"timed out after 0.5 s"):
        proc.run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.5)
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(CommandError, match="is not executable"):
        proc.run([script])


def test_paths_env_cwd_input_and_no_shell(tmp_path: Path) -> None:
    done = proc.run([Path(sys.executable), "-c", "import os, sys; print(os.getcwd(), os.environ['X'], sys.stdin.read())"],
                    env={"X": "1; rm -rf /"}, cwd=tmp_path, input="fed")
    assert done.stdout.split() == [str(tmp_path), "1;", "rm", "-rf", "/", "fed"]   # the value, not a shell command


def test_trace_shows_each_command_under_verbose() -> None:
    seen: list[str] = []
    proc.trace = seen.append
    try:
        proc.run([sys.executable, "-c", "pass", "a b"])
    finally:
        proc.trace = None
    assert seen == [f"+ {sys.executable} -c pass 'a b'"]


def test_tail_indents_and_limits() -> None:
    assert proc.tail("a\nb\nc\n", 2) == "    b\n    c"
    assert proc.tail("") == ""
