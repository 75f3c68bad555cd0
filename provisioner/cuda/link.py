"""The /usr/local/cuda link: read it, switch it atomically under a lock (through update-alternatives where
that manages it), roll it back."""
from __future__ import annotations

import datetime
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import fsio
from provisioner.cuda.toolkit import (LINK, LOCAL, Toolkit, command_line, find_toolkit, inside, nvcc_version,
                                      read_toolkit, resolve_under, system_path, toolkits, writable)
from provisioner.errors import CommandError, PermissionDenied, ProvisionError
from provisioner.paths import under_root
from provisioner.system import alternatives
from provisioner.versions import CudaVersion

#: The switch lock and the rollback record: system state, so under the root, not in a HOME.
STATE_DIR = "/var/lib/provision"
LOCK_NAME = "cuda-switch.lock"
RECORD_NAME = "cuda-switch.json"
#: Prefix of the temporary link (fsio.atomic_symlink's) renamed over `cuda`; a crashed switch leaves
#: nothing else behind.
NEW_LINK_PREFIX = "cuda.new-"


LINK_STATES = ("ok", "dangling", "missing", "directory", "not-a-link-file")


@dataclass(frozen=True)
class LinkState:
    """What `<root>/usr/local/cuda` is, read under root."""

    path: Path                    # <root>/usr/local/cuda
    state: str                    # one of LINK_STATES
    raw_target: str | None        # os.readlink text of the link itself
    target: Path | None           # the final target with every link followed under root
    toolkit: Toolkit | None       # the toolkit it points at (or, for "directory", the directory itself)
    root: Path = field(default=Path("/"), compare=False, repr=False)
    alternative: str | None = None   # the update-alternatives group that manages the link ("cuda"), if any

    @property
    def target_system(self) -> str | None:
        return system_path(self.root, self.target) if self.target is not None else None

    @property
    def chain(self) -> str:
        """`/etc/alternatives/cuda => /usr/local/cuda-12.6`: the link text, then where it ends."""
        chain = self.raw_target or ""
        if self.target_system and self.target_system != self.raw_target:
            chain += f" => {self.target_system}"
        return chain

    @property
    def managed_by(self) -> str | None:
        return f"update-alternatives as '{self.alternative}'" if self.alternative else None

    def describe(self) -> str:
        """`/usr/local/cuda -> /usr/local/cuda-12.6 (ok)` and friends."""
        if self.state == "missing":
            return f"{LINK} does not exist"
        if self.state == "directory":
            return f"{LINK} is a real directory, not a link"
        if self.state == "not-a-link-file":
            return f"{LINK} is a file, not a link"
        managed = f", managed by {self.managed_by}" if self.managed_by else ""
        return f"{LINK} -> {self.chain} ({self.state}{managed})"

    def to_dict(self) -> dict[str, Any]:
        return {"path": LINK, "state": self.state, "raw_target": self.raw_target,
                "target": self.target_system,
                "toolkit": self.toolkit.to_dict() if self.toolkit else None,
                "managed_by": alternatives.TOOL if self.alternative else None,
                "alternative": self.alternative}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinkState:
        target, tk, alt = d.get("target"), d.get("toolkit"), d.get("alternative")
        return cls(Path(LINK), str(d.get("state") or "missing"), d.get("raw_target"),
                   Path(str(target)) if target else None,
                   Toolkit.from_dict(tk) if isinstance(tk, Mapping) else None,
                   alternative=str(alt) if alt else None)


