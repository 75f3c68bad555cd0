"""Facts about the toolkits, the link and PATH's nvcc, gathered once; cuda.* checks judge them."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.cuda.toolkit import (LINK, LOCAL, VERSIONED, Toolkit, command_line, inside, nvcc_version,
                                      system_path, toolkits, which_nvcc)
from provisioner.errors import ProvisionError
from provisioner.report import Check, Status
from provisioner.system import alternatives, gpu
from provisioner.system.checks import driver_install_fix
from provisioner.versions import CudaVersion

if TYPE_CHECKING:
    from provisioner.facts import Facts
from provisioner.cuda.link import LinkState, cuda_entries, move_aside_hint, read_link


@dataclass(frozen=True)
class NvccOnPath:
    """The `nvcc` a shell would run, and how it relates to the link (read once, judged later)."""

    first: str | None = None                 # system path of the first nvcc on PATH
    resolved: str | None = None              # the same with every link followed
    bypass: str | None = None                # how it reaches a versioned toolkit without the link
    through_link: bool = False               # it is the linked toolkit's nvcc (or a wrapper using the link)
    version: str | None = None               # what it reports, when it is not the linked toolkit's nvcc
    versioned: Mapping[str, Sequence[str]] = field(default_factory=dict)   # PATH / LD_LIBRARY_PATH hits

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "resolved": self.resolved, "bypass": self.bypass,
                "through_link": self.through_link, "version": self.version,
                "versioned": {k: list(v) for k, v in self.versioned.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NvccOnPath:
        versioned = d.get("versioned") or {}
        return cls(first=d.get("first"), resolved=d.get("resolved"), bypass=d.get("bypass"),
                   through_link=bool(d.get("through_link")), version=d.get("version"),
                   versioned={str(k): tuple(v) for k, v in versioned.items()})


@dataclass(frozen=True)
class CudaFacts:
    """Everything the toolkit checks look at: the link, the toolkits, PATH's nvcc; gathered once."""

    link: LinkState | None                   # None: the link could not be read (see link_error)
    link_error: str | None
    toolkits: tuple[Toolkit, ...]
    entries: tuple[str, ...]                 # every `cuda-*` name under /usr/local (files and links too)
    nvcc: NvccOnPath

    def to_dict(self) -> dict[str, Any]:
        link = self.link.to_dict() if self.link else None
        if link is not None and self.link is not None and self.link.toolkit is not None:
            link["toolkit"] = self.link.toolkit.facts_dict()
        return {"link": link, "link_error": self.link_error,
                "toolkits": [t.facts_dict() for t in self.toolkits], "entries": list(self.entries),
                "nvcc": self.nvcc.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CudaFacts:
        link = d.get("link")
        return cls(link=LinkState.from_dict(link) if isinstance(link, Mapping) else None,
                   link_error=d.get("link_error"),
                   toolkits=tuple(Toolkit.from_dict(t) for t in d.get("toolkits") or ()),
                   entries=tuple(str(e) for e in d.get("entries") or ()),
                   nvcc=NvccOnPath.from_dict(d.get("nvcc") or {}))


def gather(root: Path, environ: Mapping[str, str]) -> CudaFacts:
    """Read the toolkits (each nvcc once), the link and PATH's nvcc under root."""
    installed = tuple(toolkits(root, environ))
    entries = cuda_entries(root)
    try:
        state: LinkState | None = read_link(root, environ, installed)
        error = None
    except ProvisionError as e:
        state, error = None, e.message
    except OSError as e:
        state, error = None, f"{LINK} cannot be read: {e.strerror or e}"
    return CudaFacts(state, error, installed, entries, _nvcc_on_path(root, environ, state, installed))


def _nvcc_on_path(root: Path, environ: Mapping[str, str], state: LinkState | None,
                  installed: Sequence[Toolkit]) -> NvccOnPath:
    versioned: dict[str, tuple[str, ...]] = {}
    for var in ("PATH", "LD_LIBRARY_PATH"):
        hits = tuple(e for e in environ.get(var, "").split(os.pathsep) if e and VERSIONED.search(e))
        if hits:
            versioned[var] = hits
    first = which_nvcc(environ, root)
    if first is None:
        return NvccOnPath(versioned=versioned)
    final = inside(root, first)
    bypass = _bypass(first, final)
    through = state is not None and _through_link(final, state)
    version = None
    if not bypass and not through:
        known = next((t for t in installed if inside(root, t.path / "bin" / "nvcc") == final), None)
        if known is not None and known.version_source == "nvcc":
            version = str(known.version)        # already asked when the toolkits were read
        else:
            try:
                version = str(nvcc_version(final, environ)[0])
            except ProvisionError:
                version = None
    return NvccOnPath(system_path(root, first), system_path(root, final), bypass, through, version,
                      versioned)


def check_link(root: Path, environ: Mapping[str, str]) -> Check:
    """cuda.link, read now (see judge_link)."""
    return judge_link(gather(root, environ), root)


def judge_link(cf: CudaFacts, root: Path = Path("/")) -> Check:
    """cuda.link: /usr/local/cuda is a link to a complete toolkit whose nvcc reports its version."""
    if cf.link is None:
        return Check("cuda.link", Status.FAIL, cf.link_error or f"{LINK} cannot be read", None, {})
    state, installed = cf.link, cf.toolkits
    complete = [t for t in installed if t.complete and t.version]
    newest = complete[-1] if complete else None
    data: dict[str, object] = {"link": state.to_dict(),
                               "installed": [t.to_dict() for t in installed]}
    switch_fix = (command_line(root, f"cuda switch {newest.version.short}")
                  if newest and newest.version else command_line(root, "cuda install 13.0"))
    if state.state == "missing":
        if not installed:
            return Check("cuda.link", Status.WARN,
                         f"no CUDA toolkit under {LOCAL} and no {LINK} link (PyTorch wheels bring "
                         "their own CUDA runtime; a toolkit is only needed to compile CUDA code)",
                         command_line(root, "cuda install 13.0"), data)
        names = ", ".join(t.label for t in installed)
        return Check("cuda.link", Status.WARN, f"{LINK} does not exist; installed: {names}",
                     switch_fix, data)
    if state.state == "directory":
        msg = f"{LINK} is a real directory, not a link, so it cannot be switched"
        return Check("cuda.link", Status.FAIL, msg,
                     move_aside_hint(cf.entries, state, command_line(root, "cuda switch X.Y")), data)
    if state.state == "not-a-link-file":
        return Check("cuda.link", Status.FAIL, f"{LINK} is a regular file, not a link to a toolkit",
                     f"inspect and remove it (`sudo rm {LINK}`), then `{switch_fix}`", data)
    if state.state == "dangling":
        return Check("cuda.link", Status.FAIL,
                     f"{LINK} -> {state.raw_target} is dangling: "
                     f"{state.target_system or 'a link loop'} is not a directory"
                     + (f" (update-alternatives '{state.alternative}' points there)" if state.alternative else ""),
                     switch_fix, data)
    tk = state.toolkit
    assert tk is not None
    where = f"{LINK} -> {state.raw_target}"
    if state.alternative is not None:   # /etc/alternatives/cuda: a working link, and where it leads
        data["managed_by"] = alternatives.TOOL
        where = f"{LINK} -> {state.chain}"
    if not tk.complete:
        fix = (switch_fix if newest is not None
               else "reinstall that toolkit, or " + command_line(root, "cuda install 13.0"))
        return Check("cuda.link", Status.FAIL,
                     f"{where} is " + (tk.problem or f"incomplete: missing {', '.join(tk.missing)}"), fix, data)
    if tk.version_source != "nvcc":
        return Check("cuda.link", Status.FAIL,
                     f"{where}: its bin/nvcc does not report a version ({tk.nvcc_error})",
                     "reinstall that toolkit, or " + switch_fix, data)
    managed = f"; managed by {state.managed_by}" if state.managed_by else ""
    return Check("cuda.link", Status.OK, f"{where} (CUDA {tk.version}, reported by its nvcc{managed})",
                 None, data)


def script_text(path: Path) -> str | None:
    """The text of a small `#!` script, or None for a binary (the real nvcc is an ELF file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    return head.decode(errors="replace")


def _bypass(first: Path, final: Path) -> str | None:
    """How the nvcc at `first` reaches a versioned toolkit without the link, in words, or None."""
    own = final.parent.parent.name  # .../cuda-12.6/bin/nvcc belongs to cuda-12.6
    if first.is_symlink():
        raw = os.readlink(first)
        m = VERSIONED.search(raw)
        if m and not raw.startswith(LINK + "/"):
            return f"is a link to {raw}"
    script = script_text(final)
    if script and f"{LINK}/bin/" not in script:
        for m in VERSIONED.finditer(script):
            # `exec /usr/local/cuda-13.0/bin/nvcc "$@"`: a wrapper into another toolkit's bin/
            if script[m.end():].startswith("/bin/") and own != f"cuda-{m[2]}":
                return f"is a wrapper script that runs {m[0]}/bin/nvcc directly"
    return None


def _through_link(final: Path, state: LinkState) -> bool:
    """Whether the resolved nvcc lies in the toolkit the link points at (or a wrapper that uses the link)."""
    if state.target is not None and final.parent.parent == state.target:
        return True
    script = script_text(final)
    return bool(script and f"{LINK}/bin/nvcc" in script)


def check_nvcc_path(root: Path, environ: Mapping[str, str]) -> Check:
    """cuda.nvcc_path, read now (see judge_nvcc_path)."""
    return judge_nvcc_path(gather(root, environ), root)


def judge_nvcc_path(cf: CudaFacts, root: Path = Path("/")) -> Check:
    """cuda.nvcc_path: the `nvcc` a shell runs is the one /usr/local/cuda points at, via the link."""
    state, nv = cf.link, cf.nvcc
    fix = command_line(root, "cuda shell-init --apply") + " (then open a new shell)"
    problems: list[str] = []
    for var, hits in nv.versioned.items():
        problems.append(f"{var} names versioned toolkit directories ({', '.join(hits)}), "
                        f"which a `cuda switch` does not change")
    data: dict[str, object] = {"nvcc": nv.first,
                               "versioned_entries": {k: list(v) for k, v in nv.versioned.items()},
                               "link_target": state.target_system if state else None}
    link_tk = state.toolkit if state is not None and state.state == "ok" else None
    if nv.first is None:
        if (state is None or state.state == "missing") and not cf.toolkits:
            return Check("cuda.nvcc_path", Status.SKIP, "no CUDA toolkit installed and no nvcc on PATH",
                         None, data)
        problems.insert(0, f"no nvcc on PATH ({LINK}/bin is not on it)")
    else:
        data["nvcc_resolved"] = nv.resolved
        if nv.bypass:
            data["bypass"] = nv.bypass
            problems.append(f"the first nvcc on PATH, {nv.first}, {nv.bypass}, bypassing {LINK}")
        elif link_tk is not None and state is not None and state.target is not None and not nv.through_link:
            what = f"CUDA {nv.version}" if nv.version else "version unknown"
            problems.append(f"the first nvcc on PATH is {nv.first}"
                            + (f" (= {nv.resolved})" if nv.resolved != nv.first else "")
                            + f", {what}, not {LINK}/bin/nvcc ({link_tk.label})")
    if problems:
        return Check("cuda.nvcc_path", Status.WARN, "; ".join(problems), fix, data)
    version = f"CUDA {link_tk.version}" if link_tk and link_tk.version else "version unknown"
    return Check("cuda.nvcc_path", Status.OK, f"nvcc on PATH is {nv.first or '?'} ({version}), via {LINK}",
                 None, data)


# --------------------------------------------------------------------------- the driver against the toolkit

def check_toolkit_driver(facts: Facts, *, root: Path = Path("/")) -> Check:
    """cuda.driver: the driver is new enough for the toolkit /usr/local/cuda points at.

    Without a known link (a pasted `nvcc --version`), the toolkit that nvcc reports is judged.
    """
    from provisioner.system import compat

    tk = facts.linked_toolkit
    v: CudaVersion | None = tk.version if tk is not None else None
    what_tk = "the linked"
    if v is None and facts.cuda is None and facts.toolkit_version:
        try:
            v, what_tk = CudaVersion.parse(facts.toolkit_version), "nvcc's"
        except ProvisionError:
            v = None
    if v is None:
        return Check("cuda.driver", Status.SKIP, "no linked toolkit with a known version", None, {})
    info = facts.info or gpu.DriverInfo("no-library")
    os_id = facts.os_id
    need = compat.toolkit_min_driver(v)
    family = compat.family_min_driver(v)
    data: dict[str, Any] = {"toolkit": str(v), "needs": str(need[0]) if need else None,
                            "source": need[1] if need else None,
                            "family_min": str(family[0]) if family else None}
    if info.status != "ok" or info.driver_version is None:
        what = f"needs driver >= {need[0]}" if need else "minimum driver unknown"
        if info.status == "ok" and info.cuda is not None and (v.major, v.minor) > (info.cuda.major, info.cuda.minor):
            return Check("cuda.driver", Status.FAIL,
                         f"the driver supports CUDA up to {info.cuda.short}, {what_tk} toolkit is {v.short}",
                         driver_install_fix(os_id), data)
        return Check("cuda.driver", Status.SKIP, f"CUDA {v.short} toolkit {what}; no driver to compare",
                     None, data)
    drv = info.driver_version
    data["driver"] = str(drv)
    if need is None:
        # A toolkit newer than the table: fall back to the CUDA version the driver reports.
        if info.cuda is not None and (v.major, v.minor) > (info.cuda.major, info.cuda.minor):
            return Check("cuda.driver", Status.FAIL,
                         f"driver {drv} supports CUDA up to {info.cuda.short}, {what_tk} toolkit is {v.short}",
                         driver_install_fix(os_id), data)
        return Check("cuda.driver", Status.OK,
                     f"driver {drv} (CUDA {info.cuda.short if info.cuda else '?'}); no minimum-driver "
                     f"row for CUDA {v.short}", None, data)
    if drv >= need[0]:
        return Check("cuda.driver", Status.OK,
                     f"driver {drv} >= {need[0]}, the minimum for CUDA {v.short}", None, data)
    fix = driver_install_fix(os_id, at_least=str(need[0]))
    older = _older_toolkit(drv, v, facts)
    if older:
        fix += f"; or point /usr/local/cuda at a toolkit this driver runs: {command_line(root, f'cuda switch {older}')}"
    if family is not None and drv >= family[0]:
        return Check("cuda.driver", Status.WARN,
                     f"driver {drv} is older than CUDA {v.short}'s own driver (>= {need[0]}); it meets the "
                     f"{v.major}.x minor-version-compatibility floor (>= {family[0]}), so programs built "
                     "with this toolkit run with a limited feature set (no PTX JIT of newer code)",
                     fix, data)
    return Check("cuda.driver", Status.FAIL,
                 f"driver {drv} is too old for {what_tk} CUDA {v.short} toolkit (needs >= {need[0]}"
                 + (f"; {v.major}.x needs at least {family[0]}" if family else "") + ")",
                 fix, data)


def _older_toolkit(drv: Any, current: CudaVersion, facts: Facts) -> str | None:
    from provisioner.system import compat

    fits = []
    for t in facts.cuda.toolkits if facts.cuda is not None else ():
        if t.version is None or not t.complete or t.version == current:
            continue
        need = compat.toolkit_min_driver(t.version)
        if need is not None and drv >= need[0]:
            fits.append(t.version)
    return max(fits).short if fits else None


# --------------------------------------------------------------------------- putting it together
