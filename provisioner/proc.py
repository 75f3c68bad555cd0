"""run(): the one way provision starts a process."""
from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import CommandError

#: Set by the CLI under -v: called with "+ cmd args" before each process starts.
trace: Callable[[str], None] | None = None

TAIL_LINES = 20


@dataclass(frozen=True)
class Completed:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `text`, indented, for error messages."""
    kept = [line for line in text.rstrip().splitlines()][-lines:]
    return "\n".join("    " + line for line in kept)


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
    capture: bool = True,
    input: str | None = None,
) -> Completed:
    """Run `args` (never through a shell) and return its output.

    Raises CommandError when the program is missing, times out, or (with check) exits non-zero;
    the message carries the last lines of stderr.
    """
    argv = [str(a) if isinstance(a, Path) else os.fspath(a) for a in args]
    shown = shlex.join(argv)
    if trace is not None:
        trace(f"+ {shown}")
    try:
        cp = subprocess.run(
            argv,
            capture_output=capture,
            text=True,
            errors="replace",    # a program that prints bytes is garbled output, not a UnicodeDecodeError
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
        )
    except FileNotFoundError as e:
        raise CommandError(f"`{argv[0]}` not found" + ("" if os.sep in argv[0] else " on PATH"),
                           hint=None) from e
    except PermissionError as e:
        raise CommandError(f"`{argv[0]}` is not executable: {e.strerror}") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(f"`{shown}` timed out after {timeout:g} s",
                           stdout=_text(e.stdout), stderr=_text(e.stderr)) from e
    out, err = cp.stdout or "", cp.stderr or ""
    if check and cp.returncode != 0:
        detail = tail(err or out)
        raise CommandError(
            f"`{shown}` exited {cp.returncode}" + (f"\n{detail}" if detail else ""),
            returncode=cp.returncode, stdout=out, stderr=err,
        )
    return Completed(tuple(argv), cp.returncode, out, err)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