def read_link(root: Path, environ: Mapping[str, str],
              installed: Sequence[Toolkit] | None = None) -> LinkState:
    """Read `<root>/usr/local/cuda` without leaving root (never Path.resolve).

    A toolkit already read (`installed`, from toolkits()) is reused, so its nvcc runs only once.
    """
    def toolkit_at(path: Path) -> Toolkit:
        for t in installed or ():
            if inside(root, t.path) == path:
                return t
        return read_toolkit(path, root, environ)

    link = under_root(root, LINK)
    if not os.path.lexists(link):
        return LinkState(link, "missing", None, None, None, root)
    if link.is_symlink():
        raw = os.readlink(link)
        alt = alternatives.managed_name(root, LINK)
        final = resolve_under(root, LINK)
        if final is None:
            return LinkState(link, "dangling", raw, None, None, root, alt)
        target = under_root(root, final)
        if target.is_dir():
            return LinkState(link, "ok", raw, target, toolkit_at(target), root, alt)
        return LinkState(link, "dangling", raw, target, None, root, alt)
    if link.is_dir():
        return LinkState(link, "directory", None, link, read_toolkit(link, root, environ), root)
    return LinkState(link, "not-a-link-file", None, None, None, root)


def cuda_entries(root: Path) -> tuple[str, ...]:
    local = under_root(root, LOCAL)
    return tuple(sorted(e.name for e in local.glob("cuda-*"))) if local.is_dir() else ()


def move_aside_hint(entries: Sequence[str], state: LinkState, then: str) -> str:
    tk = state.toolkit
    if tk is not None and tk.version is not None:
        name = f"cuda-{tk.version.short}"
        dest = f"{LOCAL}/{name}"
        note = f" (its toolkit reports CUDA {tk.version}, by {tk.version_source})"
        if name in entries:
            dest += ".orig"  # cuda-X.Y is taken; a suffix keeps both
    else:
        dest = f"{LOCAL}/cuda-X.Y"
        note = " (its version could not be read: put the right X.Y in the name)"
    return (f"provision never deletes it. Move it aside so it becomes a versioned toolkit{note}: "
            f"`sudo mv {LINK} {dest}`, then `{then}`")


def _install_hint(version: CudaVersion, root: Path) -> str:
    if version.major >= 13:
        return f"install it with `{command_line(root, f'cuda install {version.short}')}`"
    from provisioner.system import distro

    steps = distro.cuda_repository_steps(version, root) + f"; then `{command_line(root, f'cuda switch {version.short}')}`"
    return f"install it from NVIDIA's CUDA repository: {steps}"


@dataclass(frozen=True)
class Alternative:
    """How a switch goes through update-alternatives: the group, the path to set, whether to register it."""

    name: str                     # "cuda"
    path: str                     # the toolkit's system path, "/usr/local/cuda-12.6"
    registered: bool              # False: `--install` it first (with NVIDIA's priority)
    priority: int

    def commands(self, root: Path) -> list[list[str]]:
        return alternatives.set_commands(root, LINK, self.name, self.path, self.priority, self.registered)


@dataclass(frozen=True)
class SwitchPlan:
    """Point `<root>/usr/local/cuda` at `toolkit` (a switch, or the rollback to a recorded target)."""

    root: Path
    environ: Mapping[str, str] = field(repr=False, compare=False)
    action: str                   # "switch" | "rollback"
    version: CudaVersion          # what the new link's nvcc must report
    toolkit: Toolkit
    link_text: str                # written into the link: "cuda-12.6", the recorded raw target, or
                                  # (through update-alternatives) the toolkit's system path
    current: LinkState
    unchanged: bool               # the link already points there
    via: Alternative | None = None   # set: update-alternatives manages the link and makes the switch
    note: str | None = None       # why a link through /etc/alternatives becomes a direct one

    @property
    def link(self) -> Path:
        return under_root(self.root, LINK)

    @property
    def lock_path(self) -> Path:
        return under_root(self.root, STATE_DIR) / LOCK_NAME

    @property
    def record_path(self) -> Path:
        return under_root(self.root, STATE_DIR) / RECORD_NAME

    @property
    def commands(self) -> list[list[str]]:
        """The update-alternatives commands the switch runs (none for a plain link)."""
        return self.via.commands(self.root) if self.via is not None and not self.unchanged else []

    def describe(self) -> str:
        what = "Roll back" if self.action == "rollback" else "Switch"
        lines = [f"{what} {LINK} to {self.toolkit.label}:",
                 f"  now:  {self.current.describe()}"
                 + (f", {self.current.toolkit.label}" if self.current.toolkit and
                    self.current.state == "ok" else "")]
        if self.unchanged:
            lines.append(f"  {LINK} already points at {self.toolkit.system_path}: nothing to change")
            lines.append(f"  1. check that {LINK}/bin/nvcc --version reports {self.version}")
            return "\n".join(lines)
        if self.note:
            lines.append(f"  note: {self.note}")
        steps = [f"lock {STATE_DIR}/{LOCK_NAME} (one switch at a time)",
                 f"record the current target in {STATE_DIR}/{RECORD_NAME} (for `provision cuda rollback`)"]
        if self.via is not None:
            for argv in self.commands:
                why = (f"register it in the '{self.via.name}' group" if "--install" in argv
                       else "it renames a new link over /etc/alternatives/" + self.via.name)
                steps.append(f"{shlex.join(argv)}  ({why})")
        else:
            steps.append(f"create {LINK}.new-<pid> -> {self.link_text} and rename it over {LINK} (atomic)")
        steps.append(f"check that {LINK}/bin/nvcc --version reports {self.version}")
        lines += [f"  {n}. {step}" for n, step in enumerate(steps, 1)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "cuda_version": str(self.version), "link_path": LINK,
                "link_text": self.link_text, "toolkit": self.toolkit.to_dict(),
                "current": self.current.to_dict(), "unchanged": self.unchanged,
                "via": alternatives.TOOL if self.via is not None else "link",
                "commands": self.commands}


