"""Terminal output (provisioner/cli/ui.py): colour on a terminal, none under NO_COLOR or in a pipe,
aligned tables, spinners and progress bars only on an interactive terminal, --json left clean.

A terminal here is a real one: the command runs with stdout and stderr on pseudo-terminals."""
from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner import units
from provisioner.cli import main, ui
from provisioner.cli.app import App
from provisioner.profiles import bundled_dir
from tests.hubserver import HubServer, Repo

REPO = Path(__file__).resolve().parent.parent.parent
SGR = re.compile(r"\x1b\[([0-9;]*)m")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def colours(text: str) -> set[int]:
    """The colour parameters (foreground/background, 8/16/256/true colour) of every SGR sequence."""
    found = set()
    for params in SGR.findall(text):
        codes = [int(p) for p in params.split(";") if p]
        found |= {c for c in codes if 30 <= c <= 49 or 90 <= c <= 107}
    return found


def environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test environment (HOME and XDG in tmp_path) without any colour setting of its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PROVISION_NVML_LIBRARY=str(tmp_path / "no-libnvidia-ml.so"), **extra)
    return env


def on_terminal(args: Sequence[str], env: dict[str, str], *, columns: int = 500) -> tuple[int, str, str]:
    """`provision ARGS` with stdout and stderr each on its own pseudo-terminal of `columns` columns."""
    masters, slaves = [], []
    for _ in range(2):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        masters.append(master)
        slaves.append(slave)
    child = subprocess.Popen([sys.executable, "-m", "provisioner", *args], stdin=subprocess.DEVNULL,
                             stdout=slaves[0], stderr=slaves[1], env=env, cwd=REPO)
    for slave in slaves:
        os.close(slave)
    got = {m: bytearray() for m in masters}
    reading = set(masters)
    while reading:
        ready, _, _ = select.select(list(reading), [], [], 120)
        assert ready, "provision wrote nothing for 120 s"
        for m in ready:
            try:
                data = os.read(m, 1 << 16)
            except OSError:          # EIO: the child closed its side
                data = b""
            if data:
                got[m] += data
            else:
                reading.discard(m)
                os.close(m)
    code = child.wait(timeout=120)
    out, err = (got[m].decode().replace("\r\n", "\n") for m in masters)
    return code, out, err


