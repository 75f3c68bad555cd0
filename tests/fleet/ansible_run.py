"""Running the real ansible-core against the collection in ansible/: install it, write a config, run, read the recap."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "ansible"
BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
                   r"\s+ignored=(?P<ignored>\d+)", re.M)


def missing() -> str | None:
    """Why the Ansible tests cannot run (None: they can)."""
    for tool in ("ansible-playbook", "ansible-galaxy", "ansible"):
        if not (BIN / tool).exists():
            return f"{tool} is not installed beside {sys.executable}: pip install -e '.[test]' (ansible-core)"
    return None


@dataclass(frozen=True)
class Played:
    returncode: int
    output: str
    recap: dict[str, dict[str, int]]       # host -> ok / changed / unreachable / failed / ...


class Ansible:
    """One controller: the collection installed into `base`, its own config, temp dirs and HOME."""

    def __init__(self, base: Path, *, forks: int = 3, key: Path | None = None) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.collections = base / "collections"
        done = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--force", str(COLLECTION),
                               "-p", str(self.collections)], capture_output=True, text=True, env=self.environ())
        assert done.returncode == 0, done.stdout + done.stderr
        # ControlMaster off: every task opens its own connection, so a host cut mid-run fails its next
        # task at once instead of reusing a connection that still hangs.
        (base / "ansible.cfg").write_text("\n".join([
            "[defaults]",
            f"forks = {forks}",
            "host_key_checking = False",
            f"collections_path = {self.collections}",
            f"remote_tmp = {base / 'remote-tmp'}",
            f"local_tmp = {base / 'local-tmp'}",
            "timeout = 10",
            "retry_files_enabled = False",
            "interpreter_python = auto_silent",
            "[ssh_connection]",
            "pipelining = True",
            "ssh_args = -o ControlMaster=no -o ControlPersist=no -o UserKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=no -o LogLevel=ERROR -o ConnectionAttempts=1",
            "",
        ]))

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"ANSIBLE_CONFIG": str(self.base / "ansible.cfg"), "ANSIBLE_HOME": str(self.base / "home"),
                    "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1",
                    "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PWD": str(self.base)})
        return env

    def playbook(self, playbook: str | Path, inventory: Path | str, *args: str,
                 extra: Mapping[str, object] | None = None) -> Played:
        extra_args = ["-e", json.dumps(dict(extra))] if extra else []
        done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *extra_args, *args],
                              capture_output=True, text=True, env=self.environ(), cwd=self.base, timeout=600)
        output = done.stdout + done.stderr
        recap = {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
                 for m in RECAP.finditer(done.stdout)}
        return Played(done.returncode, output, recap)

    def module(self, args: Mapping[str, object], *flags: str,
               environ: Mapping[str, str] | None = None) -> tuple[Played, dict[str, Any]]:
        """The module once on localhost (local connection, no SSH), and its registered result as Ansible
        recorded it (saved to a file by a second task, as the role saves it)."""
        saved = self.base / "result.json"
        saved.unlink(missing_ok=True)
        play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
                 "vars": {"ansible_python_interpreter": sys.executable},
                 "tasks": [{"name": "provision", "provisioner.gpu.provision": dict(args), "register": "r",
                            "ignore_errors": True, "environment": dict(environ or {})},
                           {"name": "save", "ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(saved)},
                            "check_mode": False}]}]
        playbook = self.base / "module.yml"
        playbook.write_text(json.dumps(play))
        played = self.playbook(playbook, "localhost,", *flags)
        assert saved.exists(), played.output
        result: dict[str, Any] = json.loads(saved.read_text())
        return played, result


def write_inventory(path: Path, hosts: Sequence[Mapping[str, object]], group_vars: Mapping[str, object]) -> Path:
    """An inventory in JSON (YAML is a superset): each host's vars, and vars for all."""
    doc = {"all": {"vars": dict(group_vars), "hosts": {str(h["name"]): {k: v for k, v in h.items() if k != "name"}
                                                      for h in hosts}}}
    path.write_text(json.dumps(doc, indent=2))
    return path
