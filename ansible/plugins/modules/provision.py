#!/usr/bin/python
"""Ansible module `provision`: run the provision CLI on a host and return its own --json documents.

Self-contained (Ansible copies this one file to the host): it imports nothing of provisioner, and
talks to the tool only through its command line and the JSON documents it prints.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: provision
short_description: Verify or provision an NVIDIA GPU host with the provision CLI
description:
  - Runs C(provision) on the host (C(verify), C(cuda switch), C(env create) or C(up)) with C(--json)
    and returns the tool's own JSON documents.
  - C(changed) is true only when the host really changed (or, in check mode, would change), that is
    when the C(/usr/local/cuda) link was switched, an environment was built, or C(up) did work.
  - Check mode runs the tool with C(--dry-run); diff mode shows the link target and the
    environment lock before and after.
  - A failure is the tool's own error and hint (C(error.message), C(error.hint)), never a traceback.
version_added: "1.0.0"
options:
  state:
    description:
      - C(verified) runs C(provision verify) (after switching the link to I(cuda) when given) and
        fails the host when a check fails.
      - C(env_present) builds the environment (C(provision env create)), or confirms it is up to date.
      - C(up) runs the whole walkthrough (C(provision up --yes)).
    type: str
    choices: [verified, env_present, up]
    default: verified
  executable:
    description:
      - The C(provision) command (a name on PATH or a path). Default C(provision) on PATH, then beside
        the module's interpreter, then C(python -m provisioner) with the module's interpreter.
    type: str
  python:
    description: An interpreter that runs the tool as C(python -m provisioner) (instead of I(executable)).
    type: path
  root:
    description: Filesystem root under which system paths are used (C(provision --root)).
    type: path
  profile:
    description: Profile name (C(auto) chooses from the host).
    type: str
  cuda:
    description:
      - C(verified) points C(/usr/local/cuda) at this installed toolkit first (C(provision cuda switch));
        C(env_present) and C(up) pick the profile of this CUDA line.
    type: str
  env:
    description:
      - The environment, a name or a prefix (a value with a C(/) is a prefix). C(verified) checks it,
        C(env_present) and C(up) build it.
    type: str
  model:
    description: C(up) only. A local folder, hub id or built-in name.
    type: str
  bundle:
    description: Path on the host of a bundle made by C(provision bundle create) (offline install).
    type: path
  backend:
    description: conda, mamba, micromamba or venv (auto chooses).
    type: str
    choices: [auto, conda, mamba, micromamba, venv]
  installer:
    description: C(env_present) only. pip or uv (auto chooses).
    type: str
    choices: [auto, pip, uv]
  python_version:
    description: Python X.Y for the environment.
    type: str
  torch:
    description: Override the profile's torch version.
    type: str
  index_url:
    description: Where torch wheels come from.
    type: str
  extra_index_url:
    description: Another package index.
    type: str
  find_links:
    description: A local folder of wheels.
    type: str
  allow_insecure_index:
    description: Accept http:// index URLs.
    type: bool
    default: false
  force:
    description: C(env_present) only. Replace an environment built from another profile, or left half-built.
    type: bool
    default: false
  quant:
    description: C(up) only. Precision of the smoke chat.
    type: str
    choices: [auto, nf4, int8, none]
  context:
    description: C(up) only. Context tokens to plan for.
    type: int
  endpoint:
    description: C(up) only. Hub endpoint (a mirror URL).
    type: str
  mirror:
    description: C(up) only. A known hub mirror by name.
    type: str
  local_dir:
    description: C(up) only. Download the model here.
    type: path
  gpu_memory:
    description: C(up) only. GiB the model may use, or auto.
    type: str
  prompt:
    description: C(up) only. The smoke-test prompt.
    type: str
  max_new_tokens:
    description: C(up) only. Length of the smoke-test reply.
    type: int
notes:
  - Set per-host variables of the tool (C(PROVISION_*), C(HF_ENDPOINT), C(XDG_*)) with the task's
    C(environment) keyword.
author: provision contributors
"""

EXAMPLES = r"""
- name: Point /usr/local/cuda at 12.6 and verify the host
  provisioner.gpu.provision:
    state: verified
    cuda: "12.6"

- name: Build the environment of profile cu126
  provisioner.gpu.provision:
    state: env_present
    profile: cu126
    env: llm

- name: The whole walkthrough, offline, from a bundle
  provisioner.gpu.provision:
    state: up
    bundle: /var/tmp/provision/bundle.tar
"""