def _refuse_unswitchable(root: Path, state: LinkState, then: str) -> None:
    if state.state == "directory":
        found = (f" holding CUDA {state.toolkit.version}" if state.toolkit and state.toolkit.version
                 else "")
        raise ProvisionError(f"{LINK} is a real directory{found}, not a link; nothing was changed",
                             hint=move_aside_hint(cuda_entries(root), state, then))
    if state.state == "not-a-link-file":
        raise ProvisionError(f"{LINK} is a regular file, not a link; nothing was changed",
                             hint=f"look at it and remove it yourself (`sudo rm {LINK}`), then `{then}`")


def _require_permission(root: Path, args: str, via: Alternative | None) -> None:
    changed = (alternatives.ALTDIR, alternatives.ADMINDIR) if via is not None else (LOCAL,)
    for directory in (*(under_root(root, d) for d in changed), under_root(root, STATE_DIR)):
        if not writable(directory):
            raise PermissionDenied(
                f"cannot change {LINK}: {system_path(root, directory)} is not writable by this user",
                hint=f"re-run with sudo: `sudo {command_line(root, args)}`")


def _through(root: Path, environ: Mapping[str, str], current: LinkState,
             toolkit: Toolkit) -> tuple[Alternative | None, str | None]:
    """How to change the link: through update-alternatives when it manages it (and is on PATH)."""
    if current.alternative is None:
        if current.raw_target and current.raw_target.startswith(alternatives.ALTDIR + "/"):
            return None, (f"the link goes through {alternatives.ALTDIR}, but update-alternatives does not "
                          "manage it; it becomes a direct link")
        return None, None
    if not alternatives.on_path(environ):
        return None, (f"update-alternatives manages the link, but {alternatives.TOOL} is not on PATH; "
                      "it becomes a direct link")
    group = alternatives.query(current.alternative, root, environ)
    assert toolkit.version is not None
    return Alternative(current.alternative, toolkit.system_path, toolkit.system_path in group.alternatives,
                       alternatives.priority(toolkit.version)), None


def _plan(root: Path, environ: Mapping[str, str], action: str, version: CudaVersion,
          toolkit: Toolkit, link_text: str, current: LinkState, args: str) -> SwitchPlan:
    unchanged = (current.state == "ok" and current.target is not None
                 and current.target == inside(root, toolkit.path))
    via, note = _through(root, environ, current, toolkit)
    if via is not None:
        link_text = via.path
    if not unchanged:
        _require_permission(root, args, via)
    return SwitchPlan(root, environ, action, version, toolkit, link_text, current, unchanged, via, note)


