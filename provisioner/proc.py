"""run(): the one way provision starts a process."""
from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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
    on_line: Callable[[str], None] | None = None,
) -> Completed:
    """Run `args` (never through a shell) and return its output.

    With `on_line`, each line of stdout (without its newline) goes to `on_line` as it arrives,
    called in this thread, and `Completed.stdout` is empty; stderr is captured (or not) as without.
    Raises CommandError when the program is missing, times out, or (with check) exits non-zero;
    the message carries the last lines of stderr.
    """
    argv = [str(a) if isinstance(a, Path) else os.fspath(a) for a in args]
    shown = shlex.join(argv)
    if trace is not None:
        trace(f"+ {shown}")
    try:
        if on_line is not None:
            cp = _streamed(argv, on_line, timeout=timeout, env=env, cwd=cwd, capture=capture, input=input)
        else:
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


def _streamed(argv: list[str], on_line: Callable[[str], None], *, timeout: float, env: Mapping[str, str] | None,
              cwd: str | os.PathLike[str] | None, capture: bool,
              input: str | None) -> subprocess.CompletedProcess[str]:
    """subprocess.run, but stdout's lines go to `on_line` while the program runs.

    Threads feed stdin and drain stderr so that neither pipe can fill and stall the program; a
    timer kills it at the timeout (stdout then ends). On Ctrl-C, or when `on_line` raises, the
    program gets subprocess.run's grace (0.25 s to exit on its own SIGINT), then is killed.
    """
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture else None,
                             text=True, errors="replace", env=dict(env) if env is not None else None, cwd=cwd)
    err: list[str] = []
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        child.kill()

    def feed(stream: IO[str]) -> None:
        try:
            stream.write(input or "")
        except OSError:                         # the program exited without reading it all
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def drain(stream: IO[str]) -> None:
        err.append(stream.read())

    helpers = [threading.Thread(target=feed, args=(child.stdin,), daemon=True)] if child.stdin is not None else []
    if child.stderr is not None:
        helpers.append(threading.Thread(target=drain, args=(child.stderr,), daemon=True))
    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    for t in (*helpers, timer):
        t.start()
    try:
        assert child.stdout is not None
        for line in child.stdout:
            on_line(line.rstrip("\n"))
        child.wait()
    except BaseException:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(0.25)
        child.kill()
        child.wait()
        raise
    finally:
        timer.cancel()
        for t in helpers:
            t.join()
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
    if expired.is_set() and child.returncode < 0:     # killed by the timer, not finished just before it
        raise subprocess.TimeoutExpired(argv, timeout, output="", stderr="".join(err))
    return subprocess.CompletedProcess(argv, child.returncode, "", "".join(err))


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
