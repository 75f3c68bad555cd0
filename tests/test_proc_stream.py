"""proc.run(on_line=...): stdout line by line while the program runs (real processes)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from provisioner import proc
from provisioner.errors import CommandError


def test_lines_arrive_while_the_program_runs(tmp_path: Path) -> None:
    """The program prints a line, then waits until the callback has seen it: only a line handed over
    before the program exits lets it finish (otherwise it would run into the timeout)."""
    seen = tmp_path / "seen"
    code = ("import os, sys, time\n"
            "print('first', flush=True)\n"
            f"while not os.path.exists({str(seen)!r}): time.sleep(0.01)\n"
            "print('second'); print('oops', file=sys.stderr); sys.exit(4)")
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        seen.touch()

    done = proc.run([sys.executable, "-c", code], timeout=60, check=False, on_line=on_line)
    assert lines == ["first", "second"]
    assert (done.returncode, done.stdout, done.stderr) == (4, "", "oops\n")


def test_input_stderr_and_errors_are_those_of_run(tmp_path: Path) -> None:
    echo = "import sys\nfor line in sys.stdin: print(line.strip().upper())"
    lines: list[str] = []
    proc.run([sys.executable, "-c", echo], input="a\nb\n", on_line=lines.append)
    assert lines == ["A", "B"]
    with pytest.raises(CommandError) as e:
        proc.run([sys.executable, "-c", "import sys; print('out'); sys.exit('it broke')"], on_line=lines.append)
    assert "exited 1" in e.value.message and "    it broke" in e.value.message
    with pytest.raises(CommandError, match=r"timed out after 0.5 s"):
        proc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5, on_line=lines.append)
    with pytest.raises(CommandError, match="`no-such-program-here` not found on PATH"):
        proc.run(["no-such-program-here"], env={"PATH": str(tmp_path)}, on_line=lines.append)


def test_a_callback_that_raises_stops_the_program() -> None:
    """The error reaches the caller, and the program is not left running behind it (ended and reaped)."""
    pids: list[int] = []

    def on_line(line: str) -> None:
        pids.append(int(line))
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        proc.run([sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
                 timeout=120, on_line=on_line)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
