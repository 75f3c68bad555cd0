"""`env remove` and `env export`: only what provision built, never a foreign directory."""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner import proc
from provisioner.env import lock as lockmod
from provisioner.env.backends import Location, Progress, Step, VenvBackend, step_environ
from provisioner.env.create import EnvResult, apply_create, delete_prefix
from provisioner.env.plan import CreatePlan, remove_step
from provisioner.env.record import (RECORD_NAME, env_status, is_building_now, read_record, read_registry,
                                    registry_path, resolve_env, update_registry)
from provisioner.errors import CommandError, ProvisionError


@dataclass(frozen=True)
class RemovePlan:
    prefix: Path
    record: Mapping[str, Any] | None
    steps: tuple[Step, ...]

    def describe(self) -> str:
        what = f"profile {self.record.get('profile')}" if self.record else "half-built"
        lines = [f"Remove {self.prefix} ({what}):"]
        lines += [f"  {i}. {s.title}: {s.shown()}" for i, s in enumerate(self.steps, 1)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": str(self.prefix), "profile": (self.record or {}).get("profile"),
                "steps": [s.to_dict() for s in self.steps]}


def plan_remove(target: str | None, environ: Mapping[str, str]) -> RemovePlan:
    """Only environments provision created (a record inside, or a registry entry) are removed."""
    prefix = resolve_env(target, environ)
    record = read_record(prefix)
    registered = str(prefix) in read_registry(environ)
    if record is None and not registered:
        if not prefix.exists():
            raise ProvisionError(f"no environment at {prefix}",
                                 hint="`provision env list` shows the environments provision created")
        raise ProvisionError(
            f"{prefix} was not created by provision (no {RECORD_NAME} in it); not removing it",
            hint="provision only removes environments it built; delete this one yourself if you "
                 "are sure")
    if is_building_now(prefix, environ):
        raise ProvisionError(f"{prefix} is being built right now", hint="wait for it to finish")
    location = Location(prefix, prefix.name)
    steps = []
    if prefix.exists():
        steps.append(remove_step(location, record, VenvBackend(Path(sys.executable)), environ))
    steps.append(Step("unregister", "forget it", (), detail=f"drop it from {registry_path(environ)}"))
    return RemovePlan(prefix, record, tuple(steps))


def apply_remove(plan: RemovePlan, *, environ: Mapping[str, str]) -> None:
    env = step_environ(environ)
    for step in plan.steps:
        if step.key == "remove":
            if step.argv:
                try:
                    proc.run(step.argv, env=env, timeout=step.timeout)
                except CommandError as e:
                    raise ProvisionError(f"{step.title} failed: {e.message}",
                                         hint=f"run `{step.shown()}` by hand to see why") from None
            delete_prefix(plan.prefix)
        elif step.key == "unregister":
            update_registry(environ, plan.prefix, None)


def apply(plan: CreatePlan | RemovePlan, *, environ: Mapping[str, str],
          progress: Progress | None = None) -> EnvResult | None:
    """Run a create or remove plan."""
    if isinstance(plan, RemovePlan):
        apply_remove(plan, environ=environ)
        return None
    return apply_create(plan, environ=environ, progress=progress)


def export_lock(target: str | None, environ: Mapping[str, str]) -> tuple[Path, dict[str, Any]]:
    """The lock of a complete environment (NAME or PATH): its path and document."""
    prefix = resolve_env(target, environ)
    path = prefix / lockmod.LOCK_NAME
    st = env_status(prefix, environ)
    if not path.is_file():
        if st is None:
            raise ProvisionError(f"no environment created by provision at {prefix}",
                                 hint="`provision env list` shows them; create one with "
                                      "`provision env create`")
        raise ProvisionError(f"{prefix} has no lock ({st})",
                             hint="a lock is written when `provision env create` completes; "
                                  "re-run it with --force")
    lockmod.read(path)    # refuse to export something that cannot be read back
    return path, json.loads(path.read_text())
