"""Debian's update-alternatives: whether it manages a link, what it has registered, the commands that change it.

On Debian and Ubuntu, NVIDIA's packages (cuda-toolkit-X-Y-config-common) register each toolkit:
`update-alternatives --install /usr/local/cuda cuda /usr/local/cuda-12.6 126`, so that
`/usr/local/cuda -> /etc/alternatives/cuda -> /usr/local/cuda-12.6`. A link managed that way is
changed through the tool, so that `update-alternatives --display/--config cuda` keeps telling the
truth; the tool itself renames a new link over the old one, so the switch stays atomic.
"""
from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import proc
from provisioner.paths import under_root
from provisioner.versions import CudaVersion

TOOL = "update-alternatives"
ALTDIR = "/etc/alternatives"
ADMINDIR = "/var/lib/dpkg/alternatives"
TIMEOUT = 30


def managed_name(root: Path, link: str) -> str | None:
    """The alternative's name when the system link `link` points into ALTDIR and the admin directory
    has that name's entry (update-alternatives manages it), else None. Read under root, no process."""
    path = under_root(root, link)
    if not path.is_symlink():
        return None
    target = posixpath.normpath(posixpath.join(posixpath.dirname(link), os.readlink(path)))
    directory, name = posixpath.split(target)
    if directory != ALTDIR or not name:
        return None
    return name if under_root(root, ADMINDIR).joinpath(name).is_file() else None


def on_path(environ: Mapping[str, str]) -> bool:
    """Whether the tool is on the run's PATH (a link it manages is then changed through it)."""
    return shutil.which(TOOL, path=environ.get("PATH", os.defpath)) is not None


def priority(version: CudaVersion) -> int:
    """The priority NVIDIA's packages register a toolkit with: 12.6 -> 126, 11.8 -> 118."""
    return version.major * 10 + version.minor


def options(root: Path) -> list[str]:
    """Nothing for `/`. Under another root: `--root` (paths in the arguments stay system paths, as on
    the real system, and the log goes to <root>/var/log) plus the two directories the tool keeps its
    state in, spelled out, because dpkg releases before mid-2021 derived the admin directory from --root
    wrongly.
    (`--log` is not given: the tool puts a given log path under the root a second time.)"""
    if root == Path("/"):
        return []
    return ["--root", str(root), "--altdir", str(under_root(root, ALTDIR)),
            "--admindir", str(under_root(root, ADMINDIR))]


def command(root: Path, *args: str) -> list[str]:
    return [TOOL, *options(root), *args]


def set_commands(root: Path, link: str, name: str, path: str, prio: int, registered: bool) -> list[list[str]]:
    """`--install` (only when `path` is not registered yet), then `--set`: the group becomes manual, so an
    automatic choice (a package upgrade) does not move the link behind the user's back."""
    install = [command(root, "--install", link, name, path, str(prio))] if not registered else []
    return [*install, command(root, "--set", name, path)]


@dataclass(frozen=True)
class Group:
    """What `update-alternatives --query NAME` says about one link group."""

    name: str
    link: str | None = None
    status: str | None = None                                   # "auto" | "manual"
    value: str | None = None                                    # where the link points now
    alternatives: Mapping[str, int] = field(default_factory=dict)   # registered path -> priority


def parse_query(text: str) -> Group:
    """Parse `--query` output: RFC 822-style stanzas, the group's first, then one per alternative."""
    head: dict[str, str] = {}
    found: dict[str, int] = {}
    current: str | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or line.startswith(" "):
            continue
        key, value = key.strip(), value.strip()
        if key == "Alternative":
            current = value
            found[current] = 0
        elif key == "Priority" and current is not None:
            try:
                found[current] = int(value)
            except ValueError:
                pass
        elif current is None:
            head[key] = value
    return Group(head.get("Name", ""), head.get("Link"), head.get("Status"),
                 head.get("Value") if head.get("Value") not in (None, "none") else None, found)


def query(name: str, root: Path, environ: Mapping[str, str]) -> Group:
    """Ask the tool itself (under root) what it has registered for `name`."""
    done = proc.run(command(root, "--query", name), timeout=TIMEOUT, env={**environ, "LC_ALL": "C"})
    return parse_query(done.stdout)


def run(args: list[str], environ: Mapping[str, str]) -> None:
    proc.run(args, timeout=TIMEOUT, env={**environ, "LC_ALL": "C"})
