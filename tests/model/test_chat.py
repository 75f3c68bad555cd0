"""`provision chat`: driven as a real terminal program on a pseudo-terminal, and with a prompt piped in."""
from __future__ import annotations

import codecs
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.cli.chat import REPL_SCRIPT, repl_command

TINY = Path(__file__).parent.parent / "fixtures" / "tiny-qwen2"
# Terminal control sequences readline may write (bracketed paste, keypad mode), removed before matching.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


class Terminal:
    """A program on a real pty: its own session with the pty as controlling terminal, so typing
    \\x03 makes the kernel's line discipline send SIGINT, exactly as in a terminal emulator."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child becomes the program
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.raw = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pos = 0
        self.status: int | None = None

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw).replace("\r", "")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the program closed the terminal (it exited)
            data = b""
        if not data:
            raise EOFError
        self.raw += self.decoder.decode(data)
        return True

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Wait until `pattern` (a regex) appears after what the previous expect consumed."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.text, self.pos)
            if found:
                self.pos = found.end()
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout} s; the terminal shows:\n"
                                     + self.text[-3000:])
            try:
                self._read(remaining)
            except EOFError:
                raise AssertionError(f"the program exited before {pattern!r}:\n" + self.text[-3000:]) from None

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            try:
                self._read(0.1)
            except EOFError:
                time.sleep(0.05)
        raise AssertionError("the program did not exit:\n" + self.text[-3000:])

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def chat_env(chat_env_python: Path) -> str:
    return str(chat_env_python.parent.parent)


@pytest.fixture
def terminal(chat_env: str) -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        argv = [sys.executable, "-m", "provisioner", "chat", str(TINY), "--env", chat_env, "--greedy",
                *args]
        term = Terminal(argv, dict(os.environ, TERM="xterm"))
        opened.append(term)
        return term

    yield start
    for term in opened:
        term.close()


def test_multi_turn_keeps_history_and_reset_clears_it(terminal: Callable[..., Terminal]) -> None:
    term = terminal()
    term.expect(r"loaded in [\d.]+ s on cpu")
    term.expect(">>> ")
    term.type("My name is Ada.\r")
    term.expect(r"Nice to meet you, Ada\.\n")
    term.expect(">>> ")
    # Only the history says who is asking: alone, this question gets "I do not know your name."
    term.type("What is my name?\r")
    term.expect(r"Your name is Ada\.\n")
    term.type("/reset\r")
    term.expect(r"\(history cleared\)")
    term.type("What is my name?\r")
    term.expect(r"I do not know your name\.\n")
    term.type("/exit\r")
    assert term.wait() == 0
    assert "Traceback" not in term.text


def test_ctrl_c_stops_the_reply_not_the_session(terminal: Callable[..., Terminal]) -> None:
    term = terminal("--max-new-tokens", "100000")
    term.expect(">>> ")
    term.type("Sing for me.\r")  # the tiny model's endless reply
    term.expect("la la la ")
    pressed = time.monotonic()
    term.type("\x03")
    term.expect(r"\[stopped\]", timeout=15)
    assert time.monotonic() - pressed < 10
    reply = term.text[term.text.index("Sing for me."):]
    assert 3 <= reply.count("la") < 100000
    term.expect(">>> ")
    # CPython's readline only notices a signal that interrupts its select(); one that lands in the
    # microseconds between drawing the prompt and select() waits for the next key. A person cannot
    # type that fast; a test can, so it pauses.
    time.sleep(0.5)
    term.type("\x03")  # at the prompt, Ctrl-C drops the line, it does not quit
    term.expect(r"\(/exit or Ctrl-D quits\)")
    term.type("/reset\r")
    term.type("Hello! How are you?\r")
    term.expect(r"I am fine, thank you\.\n")
    term.expect(">>> ")
    term.type("\x04")  # Ctrl-D on an empty line
    assert term.wait() == 0
    assert "Traceback" not in term.text and "KeyboardInterrupt" not in term.text


def test_piped_prompt_prints_one_reply(chat_env: str, provision_cmd: list[str]) -> None:
    done = subprocess.run([*provision_cmd, "chat", str(TINY), "--env", chat_env, "--greedy",
                           "--system", "Reply in French."],
                          input="Hello! How are you?\n", capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout) == (0, "Je vais bien, merci.\n"), done.stderr
    assert "Traceback" not in done.stderr


def test_empty_pipe_fails_before_loading(chat_env: str, provision_cmd: list[str]) -> None:
    done = subprocess.run([*provision_cmd, "chat", str(TINY), "--env", chat_env], input="",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "error: no prompt on stdin" in done.stderr
    assert "Loading weights" not in done.stderr


def test_env_without_torch_names_the_fix(bare_env_python: Path, provision_cmd: list[str]) -> None:
    done = subprocess.run([*provision_cmd, "chat", str(TINY), "--env", str(bare_env_python.parent.parent)],
                          input="Hello!\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "lacks torch" in done.stderr and "provision env create" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_model_folder_is_refused_before_starting(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["chat", str(tmp_path / "missing"), "--env", sys.prefix])
    assert result.exit_code == 2
    assert f"error: model folder {tmp_path / 'missing'} does not exist" in result.stderr
    assert "provision model download" in result.stderr
    assert "Traceback" not in result.output


def test_missing_env_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["chat", str(TINY), "--env", str(tmp_path / "no-env")])
    assert result.exit_code == 1
    assert "does not exist" in result.stderr and "provision env create" in result.stderr
    assert "Traceback" not in result.output


def test_repl_command_passes_the_options() -> None:
    args = repl_command(Path("/env/bin/python"), "Qwen/Qwen2.5-1.5B-Instruct", quant="int8",
                        max_new_tokens=128, system="Be brief.", trust_remote_code=True, greedy=False,
                        stats=True)
    assert args == ["/env/bin/python", str(REPL_SCRIPT), "Qwen/Qwen2.5-1.5B-Instruct", "--quant", "int8",
                    "--max-new-tokens", "128", "--system", "Be brief.", "--trust-remote-code", "--stats"]


def test_ctrl_c_while_loading_exits_130(terminal: Callable[..., Terminal]) -> None:
    term = terminal()
    term.expect(r"loading .* \(nf4\) \.\.\.")
    term.type("\x03")
    assert term.wait() == 130
    assert "Traceback" not in term.text and ">>> " not in term.text


def test_failed_reply_is_one_error_with_a_hint(chat_env_python: Path) -> None:
    """A reply that cannot be generated (transformers refuses max_new_tokens -1, which `provision chat`
    itself never passes) ends with one error line and a hint, never a traceback."""
    done = subprocess.run([str(chat_env_python), str(REPL_SCRIPT), str(TINY), "--greedy",
                           "--max-new-tokens", "-1"], input="Hello! How are you?\n",
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[-2].startswith("error: generating a reply failed: ValueError: `max_new_tokens` must be greater")
    assert lines[-1].startswith(f"hint: `provision verify --smoke-chat --model {TINY} --env ")
    assert "Traceback" not in done.stderr


def test_repl_missing_folder_names_the_fix(chat_env_python: Path, tmp_path: Path) -> None:
    done = subprocess.run([str(chat_env_python), str(REPL_SCRIPT), str(tmp_path / "missing")],
                          input="Hello!\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-2:] == [
        f"error: model folder {tmp_path / 'missing'} does not exist",
        "hint: pass a folder holding config.json and the weights, or a hub id "
        "(provision model download ID --local-dir DIR)"]
