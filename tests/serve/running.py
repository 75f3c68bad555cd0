"""A `provision serve` or `provision chat --web` process for the tests: started for real, read until it prints
its address, asked to stop with Ctrl-C (SIGINT) and killed by its pid if it does not."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
TINY = REPO / "tests" / "fixtures" / "tiny-qwen2"
TINY_NAME = "tiny-qwen2"
REPLY = "I am fine, thank you."
QUESTION = "Hello! How are you?"
#: How long a start (torch, transformers and the web stack imported, the model loaded) may take at most.
START_LIMIT_S = 300


def isolated_environ(home: Path) -> dict[str, str]:
    """os.environ with HOME, the XDG dirs and Gradio's files under `home`, and the hub off (module-scoped
    fixtures start before the per-test isolation applies, so they isolate themselves)."""
    env = dict(os.environ)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_STATE_HOME=str(home / ".local/state"), XDG_CACHE_HOME=str(home / ".cache"),
               HF_HOME=str(home / ".cache/huggingface"), HF_HUB_OFFLINE="1", NO_COLOR="1",
               GRADIO_TEMP_DIR=str(home / "gradio"), GRADIO_ANALYTICS_ENABLED="False")
    for var in ("HF_ENDPOINT", "HF_TOKEN", "PROVISION_ROOT", "PROVISION_DEBUG", "CONDA_PREFIX", "VIRTUAL_ENV",
                "PROVISION_API_KEY"):
        env.pop(var, None)
    return env


class Running:
    """`python -m provisioner ARGS...` until it prints `at http://HOST:PORT`; stderr is kept in `log`."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "provisioner", *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=REPO)
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        found = self.wait_for(r" at (http://\S+?)/?(v1)?[ \n]")
        self.url = found.group(1).rstrip("/")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    @property
    def log(self) -> str:
        with self._seen:
            return "".join(self.lines)

    def wait_for(self, pattern: str, limit_s: float = START_LIMIT_S) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + limit_s
        with self._seen:
            while True:
                found = regex.search("".join(self.lines))
                if found:
                    return found
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"exited {self.proc.returncode} before {pattern!r}:\n{''.join(self.lines)}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} within {limit_s} s:\n{''.join(self.lines)}")
                self._seen.wait(min(left, 1.0))

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def health(self) -> dict[str, Any]:
        status, doc = self.get("/health")
        assert status == 200, doc
        return doc

    def wait_until_idle(self, limit_s: float = 120) -> dict[str, Any]:
        """/health once no generation runs or waits (a hang guard, not a timing assertion)."""
        deadline = time.monotonic() + limit_s
        while True:
            doc = self.health()
            gens = doc["generations"]
            if gens["active"] == 0 and gens["waiting"] == 0:
                return doc
            assert time.monotonic() < deadline, f"still busy after {limit_s} s: {doc}"
            time.sleep(0.05)

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; killed (by its pid) if it is still there after a grace period."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        return self.proc.returncode


@contextmanager
def started(args: list[str], home: Path) -> Iterator[Running]:
    """`provision ARGS...` in an environment isolated under `home`, stopped at the end with Ctrl-C: it must
    exit 0 or 130, with no traceback in its output."""
    running = Running(args, isolated_environ(home))
    try:
        yield running
    finally:
        assert running.stop() in (0, 130), running.log
        assert "Traceback" not in running.log, running.log
