"""`cuda shell-init`: PATH and LD_LIBRARY_PATH lines that follow the link, written idempotently."""
from __future__ import annotations

import datetime
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from provisioner import fsio
from provisioner.errors import PermissionDenied, ProvisionError

SHELLS = ("bash", "zsh", "fish")
BEGIN = "# >>> provision cuda >>>"
END = "# <<< provision cuda <<<"
#: Appended to an rc line that `--apply` rewrote, so a second run recognises and keeps it.
REWRITE_MARK = "# provision cuda shell-init, was:"
_ASSIGNS = re.compile(r"\b(?:[A-Z_]*PATH|CUDA_[A-Z_]+|CUDACXX|fish_add_path)\b")
_LOCAL_VERSIONED = re.compile(r"/usr/local/cuda-\d+\.\d+(?:\.\d+)?(?=/|\b)")


def default_shell(environ: Mapping[str, str]) -> str:
    name = os.path.basename(environ.get("SHELL", ""))
    return name if name in SHELLS else "bash"


def shell_init(shell: str) -> str:
    """The rc-file block that puts /usr/local/cuda/bin first on PATH and lib64 on LD_LIBRARY_PATH."""
    if shell not in SHELLS:
        raise ProvisionError(f"unsupported shell '{shell}'", hint=f"use one of: {', '.join(SHELLS)}")
    head = [BEGIN, "# Managed by `provision cuda shell-init`: use the toolkit /usr/local/cuda points at."]
    if shell == "fish":
        body = [
            "set -q PATH[1]; and test $PATH[1] = /usr/local/cuda/bin; "
            "or set -gx PATH /usr/local/cuda/bin $PATH",
            "set -q LD_LIBRARY_PATH[1]; and test $LD_LIBRARY_PATH[1] = /usr/local/cuda/lib64; "
            "or set -gx LD_LIBRARY_PATH /usr/local/cuda/lib64 $LD_LIBRARY_PATH",
        ]
    else:
        # Prepend unless already first, so re-sourcing the rc file adds nothing and the link's
        # nvcc wins over wrappers in /usr/local/bin.
        body = [
            'case "${PATH}" in /usr/local/cuda/bin|/usr/local/cuda/bin:*) ;; '
            '*) export PATH="/usr/local/cuda/bin${PATH:+:${PATH}}" ;; esac',
            'case "${LD_LIBRARY_PATH:-}" in /usr/local/cuda/lib64|/usr/local/cuda/lib64:*) ;; '
            '*) export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}" ;; '
            'esac',
        ]
    return "\n".join([*head, *body, END]) + "\n"


def rc_file(shell: str, environ: Mapping[str, str]) -> Path:
    home = Path(environ.get("HOME") or str(Path.home()))
    if shell == "zsh":
        return Path(environ.get("ZDOTDIR") or home) / ".zshrc"
    if shell == "fish":
        config = environ.get("XDG_CONFIG_HOME", "")
        return (Path(config) if config.startswith("/") else home / ".config") / "fish" / "config.fish"
    return home / ".bashrc"


@dataclass(frozen=True)
class ShellInitPlan:
    """The rewrite of one rc file: old and new text, and which lines were rewritten."""

    shell: str
    path: Path
    old_text: str | None          # None: the file does not exist yet
    new_text: str
    rewritten: tuple[str, ...]    # original lines that named a versioned /usr/local/cuda-X.Y

    @property
    def changed(self) -> bool:
        return self.new_text != (self.old_text or "")

    def describe(self) -> str:
        if not self.changed:
            return f"{self.path} is already up to date; nothing to change"
        diff = difflib.unified_diff((self.old_text or "").splitlines(keepends=True),
                                    self.new_text.splitlines(keepends=True),
                                    fromfile=str(self.path), tofile=f"{self.path} (new)")
        return "".join(diff).rstrip("\n")


def _rewrite_line(line: str) -> str:
    """`export PATH=/usr/local/cuda-12.6/bin:$PATH` -> the same through the link, original kept."""
    body = line.rstrip("\n")
    new = _LOCAL_VERSIONED.sub("/usr/local/cuda", body)
    return f"{new}  {REWRITE_MARK} {body.strip()}\n"


def plan_shell_init(shell: str, environ: Mapping[str, str]) -> ShellInitPlan:
    """Plan the rc rewrite: one marked block (replaced in place when present) and every PATH-like line
    naming /usr/local/cuda-X.Y pointed at /usr/local/cuda instead (the original kept in a comment)."""
    block = shell_init(shell)
    path = rc_file(shell, environ)
    try:
        old = path.read_text() if path.exists() else None
    except UnicodeDecodeError:
        raise ProvisionError(f"{path} is not UTF-8 text, so it cannot be rewritten safely",
                             hint="add the lines `provision cuda shell-init` prints to it by hand") from None
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror}",
                             hint="fix its permissions (it should belong to you), or add the lines "
                                  "`provision cuda shell-init` prints to it by hand") from None
    lines = (old or "").splitlines(keepends=True)
    out: list[str] = []
    rewritten: list[str] = []
    inside = placed = False
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
            if not placed:
                out.append(block)
                placed = True
            continue
        if inside:
            inside = stripped != END
            continue
        code = stripped.split("#", 1)[0]
        if (not stripped.startswith("#") and REWRITE_MARK not in line
                and _LOCAL_VERSIONED.search(code) and _ASSIGNS.search(code)):
            rewritten.append(line.rstrip("\n"))
            out.append(_rewrite_line(line))
            continue
        out.append(line)
    if inside:
        raise ProvisionError(f"{path} has `{BEGIN}` without `{END}`",
                             hint="fix the file by hand (remove the broken block), then run this again")
    if not placed:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        if out and out[-1].strip():
            out.append("\n")
        out.append(block)
    return ShellInitPlan(shell, path, old, "".join(out), tuple(rewritten))


def apply_shell_init(plan: ShellInitPlan) -> Path | None:
    """Write the new rc file atomically, after a timestamped backup; return the backup (None: no change)."""
    if not plan.changed:
        return None
    try:
        return _write_shell_init(plan)
    except OSError as e:
        kind = PermissionDenied if isinstance(e, PermissionError) else ProvisionError
        raise kind(f"cannot write {plan.path}: {e.strerror} ({e.filename}); it was left as it was",
                             hint="fix its permissions (it should belong to you), or add the lines "
                                  "`provision cuda shell-init` prints to it by hand") from None


def _write_shell_init(plan: ShellInitPlan) -> Path | None:
    # A dotfile manager's link stays a link: write the file it points at (in HOME, not a system path).
    target = Path(os.path.realpath(plan.path))
    target.parent.mkdir(parents=True, exist_ok=True)
    backup: Path | None = None
    if plan.old_text is not None:
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        backup = target.with_name(f"{target.name}.provision-backup-{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = target.with_name(f"{target.name}.provision-backup-{stamp}-{n}")
        backup.write_text(plan.old_text)
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    fsio.atomic_write(target, plan.new_text, mode=mode)
    return backup