RETURN = r"""
document:
  description: The main command's own --json document (verify, env create, or up).
  returned: when the tool printed one
  type: dict
verify:
  description: The C(provision verify --json) document of the host after the action (its checks).
  returned: when verify ran
  type: dict
cuda:
  description: The C(provision cuda switch --json) document (C(verified) with I(cuda)).
  returned: when I(cuda) is given with state C(verified)
  type: dict
error:
  description: The tool's error, C({message, hint, exit_code}).
  returned: failure
  type: dict
commands:
  description: Each command line the module ran.
  returned: always
  type: list
  elements: str
"""

#: up / env create options: module option -> CLI flag (values), and flags (booleans).
SHARED_VALUES = (("backend", "--backend"), ("python_version", "--python"), ("torch", "--torch"),
                 ("index_url", "--index-url"), ("find_links", "--find-links"))
UP_VALUES = (("model", "--model"), ("quant", "--quant"), ("context", "--context"), ("endpoint", "--endpoint"),
             ("mirror", "--mirror"), ("local_dir", "--local-dir"), ("gpu_memory", "--gpu-memory"),
             ("prompt", "--prompt"), ("max_new_tokens", "--max-new-tokens"),
             ("extra_index_url", "--extra-index-url"))
ENV_VALUES = (("installer", "--installer"), ("extra_index_url", "--extra-index-url"))
LINK = "/usr/local/cuda"


class ToolFailed(Exception):
    """The tool stopped with an error document (or with none): the host fails with its message."""

    def __init__(self, message: str, hint: Optional[str], exit_code: Optional[int], extra: dict[str, Any]) -> None:
        super().__init__(message)
        self.message, self.hint, self.exit_code, self.extra = message, hint, exit_code, extra


class Tool:
    """The provision command on this host: runs it with --json and parses the one document."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.base = self._command()
        root = module.params["root"]
        self.globals = ["--root", root] if root else []
        self.commands: list[str] = []

    def _command(self) -> list[str]:
        p = self.module.params
        if p["python"]:
            return [p["python"], "-m", "provisioner"]
        if p["executable"]:
            found = self.module.get_bin_path(p["executable"]) if "/" not in p["executable"] else p["executable"]
            if not found or not os.access(found, os.X_OK):
                raise ToolFailed(f"provision executable {p['executable']} not found on the host",
                                 "install the tool (role provisioner.gpu.provision) or set `executable`", None, {})
            return [found]
        beside = os.path.join(os.path.dirname(sys.executable), "provision")
        found = shutil.which("provision") or (beside if os.access(beside, os.X_OK) else None)
        if found:
            return [found]
        rc, _, _ = self.module.run_command([sys.executable, "-c", "import provisioner"])
        if rc == 0:
            return [sys.executable, "-m", "provisioner"]
        raise ToolFailed("provision is not installed on the host (not on PATH, not importable by "
                         f"{sys.executable})",
                         "install it with the role provisioner.gpu.provision, or set `executable` or `python`",
                         None, {})

    def run(self, args: list[str], *, ok_codes: tuple[int, ...] = (0,)) -> tuple[int, dict[str, Any]]:
        """(exit code, document); a tool error (or no document) raises ToolFailed."""
        argv = [*self.base, *self.globals, *args]
        self.commands.append(shlex.join(argv))
        rc, out, err = self.module.run_command(argv, environ_update={"NO_COLOR": "1"})
        doc = _parse(out)
        if doc is None:
            tail = "\n".join((err or "").strip().splitlines()[-20:])
            raise ToolFailed(f"`{shlex.join(argv)}` exited {rc} without a JSON document"
                             + (f": {tail}" if tail else ""), None, rc, {"stderr": err, "stdout": out})
        error = doc.get("error")
        if rc not in ok_codes or (isinstance(error, dict) and doc.get("ok") is False):
            if isinstance(error, dict):
                raise ToolFailed(str(error.get("message") or "provision failed"), error.get("hint"),
                                 error.get("exit_code", rc), {"document": doc, "stderr": err})
            if "checks" not in doc:
                raise ToolFailed(f"`{shlex.join(argv)}` exited {rc}", None, rc, {"document": doc, "stderr": err})
        return rc, doc


def _parse(out: str) -> Optional[dict[str, Any]]:
    text = (out or "").strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        start = text.find("{")          # a human line before the document (never expected under --json)
        try:
            doc = json.loads(text[start:]) if start > 0 else None
        except ValueError:
            return None
    return doc if isinstance(doc, dict) else None


def _env_args(env: Optional[str]) -> list[str]:
    if not env:
        return []
    return ["--prefix", env] if "/" in env else ["--name", env]


def _values(p: dict[str, Any], table: tuple[tuple[str, str], ...]) -> list[str]:
    out: list[str] = []
    for key, flag in table:
        if p.get(key) is not None:
            out += [flag, str(p[key])]
    return out


def _named(p: dict[str, Any]) -> list[str]:
    """What `up` and `env create` take alike: --profile, --cuda, --bundle (when set), --allow-insecure-index."""
    out: list[str] = []
    for key in ("profile", "cuda", "bundle"):
        if p[key]:
            out += [f"--{key}", p[key]]
    return out + (["--allow-insecure-index"] if p["allow_insecure_index"] else [])


def _diff(header: str, before: str, after: str) -> dict[str, str]:
    """One entry of the module's `diff` (Ansible's before/after form)."""
    return {"before_header": header, "after_header": header, "before": before, "after": after}


def _link_line(link: Any) -> str:
    if not isinstance(link, dict):
        return "unknown\n"
    state = link.get("state")
    if state == "missing":
        return f"{LINK} does not exist\n"
    if state == "directory":
        return f"{LINK} is a real directory\n"
    return f"{LINK} -> {link.get('raw_target') or link.get('target') or '?'}\n"


def _failed_checks(doc: dict[str, Any]) -> str:
    failed = [c for c in doc.get("checks") or [] if isinstance(c, dict) and c.get("status") == "fail"]
    parts = [f"{c.get('id')}: {c.get('message')}" + (f" (fix: {c['fix']})" if c.get("fix") else "")
             for c in failed]
    return f"{len(failed)} check(s) failed: " + "; ".join(parts)


def _lock(tool: Tool, env: Optional[str]) -> Optional[str]:
    """The environment's lock as text (for --diff), or None when there is none yet."""
    try:
        _, doc = tool.run(["env", "export", *([env] if env else [])])
    except ToolFailed:
        return None
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


