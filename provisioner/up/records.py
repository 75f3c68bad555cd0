"""Per-stage results in $XDG_STATE_HOME/provision/up.json, so a rerun resumes where the last stopped."""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from provisioner import state

STATE_FILE = "up.json"


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:16]


class Records:
    """Per-stage results in $XDG_STATE_HOME/provision/up.json, written after every stage."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        doc = state.read(environ, STATE_FILE)
        # A damaged record (edited by hand, another version's) only costs a re-run of the stages.
        stages = doc.get("stages") if isinstance(doc, dict) else None
        self.stages: dict[str, dict[str, Any]] = (
            {k: v for k, v in stages.items() if isinstance(v, dict)} if isinstance(stages, dict) else {})

    def get(self, name: str, inputs: str) -> dict[str, Any] | None:
        rec = self.stages.get(name)
        if rec and rec.get("status") == "done" and rec.get("inputs") == inputs:
            return dict(rec.get("result") or {})
        return None

    def done(self, name: str, inputs: str, result: Mapping[str, Any]) -> None:
        self.stages[name] = {"status": "done", "inputs": inputs, "result": dict(result),
                             "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def failed(self, name: str, inputs: str, message: str) -> None:
        self.stages[name] = {"status": "failed", "inputs": inputs, "message": message,
                             "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def save(self) -> None:
        state.write(self.environ, STATE_FILE, {"version": 1, "stages": self.stages})


def last_setup(environ: Mapping[str, str]) -> dict[str, str]:
    """What the last successful `up` set up: {"env": prefix, "model": ..., "quant": ...} (keys absent
    when unknown), so `provision chat` with no arguments talks to it."""
    stages = Records(environ).stages
    out: dict[str, str] = {}
    env = (stages.get("env") or {}).get("result") or {}
    smoke = (stages.get("smoke") or {}).get("result") or {}
    if stages.get("env", {}).get("status") == "done" and env.get("prefix"):
        out["env"] = str(env["prefix"])
    if stages.get("smoke", {}).get("status") == "done":
        for key in ("model", "quant"):
            if smoke.get(key):
                out[key] = str(smoke[key])
    return out
