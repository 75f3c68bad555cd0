"""The /usr/local/cuda link: read it, switch it atomically under a lock, roll it back."""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.cuda.toolkit import (LINK, LOCAL, Toolkit, command_line, find_toolkit, inside, nvcc_version,
                                      read_toolkit, resolve_under, system_path, toolkits, writable)
from provisioner.errors import PermissionDenied, ProvisionError
from provisioner.paths import under_root
from provisioner.versions import CudaVersion

#: The switch lock and the rollback record: system state, so under the root, not in a HOME.
STATE_DIR = "/var/lib/provision"
LOCK_NAME = "cuda-switch.lock"
RECORD_NAME = "cuda-switch.json"
#: Prefix of the temporary link renamed over `cuda`; a crashed switch leaves nothing else behind.
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

    @property
    def target_system(self) -> str | None:
        return system_path(self.root, self.target) if self.target is not None else None

    def describe(self) -> str:
        """`/usr/local/cuda -> /usr/local/cuda-12.6 (ok)` and friends."""
        if self.state == "missing":
            return f"{LINK} does not exist"
        if self.state == "directory":
            return f"{LINK} is a real directory, not a link"
        if self.state == "not-a-link-file":
            return f"{LINK} is a file, not a link"
        chain = self.raw_target or ""
        if self.target_system and self.target_system != self.raw_target:
            chain += f" => {self.target_system}"
        return f"{LINK} -> {chain} ({self.state})"

    def to_dict(self) -> dict[str, Any]:
        return {"path": LINK, "state": self.state, "raw_target": self.raw_target,
                "target": self.target_system,
                "toolkit": self.toolkit.to_dict() if self.toolkit else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinkState:
        target, tk = d.get("target"), d.get("toolkit")
        return cls(Path(LINK), str(d.get("state") or "missing"), d.get("raw_target"),
                   Path(str(target)) if target else None,
                   Toolkit.from_dict(tk) if isinstance(tk, Mapping) else None)


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
        final = resolve_under(root, LINK)
        if final is None:
            return LinkState(link, "dangling", raw, None, None, root)
        target = under_root(root, final)
        if target.is_dir():
            return LinkState(link, "ok", raw, target, toolkit_at(target), root)
        return LinkState(link, "dangling", raw, target, None, root)
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
class SwitchPlan:
    """Point `<root>/usr/local/cuda` at `toolkit` (a switch, or the rollback to a recorded target)."""

    root: Path
    environ: Mapping[str, str] = field(repr=False, compare=False)
    action: str                   # "switch" | "rollback"
    version: CudaVersion          # what the new link's nvcc must report
    toolkit: Toolkit
    link_text: str                # written into the link: "cuda-12.6", or the recorded raw target
    current: LinkState
    unchanged: bool               # the link already points there

    @property
    def link(self) -> Path:
        return under_root(self.root, LINK)

    @property
    def lock_path(self) -> Path:
        return under_root(self.root, STATE_DIR) / LOCK_NAME

    @property
    def record_path(self) -> Path:
        return under_root(self.root, STATE_DIR) / RECORD_NAME

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
        if self.current.raw_target and self.current.raw_target.startswith("/etc/alternatives"):
            lines.append("  note: the link goes through update-alternatives; it becomes a direct link")
        lines += [
            f"  1. lock {STATE_DIR}/{LOCK_NAME} (one switch at a time)",
            f"  2. record the current target in {STATE_DIR}/{RECORD_NAME} (for `provision cuda rollback`)",
            f"  3. create {LINK}.new-<pid> -> {self.link_text} and rename it over {LINK} (atomic)",
            f"  4. check that {LINK}/bin/nvcc --version reports {self.version}",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "cuda_version": str(self.version), "link_path": LINK,
                "link_text": self.link_text, "toolkit": self.toolkit.to_dict(),
                "current": self.current.to_dict(), "unchanged": self.unchanged}


def _refuse_unswitchable(root: Path, state: LinkState, then: str) -> None:
    if state.state == "directory":
        found = (f" holding CUDA {state.toolkit.version}" if state.toolkit and state.toolkit.version
                 else "")
        raise ProvisionError(f"{LINK} is a real directory{found}, not a link; nothing was changed",
                             hint=move_aside_hint(cuda_entries(root), state, then))
    if state.state == "not-a-link-file":
        raise ProvisionError(f"{LINK} is a regular file, not a link; nothing was changed",
                             hint=f"look at it and remove it yourself (`sudo rm {LINK}`), then `{then}`")


def _require_permission(root: Path, args: str) -> None:
    for directory in (under_root(root, LOCAL), under_root(root, STATE_DIR)):
        if not writable(directory):
            raise PermissionDenied(
                f"cannot change {LINK}: {system_path(root, directory)} is not writable by this user",
                hint=f"re-run with sudo: `sudo {command_line(root, args)}`")


def _plan(root: Path, environ: Mapping[str, str], action: str, version: CudaVersion,
          toolkit: Toolkit, link_text: str, current: LinkState, args: str) -> SwitchPlan:
    unchanged = (current.state == "ok" and current.target is not None
                 and current.target == inside(root, toolkit.path))
    if not unchanged:
        _require_permission(root, args)
    return SwitchPlan(root, environ, action, version, toolkit, link_text, current, unchanged)


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
    final = resolve_under(root, previous if previous.startswith("/") else f"{LOCAL}/{previous}")
    target = under_root(root, final) if final else None
    if target is None or not target.is_dir():
        raise ProvisionError(f"the previous target {previous} no longer exists; nothing was changed",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}`")
    toolkit = read_toolkit(target, root, environ)
    if not toolkit.complete or toolkit.version_source != "nvcc" or toolkit.version is None:
        problem = (toolkit.problem or f"missing {', '.join(toolkit.missing)}" if not toolkit.complete
                   else f"its nvcc does not report a version ({toolkit.nvcc_error})")
        raise ProvisionError(f"the previous target {previous} is unusable: {problem}; nothing was changed",
                             hint=f"switch explicitly: `{command_line(root, 'cuda switch X.Y')}`")
    return _plan(root, environ, "rollback", toolkit.version, toolkit, previous, current, args)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`: a second switch waits here until the first one is done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def _replace_link(link: Path, text: str) -> None:
    """Make `link` point at `text` atomically: a new link, renamed over the old one."""
    tmp = link.with_name(f"{NEW_LINK_PREFIX}{os.getpid()}")
    try:
        if os.path.lexists(tmp):
            tmp.unlink()  # left by a killed process that had our pid
        os.symlink(text, tmp)
        os.replace(tmp, link)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def apply(plan: SwitchPlan) -> LinkState:
    """Carry out a switch or rollback under the lock, then check the new link's nvcc; return the link."""
    args = "cuda rollback" if plan.action == "rollback" else f"cuda switch {plan.version}"
    if plan.unchanged and not writable(plan.lock_path.parent):
        return _verify(plan)  # nothing to write: a user who may not take the lock can still check
    try:
        with _locked(plan.lock_path):
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
    old_record = plan.record_path.read_text() if plan.record_path.exists() else None
    record = {"version": 1, "link": LINK, "action": plan.action,
              "previous": current.raw_target,
              "previous_version": (str(current.toolkit.version)
                                   if current.state == "ok" and current.toolkit
                                   and current.toolkit.version else None),
              "current": plan.link_text, "current_version": str(plan.version),
              "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    # Record first: if the rename then fails, the record is restored below; if we are killed in
    # between, a rollback points at what the link still is, which is harmless.
    _write_atomic(plan.record_path, json.dumps(record, indent=2) + "\n")
    try:
        _replace_link(plan.link, plan.link_text)
    except BaseException:
        if old_record is None:
            plan.record_path.unlink()
        else:
            _write_atomic(plan.record_path, old_record)
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
