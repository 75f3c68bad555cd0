"""First use: `provision serve --yes` installs the profile's `serve` extra into an environment that lacks it
(real pip, real packages), then serves from it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.running import QUESTION, REPLY, TINY, Running, isolated_environ

openai = pytest.importorskip("openai", reason="the `openai` client is in the test extra (pip install -e .[test])")

PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def test_first_use_installs_the_serve_extra_then_serves(chat_env_python: Path, tmp_path: Path) -> None:
    # A venv of its own whose Python also sees the chat env's packages (one .pth line), so torch is not
    # installed a second time; pip installs into the venv only (it never removes what lies outside it).
    prefix = tmp_path / "env"
    subprocess.run([str(chat_env_python), "-m", "venv", str(prefix)], check=True, timeout=300)
    python = prefix / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", PURELIB], capture_output=True, text=True, check=True).stdout.strip())
    shared = subprocess.run([str(chat_env_python), "-c", PURELIB], capture_output=True, text=True,
                            check=True).stdout.strip()
    (own / "chat-env.pth").write_text(shared + "\n")

    running = Running(["serve", str(TINY), "--env", str(prefix), "--yes", "--port", "0"],
                      isolated_environ(tmp_path / "home") | {"PIP_CACHE_DIR": os.environ["PIP_CACHE_DIR"]})
    try:
        assert f"installed fastapi>=0.115.2,<1 uvicorn>=0.30 into {prefix}" in running.log
        api = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0, timeout=300)
        done = api.chat.completions.create(model="tiny-qwen2", temperature=0,
                                           messages=[{"role": "user", "content": QUESTION}])
        assert done.choices[0].message.content == REPLY
    finally:
        running.stop()
    assert "Traceback" not in running.log, running.log
    where = json.loads(subprocess.run(
        [str(python), "-c", "import fastapi, uvicorn, json; print(json.dumps([fastapi.__file__, uvicorn.__file__]))"],
        capture_output=True, text=True, check=True).stdout)
    assert all(Path(f).is_relative_to(own) for f in where)      # in the venv, not in the chat env
    # the next start has nothing to install
    again = subprocess.run([sys.executable, "-m", "provisioner", "serve", str(TINY), "--env", str(prefix),
                            "--dry-run"], capture_output=True, text=True, timeout=120)
    assert "Install:     nothing (the extra is installed)" in again.stdout, again.stderr