def piped(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def plain_lines(text: str) -> list[str]:
    return [line.rstrip() for line in ANSI.sub("", text).splitlines()]


# ---------------------------------------------------------------------------- colour

def test_a_terminal_gets_colour_no_color_and_pipes_get_none(tmp_path: Path) -> None:
    args = ["--root", str(tmp_path), "verify"]
    code, out, _ = on_terminal(args, environ(tmp_path))
    assert code == 1
    assert 31 in colours(out)                        # FAIL (and FAILED) in red
    assert "\x1b[1mstatus" in out                     # bold headers
    # NO_COLOR: no colour at all on the terminal (https://no-color.org); the words stay
    code, grey, _ = on_terminal(args, environ(tmp_path, NO_COLOR="1"))
    assert code == 1 and colours(grey) == set()
    assert plain_lines(grey) == plain_lines(out)
    # a pipe: no escape codes, and the same table as the terminal's at this width, line by line
    done = piped(args, environ(tmp_path))
    assert done.returncode == 1 and "\x1b" not in done.stdout + done.stderr
    assert done.stdout.splitlines() == plain_lines(out)
    assert done.stdout.splitlines()[-1] == "FAILED: 0 ok, 1 warning(s), 1 failed, 6 skipped"


def test_force_color_colours_a_pipe_unless_no_color(tmp_path: Path) -> None:
    args = ["--root", str(tmp_path), "verify"]
    forced = piped(args, environ(tmp_path, FORCE_COLOR="1"))
    assert 31 in colours(forced.stdout)
    assert forced.stderr == ""                                     # colour, but no spinner in a pipe
    both = piped(args, environ(tmp_path, FORCE_COLOR="1", NO_COLOR="1")).stdout
    assert colours(both) == set() and "FAILED: 0 ok" in ANSI.sub("", both)


def test_json_stays_one_clean_document_on_a_terminal(tmp_path: Path) -> None:
    code, out, err = on_terminal(["--root", str(tmp_path), "--json", "verify"], environ(tmp_path, FORCE_COLOR="1"))
    assert code == 1
    assert "\x1b" not in out and json.loads(out)["ok"] is False
    assert "checking" not in err and "\x1b" not in err            # no spinner under --json


# ---------------------------------------------------------------------------- spinners

def test_the_spinner_shows_on_a_terminal_only(tmp_path: Path) -> None:
    _, _, err = on_terminal(["--root", str(tmp_path), "verify"], environ(tmp_path))
    assert "checking the driver, GPUs, toolkit and environment ..." in err
    assert "\x1b[?25l" in err                                      # the cursor hidden while it spins
    done = piped(["--root", str(tmp_path), "verify"], environ(tmp_path))
    assert done.stderr == ""                                       # no spinner, no escape codes


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, for the spinner and progress helpers."""

    def isatty(self) -> bool:
        return True


def test_helpers_draw_nothing_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    app = App(environ={"TERM": "xterm"})
    assert ui.spinners(app) is None                                # pytest's stderr is not a terminal
    with ui.spinner(app, "loading"):
        pass
    with ui.activity(app) as say:
        say("downloading CUDA 13.0 wheels (3 wheels, ~300 MB)")
    with ui.transfer(app, "Qwen/Qwen3-8B") as update:
        update("model.safetensors", 10, 100)
        update("model.safetensors", 100, 100)
        update("model.safetensors", 100, 100)
        update("config.json", 5, None)
    err = capsys.readouterr().err
    assert err.splitlines() == ["downloading CUDA 13.0 wheels (3 wheels, ~300 MB)",
                                "downloaded model.safetensors (100 B)"]


def test_helpers_draw_on_a_terminal_but_not_under_json(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    env = {"TERM": "xterm", "NO_COLOR": "1"}
    assert ui.spinners(App(environ=env, json=True)) is None
    assert ui.spinners(App(environ={"TERM": "dumb"})) is None      # rich: a dumb terminal is not interactive
    with ui.activity(App(environ=env)) as say:
        say("assembling /usr/local/cuda-13.0")
    with ui.transfer(App(environ=env), "Qwen/Qwen3-8B") as update:
        update("model.safetensors", 512, 1024)
    shown = screen.getvalue()
    assert "assembling /usr/local/cuda-13.0\n" in shown           # the line itself, above the spinner
    assert "assembling /usr/local/cuda-13.0 ..." in shown          # and as the spinner's text
    assert "Qwen/Qwen3-8B\n" in shown and "model.safetensors" in shown and "0.5/1.0 KiB" in shown
    assert colours(shown) == set()


# ---------------------------------------------------------------------------- download progress

def test_a_download_draws_rich_bars_on_a_terminal_and_one_line_per_file_elsewhere(tmp_path: Path, hub: HubServer,
                                                                                  hub_repo: Repo) -> None:
    """`model download` against the local hub: on a terminal one rich bar per file and none of
    huggingface_hub's tqdm bars; in a pipe one `downloaded NAME (SIZE)` line per file and no `\\r`;
    under --json, on a terminal too, stdout is the one document and no bar is drawn."""
    env = environ(tmp_path)
    env.pop("HF_HUB_OFFLINE", None)           # the suite's guard; this talks to 127.0.0.1 only
    wanted = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
              "merges.txt", "chat_template.jinja", "model.safetensors")
    sizes = {name: len(hub_repo.files[name]) for name in wanted}

    def download(into: str) -> list[str]:
        return ["model", "download", "acme/tiny-qwen2", "--endpoint", hub.url, "--local-dir", str(tmp_path / into)]

    code, out, err = on_terminal(download("tty"), env)
    assert code == 0, err
    assert "\x1b[?25l" in err and "%|" not in err                  # rich's live display; no tqdm bar
    bars = {line.split()[0]: line for line in plain_lines(err) if "━" in line}
    assert set(bars) == set(wanted)
    number, unit = units.human_bytes(sizes["model.safetensors"]).split()
    assert f"{number}/{number} {unit}" in bars["model.safetensors"]
    assert out == f"acme/tiny-qwen2: 8 file(s) in {tmp_path / 'tty'}\n"

    done = piped(download("pipe"), env)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    assert sorted(line for line in done.stderr.splitlines() if line.startswith("downloaded ")) == sorted(
        f"downloaded {name} ({units.human_bytes(size)})" for name, size in sizes.items())

    in_pipe = piped(["--json", *download("json-pipe")], env)
    on_tty = on_terminal(["--json", *download("json-tty")], env)
    for code, out, err in ((in_pipe.returncode, in_pipe.stdout, in_pipe.stderr), on_tty):
        assert code == 0, err
        assert json.loads(out)["files"] and "━" not in err and "\r" not in err
        assert sum(line.startswith("downloaded ") for line in err.splitlines()) == len(wanted)


# ---------------------------------------------------------------------------- tables

def test_columns_align_for_long_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profiles = tmp_path / "config" / "provision" / "profiles"
    profiles.mkdir(parents=True)
    long_name = "a-profile-with-a-rather-long-name-for-the-first-column"
    cpu = (bundled_dir() / "cpu.yaml").read_text()
    (profiles / f"{long_name}.yaml").write_text(cpu.replace("name: cpu\n", f"name: {long_name}\n"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    result = CliRunner().invoke(main, ["profile", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].startswith("-" * len(long_name) + "  ")
    assert any(line.startswith(long_name + "  ") for line in lines)
    column = lines[0].index("cuda")
    assert column == len(long_name) + 2
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines)
    assert "\x1b" not in result.output


def test_help_of_every_command_imports_no_rich() -> None:
    code = ("import sys\nfrom provisioner.cli import LAZY_COMMANDS, main\n"
            "for cmd in LAZY_COMMANDS:\n"
            "    try:\n        main([cmd, '--help'], prog_name='provision')\n    except SystemExit:\n        pass\n"
            "print('rich' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