class Run:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.p = module.params
        self.check = module.check_mode
        self.result: dict[str, Any] = {"changed": False, "state": self.p["state"]}
        self.diffs: list[dict[str, str]] = []
        self.tool: Optional[Tool] = None

    def main(self) -> None:
        try:
            self.tool = Tool(self.module)
            getattr(self, self.p["state"])(self.tool)
        except ToolFailed as e:
            self.fail(e)
        self.finish()

    # ------------------------------------------------------------------ states

    def verified(self, tool: Tool) -> None:
        if self.p["cuda"]:
            self.switch(tool)
        self.verify(tool, self.p["env"])
        doc = self.result["verify"]
        self.result["document"] = doc
        if not doc.get("ok", False):
            self.result["failed"] = True
            self.result["msg"] = _failed_checks(doc)

    def switch(self, tool: Tool) -> None:
        _, plan = tool.run(["cuda", "switch", self.p["cuda"], "--dry-run", "--json"])
        self.result["cuda"] = plan
        if plan.get("unchanged"):
            return
        self.result["changed"] = True
        target = plan.get("link_text") or (plan.get("toolkit") or {}).get("path")
        self.diffs.append(_diff(f"{LINK} (root {self.p['root'] or '/'})", _link_line(plan.get("current")),
                                f"{LINK} -> {target}\n"))
        if not self.check:
            _, doc = tool.run(["cuda", "switch", self.p["cuda"], "--json"])
            self.result["cuda"] = doc

    def env_present(self, tool: Tool) -> None:
        p = self.p
        before = _lock(tool, p["env"]) if self.module._diff else None
        args = ["env", "create", "--json", *_env_args(p["env"]), *_values(p, SHARED_VALUES), *_values(p, ENV_VALUES),
                *_named(p), *(["--force"] if p["force"] else [])]
        if self.check:
            _, doc = tool.run([*args, "--dry-run"])
            self.result["changed"] = (doc.get("plan") or {}).get("action") != "up-to-date"
        else:
            _, doc = tool.run(args)
            self.result["changed"] = doc.get("status") != "up-to-date"
        self.result["document"] = doc
        prefix = doc.get("prefix") or (doc.get("plan") or {}).get("prefix")
        if self.result["changed"] and self.module._diff:
            after = (_lock(tool, prefix) if not self.check else None) or "(the lock of the new build)\n"
            self.diffs.append(_diff("environment lock", before or "", after))
        self.verify(tool, prefix if prefix and not self.check else p["env"], quiet=True)

    def up(self, tool: Tool) -> None:
        p = self.p
        link_before = self.link(tool) if self.module._diff else None
        args = ["up", "--yes", "--json", *_env_args(p["env"]), *_values(p, SHARED_VALUES), *_values(p, UP_VALUES),
                *_named(p)]
        if self.check:
            _, doc = tool.run([*args, "--dry-run"])
            self.result["changed"] = any(isinstance(s, dict) and s.get("status") == "todo"
                                         for s in doc.get("plan") or [])
        else:
            _, doc = tool.run(args)
            self.result["changed"] = bool(doc.get("did_work"))
        self.result["document"] = doc
        if self.module._diff and not self.check:
            link_after = self.link(tool)
            if link_before != link_after:
                self.diffs.append(_diff(LINK, link_before or "", link_after or ""))
        env = (doc.get("summary") or {}).get("environment") if not self.check else None
        self.verify(tool, env if isinstance(env, str) and env.startswith("/") else p["env"], quiet=True)

    # ------------------------------------------------------------------ helpers

    def link(self, tool: Tool) -> Optional[str]:
        try:
            _, doc = tool.run(["cuda", "current", "--json"], ok_codes=(0, 1))
        except ToolFailed:
            return None
        return _link_line(doc.get("link"))

    def verify(self, tool: Tool, env: Optional[str], *, quiet: bool = False) -> None:
        """The host's checks after the action, for the fleet report. After env_present / up a failure
        here is recorded, not raised: the action itself succeeded."""
        args = ["verify", "--json", *(["--env", env] if env else [])]
        args += ["--profile", self.p["profile"]] if self.p["profile"] and self.p["profile"] != "auto" else []
        try:
            _, doc = tool.run(args, ok_codes=(0, 1))
        except ToolFailed as e:
            if not quiet:
                raise
            doc = {"version": 1, "ok": False, "error": {"message": e.message, "hint": e.hint,
                                                         "exit_code": e.exit_code}}
        self.result["verify"] = doc

    def fail(self, e: ToolFailed) -> None:
        """The tool's own error and hint; and, where the tool still runs, the host's checks (best effort)."""
        self.result.update(e.extra)
        self.result["error"] = {"message": e.message, "hint": e.hint, "exit_code": e.exit_code}
        self.result["failed"] = True
        self.result["msg"] = f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else "")
        if self.tool is not None and "verify" not in self.result:
            try:
                self.verify(self.tool, self.p["env"] if self.p["state"] == "verified" else None, quiet=True)
            except ToolFailed:
                pass

    def finish(self) -> None:
        if self.tool is not None:
            self.result["commands"] = self.tool.commands
        if self.diffs and self.module._diff:
            self.result["diff"] = self.diffs if len(self.diffs) > 1 else self.diffs[0]
        if self.result.get("failed"):
            self.result.pop("failed")
            self.module.fail_json(**self.result)
        self.module.exit_json(**self.result)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["verified", "env_present", "up"], "default": "verified"},
            "executable": {"type": "str"},
            "python": {"type": "path"},
            "root": {"type": "path"},
            "profile": {"type": "str"},
            "cuda": {"type": "str"},
            "env": {"type": "str"},
            "model": {"type": "str"},
            "bundle": {"type": "path"},
            "backend": {"type": "str", "choices": ["auto", "conda", "mamba", "micromamba", "venv"]},
            "installer": {"type": "str", "choices": ["auto", "pip", "uv"]},
            "python_version": {"type": "str"},
            "torch": {"type": "str"},
            "index_url": {"type": "str"},
            "extra_index_url": {"type": "str"},
            "find_links": {"type": "str"},
            "allow_insecure_index": {"type": "bool", "default": False},
            "force": {"type": "bool", "default": False},
            "quant": {"type": "str", "choices": ["auto", "nf4", "int8", "none"]},
            "context": {"type": "int"},
            "endpoint": {"type": "str"},
            "mirror": {"type": "str"},
            "local_dir": {"type": "path"},
            "gpu_memory": {"type": "str"},
            "prompt": {"type": "str"},
            "max_new_tokens": {"type": "int"},
        },
        mutually_exclusive=[("executable", "python"), ("endpoint", "mirror")],
        supports_check_mode=True,
    )
    Run(module).main()


if __name__ == "__main__":
    main()