def plan_switch(version: CudaVersion, root: Path, environ: Mapping[str, str]) -> SwitchPlan:
    """Plan pointing /usr/local/cuda at the installed toolkit `version`; refuse (changing nothing) when
    it is not installed, incomplete, the link is a real directory, or this user may not change it."""
    args = f"cuda switch {version}"
    current = read_link(root, environ)
    _refuse_unswitchable(root, current, command_line(root, args))
    installed = toolkits(root, environ)
    toolkit = find_toolkit(version, root, environ, installed)
    if toolkit is None:
        have = ", ".join(f"{t.version or '?'} ({t.name})" for t in installed) or "none"
        raise ProvisionError(f"CUDA {version} is not installed under {LOCAL} (installed: {have})",
                             hint=_install_hint(version, root))
    if not toolkit.complete:
        others = [t for t in installed if t.complete and t is not toolkit and t.version]
        alt = (f"; complete toolkits: {', '.join(str(t.version) for t in others)}" if others else "")
        raise ProvisionError(
            f"{toolkit.system_path} is " + (toolkit.problem if toolkit.problem else
                                             f"incomplete: missing {', '.join(toolkit.missing)}")
            + "; nothing was changed",
            hint=f"reinstall CUDA {version.short} ({_install_hint(version, root)}){alt}")
    if toolkit.version_source != "nvcc":
        raise ProvisionError(
            f"{toolkit.system_path}/bin/nvcc does not report a version: {toolkit.nvcc_error}",
            hint=f"reinstall CUDA {version.short} ({_install_hint(version, root)})")
    # A relative target keeps the link valid inside a chroot, a container mount or any --root.
    link_text = toolkit.name if toolkit.path.parent == under_root(root, LOCAL) else toolkit.system_path
    assert toolkit.version is not None
    return _plan(root, environ, "switch", toolkit.version, toolkit, link_text, current, args)


def read_record(root: Path) -> dict[str, Any] | None:
    """The last switch's record (previous and new link text), or None."""
    path = under_root(root, STATE_DIR) / RECORD_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ProvisionError(f"{STATE_DIR}/{RECORD_NAME} is unreadable: {e}",
                             hint="remove it and switch explicitly: "
                                  f"`{command_line(root, 'cuda switch X.Y')}`") from e
    return data if isinstance(data, dict) else None


def plan_rollback(root: Path, environ: Mapping[str, str]) -> SwitchPlan:
    """Plan pointing /usr/local/cuda back at the target recorded by the last switch."""
    args = "cuda rollback"
    current = read_link(root, environ)
    _refuse_unswitchable(root, current, command_line(root, args))
    record = read_record(root)
    if record is None:
        raise ProvisionError("no previous CUDA switch is recorded, so there is nothing to roll back to",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}` "
                                  f"(`{command_line(root, 'cuda list')}` shows what is installed)")
    previous = record.get("previous")
    if not isinstance(previous, str) or not previous:
        raise ProvisionError(f"{LINK} did not exist before the last switch, so there is nothing to "
                             "roll back to",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}`")
    # Through update-alternatives the link text stays /etc/alternatives/cuda: where it led is what was
    # recorded as previous_target (records from before that key: the link text, resolved now).
    if current.alternative is not None and record.get("previous_target"):
        previous = str(record["previous_target"])
    final = resolve_under(root, previous if previous.startswith("/") else f"{LOCAL}/{previous}")
    target = under_root(root, final) if final else None
    if target is None or not target.is_dir():
        raise ProvisionError(f"the previous target {previous} no longer exists; nothing was changed",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}`")
    if current.alternative is not None:
        previous = system_path(root, target)
    toolkit = read_toolkit(target, root, environ)
    if not toolkit.complete or toolkit.version_source != "nvcc" or toolkit.version is None:
        problem = (toolkit.problem or f"missing {', '.join(toolkit.missing)}" if not toolkit.complete
                   else f"its nvcc does not report a version ({toolkit.nvcc_error})")
        raise ProvisionError(f"the previous target {previous} is unusable: {problem}; nothing was changed",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}`")
    return _plan(root, environ, "rollback", toolkit.version, toolkit, previous, current, args)


