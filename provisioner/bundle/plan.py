"""`bundle create`'s plan: resolve the profile's stack and provision's own dependencies for the target,
list the model's files, and say what is already in the bundle; reads indexes and the hub, writes nothing."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.bundle import manifest as mf
from provisioner.bundle import resolve, tool
from provisioner.bundle.fetch import remote_size
from provisioner.bundle.resolve import Resolution, Wheel
from provisioner.bundle.target import Target
from provisioner.errors import ProvisionError, UsageError
from provisioner.units import human_bytes

if TYPE_CHECKING:
    from provisioner.model.download import DownloadPlan
    from provisioner.profiles import Profile


@dataclass(frozen=True)
class BundleOptions:
    """What `bundle create` was asked for."""

    profile: str
    model: str | None = None
    revision: str | None = None
    python: str | None = None
    platform: str | None = None
    output: Path | None = None
    torch: str | None = None
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    allow_insecure_index: bool = False
    endpoint: str | None = None
    mirror: str | None = None


@dataclass(frozen=True)
class LocalModel:
    """A model folder on this machine, copied into the bundle as it is."""

    path: Path
    files: tuple[tuple[str, int], ...]            # (relative path, size)
    present: frozenset[str] = frozenset()         # already copied into the bundle (same size)

    @property
    def bytes(self) -> int:
        return sum(size for _p, size in self.files)

    @property
    def need_bytes(self) -> int:
        return sum(size for p, size in self.files if p not in self.present)


@dataclass(frozen=True)
class Sources:
    """Where the wheels come from (recorded in the bundle's lock, credentials masked)."""

    args: tuple[str, ...]                         # uv's source options for the stack
    tool_args: tuple[str, ...]                    # ... and for provision's dependencies (no torch index)
    torch_index_url: str
    torch_from: str                               # "index" | "torch-backend" | "local"
    index_url: str | None
    extra_index_urls: tuple[str, ...]
    find_links: tuple[str, ...]


@dataclass(frozen=True)
class BundlePlan:
    options: BundleOptions
    profile: Profile
    target: Target
    folder: Path                                  # the bundle folder (the tar's staging folder for -o X.tar)
    tar: Path | None
    torch_requirements: tuple[str, ...]
    package_requirements: tuple[str, ...]
    sources: Sources
    stack: Resolution
    tools: Resolution
    tool_source: tool.ToolSource
    model: DownloadPlan | LocalModel | None
    present: frozenset[str]                       # wheel paths already complete in the folder
    environ: Mapping[str, str] = field(repr=False, compare=False, default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def output(self) -> Path:
        return self.tar or self.folder

    @property
    def wheels(self) -> tuple[Wheel, ...]:
        """Every wheel, each file once (the stack's and provision's dependencies share some)."""
        seen: dict[str, Wheel] = {}
        for w in (*self.stack.wheels, *self.tools.wheels):
            seen.setdefault(w.filename, w)
        return tuple(seen.values())

    @property
    def missing(self) -> tuple[Wheel, ...]:
        return tuple(w for w in self.wheels if w.path not in self.present)

    @property
    def tool_wheel(self) -> str:
        return f"{mf.WHEELS}/{self.tool_source.filename}"

    @property
    def model_bytes(self) -> int:
        if self.model is None:
            return 0
        return self.model.need_bytes

    @property
    def fetch_bytes(self) -> int:
        """Bytes still to fetch (wheels of unknown size count 0; the text says how many there are)."""
        return sum(w.size or 0 for w in self.missing) + self.model_bytes

    def describe(self) -> str:
        t = self.target
        where = f"{self.tar} (assembled in {self.folder})" if self.tar else f"{self.folder}"
        lines = [f"Bundle:   {where}",
                 f"Target:   profile {self.profile.name} ({' '.join(self.torch_requirements)}), Python {t.python}, "
                 f"{t.platform}" + (" (this machine's platform)" if t.this_machine else ""),
                 "torch:    " + {"local": "from the local wheel folder(s) " + ", ".join(self.sources.find_links),
                                 "torch-backend": f"from {self.sources.torch_index_url} (uv --torch-backend "
                                                  f"{self.profile.variant})",
                                 "index": f"from {self.sources.torch_index_url}"}[self.sources.torch_from],
                 f"packages: {' '.join(self.package_requirements) or '(none)'} from the default index"]
        unknown = [w for w in self.missing if w.size is None]
        lines.append(f"Wheels:   {len(self.wheels)} ({len(self.stack.wheels)} for the environment, "
                     f"{len(self.tools.wheels)} for provision itself, each file once); "
                     f"{len(self.wheels) - len(self.missing)} already in the bundle, {len(self.missing)} to fetch")
        for w in sorted(self.missing, key=lambda w: -(w.size or 0)):
            lines.append(f"  + {w.filename}  {human_bytes(w.size) if w.size is not None else 'size unknown'}")
        lines.append(f"provision: {self.tool_wheel} "
                     + ("(already in the bundle)" if self.tool_wheel in self.present else
                        f"({self.tool_source.describe()})"))
        if self.model is None:
            lines.append("Model:    none (--model adds one; `up --bundle` then needs --model)")
        elif isinstance(self.model, LocalModel):
            lines.append(f"Model:    {self.model.path} (local folder, {len(self.model.files)} file(s), "
                         f"{human_bytes(self.model.bytes)}), copied to {mf.MODEL}/")
        else:
            m = self.model
            lines.append(f"Model:    {m.repo_id} @ {m.revision} (commit {m.commit[:12]}) from {m.endpoint.url}: "
                         f"{len(m.files)} file(s), {human_bytes(m.need_bytes)} to fetch"
                         + (f", {len(m.present)} already in the bundle" if m.present else ""))
            lines += [f"  + {f.path}  {human_bytes(f.size)}" for f in m.files]
        lines.append(f"Total to fetch: {human_bytes(self.fetch_bytes)}"
                     + (f" (+ {len(unknown)} wheel(s) of unknown size)" if unknown else ""))
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        model: dict[str, Any] | None = None
        if isinstance(self.model, LocalModel):
            model = {"source": str(self.model.path), "files": [p for p, _s in self.model.files],
                     "bytes": self.model.bytes}
        elif self.model is not None:
            model = {"id": self.model.repo_id, "revision": self.model.revision, "commit": self.model.commit,
                     "endpoint": self.model.endpoint.url, "files": [f.path for f in self.model.files],
                     "present": [f.path for f in self.model.present], "bytes": self.model.need_bytes}
        return {
            "output": str(self.output), "folder": str(self.folder), "tar": str(self.tar) if self.tar else None,
            "profile": self.profile.name, "variant": self.profile.variant, "python": self.target.python,
            "platform": self.target.platform, "uv_platform": self.target.uv_platform,
            "torch": list(self.torch_requirements), "packages": list(self.package_requirements),
            "sources": {"torch": self.sources.torch_from, "torch_index_url": self.sources.torch_index_url,
                        "index_url": self.sources.index_url, "extra_index_urls": list(self.sources.extra_index_urls),
                        "find_links": list(self.sources.find_links)},
            "wheels": [{**w.to_dict(), "present": w.path in self.present} for w in self.wheels],
            "tool": {"wheel": self.tool_wheel, "source": str(self.tool_source.path), "kind": self.tool_source.kind,
                     "present": self.tool_wheel in self.present},
            "model": model, "fetch_bytes": self.fetch_bytes,
            "unknown_sizes": sum(1 for w in self.missing if w.size is None), "notes": list(self.notes),
        }


def default_output(profile: str, target: Target, cwd: Path) -> Path:
    return cwd / f"provision-bundle-{profile}-py{target.python}-{target.platform}"


def output_paths(output: Path | None, profile: str, target: Target, environ: Mapping[str, str]) -> tuple[Path, Path | None]:
    """(the folder the bundle is assembled in, the tar to write at the end or None)."""
    from provisioner.env.record import expand_path

    path = expand_path(output, environ) if output is not None else default_output(profile, target, Path.cwd())
    if path.name.endswith(".tar"):
        return path.with_name(path.name + ".partial"), path
    return path, None


def check_folder(folder: Path, target: Target, profile: str) -> None:
    """A folder is provision's bundle (of the same target: a re-run) or new; never anything else."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder", hint="choose another -o")
    manifest = folder / mf.MANIFEST_NAME
    if manifest.is_file():
        try:
            m = mf.parse(manifest.read_bytes(), str(manifest))
        except ProvisionError:
            m = None
        if m is not None and (m.profile, m.python, m.platform) != (profile, target.python, target.platform):
            raise UsageError(f"{folder} holds a bundle for profile {m.profile}, Python {m.python}, {m.platform}",
                             hint="choose another -o for this one (or remove that bundle first)")
        return
    if any(folder.iterdir()) and not (folder / mf.IGNORED[0]).exists():
        raise UsageError(f"{folder} is not empty and is not a bundle provision started; provision never writes "
                         "into a folder it did not make", hint="choose another -o (a new or empty folder)")


def _sources(options: BundleOptions, profile: Profile, target: Target, torch_reqs: Sequence[str],
             environ: Mapping[str, str]) -> tuple[Sources, list[str]]:
    """The same sources `env create` installs from (env/plan.py), with local wheels matched to the target."""
    from provisioner.env.backends import Installer, which
    from provisioner.env.plan import CreateOptions, ProfileSource, torch_backend, wheel_sources
    from provisioner.env.sources import compile_source_args, source_args, with_local

    uv = which("uv", environ)
    assert uv is not None
    create = CreateOptions(profile=profile.name, python=target.python, torch=options.torch,
                           index_url=options.index_url, extra_index_urls=options.extra_index_urls,
                           find_links=options.find_links, allow_insecure_index=options.allow_insecure_index)
    found = wheel_sources(create, ProfileSource(profile, None, None), torch_reqs, target.python, environ,
                          platforms=target.platforms)
    notes = []
    tag = torch_backend(Installer(uv), found, profile, environ)
    extra = found.extra
    if tag is not None:
        torch_from = "torch-backend"
    elif found.local:
        torch_from = "local"
        notes.append("torch comes from " + ", ".join(str(p) for p in found.local.values())
                     + f" (the profile's index {found.torch_index} is not asked)")
    else:
        torch_from, extra = "index", (found.torch_index, *found.extra)
    args = compile_source_args(index_url=found.env_index, torch_index=found.torch_index, torch_backend=tag,
                               local=found.local, extra=found.extra, links=found.all_links, environ=environ)
    base = ["--index-url", found.env_index] if found.env_index else []
    tool_args = [*base, *source_args(list(found.extra), list(found.all_links), True, environ)]
    return Sources(tuple(args), tuple(tool_args), found.torch_index, torch_from, found.env_index,
                   tuple(extra), tuple(with_local(found.all_links, found.local))), notes


def _sizes(res: Resolution) -> Resolution:
    """Sizes the lock lacks (an HTML index gives none; a local wheel is not listed with one): a stat or
    an HTTP HEAD, never the file."""
    return replace(res, wheels=tuple(w if w.size is not None else replace(w, size=remote_size(w.url))
                                     for w in res.wheels))


def _present(folder: Path, wheels: Sequence[Wheel], tool_wheel: str) -> frozenset[str]:
    """Wheels complete in the folder (the right size; fetch checks the sha256 before relying on one)."""
    out = set()
    for w in wheels:
        p = folder / w.path
        if p.is_file() and (w.size is None or p.stat().st_size == w.size):
            out.add(w.path)
    if (folder / tool_wheel).is_file():
        out.add(tool_wheel)
    return frozenset(out)


def _local_model(path: Path, into: Path) -> LocalModel:
    files = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            files.append((rel, p.stat().st_size))
    if not any(rel == "config.json" for rel, _s in files):
        raise UsageError(f"--model {path}: no config.json in that folder", hint="give a model folder or a hub id")
    present = frozenset(rel for rel, size in files if (into / rel).is_file() and (into / rel).stat().st_size == size)
    return LocalModel(path, tuple(files), present)


def plan_bundle(options: BundleOptions, *, environ: Mapping[str, str]) -> BundlePlan:
    """Resolve everything the bundle will hold and what of it is already there; nothing is written."""
    from provisioner import profiles as profmod
    from provisioner.bundle import target as targetmod
    from provisioner.env.backends import which
    from provisioner.env.plan import CreateOptions, ProfileSource, requirements

    if options.profile in ("", "auto"):
        raise UsageError("a bundle is for another machine: name its profile (--profile cpu, --profile cu126)",
                         hint="`provision profile list` shows them; `provision verify` on the target says which fits")
    if options.endpoint and options.mirror:
        raise UsageError("--endpoint and --mirror both name the hub server", hint="pass only one of them")
    if options.model is None and (options.revision or options.endpoint or options.mirror):
        raise UsageError("--revision, --endpoint and --mirror are about the model", hint="add --model MODEL")
    profile = profmod.get(options.profile, environ)
    target = targetmod.resolve(options.python or profile.python, options.platform)
    if which("uv", environ) is None:
        raise ProvisionError("`uv` not found on PATH: bundle create resolves the target's wheels with "
                             "`uv pip compile --python-platform`", hint="install uv (pip install uv), then retry")
    folder, tar = output_paths(options.output, profile.name, target, environ)
    check_folder(folder, target, profile.name)
    if tar is not None and tar.exists():
        raise UsageError(f"{tar} already exists", hint="remove it, or choose another -o")
    model: DownloadPlan | LocalModel | None = None
    if options.model is not None:
        local = Path(options.model).expanduser()
        if options.model.startswith((".", "/", "~")) or local.is_dir():
            if not local.is_dir():
                raise UsageError(f"model folder {options.model} does not exist",
                                 hint="give a model folder holding config.json, or a hub id")
            model = _local_model(local.absolute(), folder / mf.MODEL)
        else:
            from provisioner.model import download

            model = download.plan_download(options.model, revision=options.revision, local_dir=folder / mf.MODEL,
                                           endpoint=options.endpoint, mirror=options.mirror, environ=environ)
    torch_reqs, pkg_reqs = requirements(CreateOptions(profile=profile.name, torch=options.torch),
                                        ProfileSource(profile, None, None))
    sources, notes = _sources(options, profile, target, torch_reqs, environ)
    env = resolve.with_environ(environ)
    uv = which("uv", environ)
    assert uv is not None
    what = f"profile {profile.name}"
    stack = _sizes(resolve.parse(resolve.compile_lock(uv, [*torch_reqs, *pkg_reqs], target, sources.args,
                                                      environ=env, what=what), target))
    source = tool.find_source()
    tools = _sizes(resolve.parse(resolve.compile_lock(uv, tool.requirements(), target, sources.tool_args,
                                                      environ=env, what="provision's own dependencies"),
                                 target, role="tool"))
    present = _present(folder, [*stack.wheels, *tools.wheels], f"{mf.WHEELS}/{source.filename}")
    if target.uv_platform != f"{target.arch}-{target.platform.removesuffix('_' + target.arch)}":
        notes.append(f"uv resolves for {target.uv_platform}, the newest glibc it names at or below {target.platform}")
    return BundlePlan(options=options, profile=profile, target=target, folder=folder, tar=tar,
                      torch_requirements=tuple(torch_reqs), package_requirements=tuple(pkg_reqs), sources=sources,
                      stack=stack, tools=tools, tool_source=source, model=model, present=present,
                      environ=dict(environ), notes=tuple(notes))