def apply(plan: SwitchPlan) -> LinkState:
    """Carry out a switch or rollback under the lock, then check the new link's nvcc; return the link."""
    args = "cuda rollback" if plan.action == "rollback" else f"cuda switch {plan.version}"
    if plan.unchanged and not writable(plan.lock_path.parent):
        return _verify(plan)  # nothing to write: a user who may not take the lock can still check
    try:
        with fsio.locked(plan.lock_path):
            _switch_locked(plan, args)
            return _verify(plan)
    except PermissionError as e:
        raise PermissionDenied(f"cannot change {LINK}: {e.strerror}: {e.filename}",
                               hint=f"re-run with sudo: `sudo {command_line(plan.root, args)}`") from e
    except OSError as e:
        # A full disk, a read-only mount: the new link was removed and the record restored.
        raise ProvisionError(f"could not change {LINK}: {e.strerror} ({e.filename}); it was left as it was",
                             hint="fix the filesystem problem and run the command again") from e


def _switch_locked(plan: SwitchPlan, args: str) -> None:
    # Re-read under the lock: another switch may have changed the link since the plan was made.
    current = read_link(plan.root, plan.environ)
    _refuse_unswitchable(plan.root, current, command_line(plan.root, args))
    if current.state == "ok" and current.target == inside(plan.root, plan.toolkit.path):
        return  # already there: keep the record of the last real change
    if current.alternative != plan.current.alternative:
        raise ProvisionError(f"{LINK} changed while this command waited for the lock "
                             f"(now: {current.describe()}); nothing was changed",
                             hint=f"run `{command_line(plan.root, args)}` again")
    old_record = plan.record_path.read_text() if plan.record_path.exists() else None
    record = {"version": 1, "link": LINK, "action": plan.action,
              "previous": current.raw_target,
              "previous_target": current.target_system,
              "previous_version": (str(current.toolkit.version)
                                   if current.state == "ok" and current.toolkit
                                   and current.toolkit.version else None),
              "current": plan.link_text, "current_version": str(plan.version),
              "via": alternatives.TOOL if plan.via is not None else "link",
              "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    # Record first: if the change then fails, the record is restored below; if we are killed in
    # between, a rollback points at what the link still is, which is harmless.
    fsio.atomic_write(plan.record_path, json.dumps(record, indent=2) + "\n")
    try:
        if plan.via is not None:
            for argv in plan.via.commands(plan.root):
                try:
                    alternatives.run(argv, plan.environ)
                except CommandError as e:
                    raise ProvisionError(f"{alternatives.TOOL} could not switch {LINK}: {e.message}",
                                         hint=f"see `{shlex.join(alternatives.command(plan.root, '--display', plan.via.name))}`"
                                              "; the switch record was left as it was") from e
        else:
            fsio.atomic_symlink(plan.link, plan.link_text)
    except BaseException:
        if old_record is None:
            plan.record_path.unlink()
        else:
            fsio.atomic_write(plan.record_path, old_record)
        raise


def _verify(plan: SwitchPlan) -> LinkState:
    """Run the new link's bin/nvcc --version (under root); fail loudly unless it reports plan.version."""
    after = read_link(plan.root, plan.environ)
    rollback = command_line(plan.root, "cuda rollback")
    if after.state != "ok" or after.target is None:
        raise ProvisionError(f"after the {plan.action}, {after.describe()}",
                             hint=f"undo it with `{rollback}`")
    nvcc = inside(plan.root, after.target / "bin" / "nvcc")
    try:
        reported, _ = nvcc_version(nvcc, plan.environ)
    except ProvisionError as e:
        raise ProvisionError(f"{LINK} now points at {after.raw_target}, but its nvcc failed: {e.message}",
                             hint=f"undo it with `{rollback}`") from e
    if not plan.version.same_release(reported):
        raise ProvisionError(
            f"{LINK} now points at {after.raw_target}, but its bin/nvcc --version reports "
            f"CUDA {reported}, not {plan.version}",
            hint=f"the toolkit changed under us; undo it with `{rollback}` and check that toolkit")
    return after
