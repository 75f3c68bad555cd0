"""`env create`'s plan: every decision (profile, Python, wheel sources, installer, backend, what to do
with an existing prefix) made before anything changes, as small functions; plan_create assembles them."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.env import lock as lockmod
from provisioner.env.backends import (CONDA_BACKENDS, INSTALL_TIMEOUT, QUERY_TIMEOUT, CondaBackend, EnvBackend, Installer,
                                      Location, Step, choose_backend, find_interpreter, pick_installer,
                                      step_environ, which)
from provisioner.env.pylock import PYLOCK_NAME, check_reference, install_argv
from provisioner.env.record import (DEFAULT_NAME, RECORD_NAME, check_name, default_prefix, expand_path,
                                    is_building_now, read_record, read_registry, record_path)
from provisioner.env.sources import (check_url, find_local_wheels, local_dir, pin_build, pip_find_links, source_args,
                                     with_local)
from provisioner.errors import ProvisionError, UsageError

if TYPE_CHECKING:
    from provisioner.env.choose import Choice, MachineFacts, Unchecked
    from provisioner.profiles import Profile


@dataclass(frozen=True)
class CreateOptions:
    """What `env create` was asked for (CLI options, or `up`'s pass-through)."""

    name: str | None = None
    prefix: Path | None = None
    profile: str | None = "auto"
    cuda: str | None = None
    backend: str = "auto"
    python: str | None = None
    torch: str | None = None
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    installer: str = "auto"
    allow_insecure_index: bool = False
    from_lock: Path | None = None
    force: bool = False
    repair: bool = False                 # rebuild provision's own half-built or damaged env (what `up` does)
    #: --dry-run: the plan only prints, so it runs no conda command (conda's envs directory comes from
    #: its settings, or is left to the build) and keeps a refusal for after the plan is shown
    dry_run: bool = False


@dataclass(frozen=True)
class CreatePlan:
    """Every command `env create` will run, decided before anything changes."""

    action: str                          # "create" | "replace" | "up-to-date"
    location: Location
    backend: str                         # "venv" | "conda" | "mamba" | "micromamba"
    installer: str                       # "pip" | "uv"
    profile: Profile
    choice: Choice | None                # None when the profile came from a lock
    facts: MachineFacts
    python_version: str
    python: Path                         # the environment's interpreter (once created)
    interpreter: Path | None             # the base interpreter a venv is made from
    torch_requirements: tuple[str, ...]
    package_requirements: tuple[str, ...]
    torch_index_url: str
    local_wheels: Mapping[str, Path]
    index_url: str | None                # the default index given to uv (pip reads its own)
    extra_index_urls: tuple[str, ...]
    find_links: tuple[str, ...]
    steps: tuple[Step, ...]
    spec: Mapping[str, Any]              # what "the same environment" means (compared on reruns)
    options: CreateOptions
    existing: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    from_lock: Path | None = None
    root: Path = Path("/")
    #: a named CUDA build this machine cannot check (no usable driver/GPU): built anyway, with a warning
    unchecked: Unchecked | None = None
    #: a dry run's plan of a named build this machine visibly cannot run: raised once it is shown
    refusal: ProvisionError | None = None
    #: uv's --torch-backend tag the install steps use (None: torch from its index or local wheels)
    torch_backend: str | None = None
    #: the lock's pylock.toml the environment is installed from (None: installed from the requirements)
    pylock: Path | None = None

    @property
    def prefix(self) -> Path:
        return self.location.prefix

    @property
    def torch_source(self) -> str:
        """Where torch comes from: "local" when local wheels stand in for its index, else "index"."""
        return "local" if self.local_wheels else "index"

    @property
    def warnings(self) -> tuple[str, ...]:
        """One line each, for stderr: what could not be checked here, and where it is checked."""
        return (self.unchecked.line(),) if self.unchecked is not None else ()

    def require_runnable(self) -> None:
        """Raise the refusal a dry run kept (a real run raises it before planning anything)."""
        if self.refusal is not None:
            raise self.refusal

    def describe(self) -> str:
        loc = self.location
        where = f"{loc.prefix}" + (f" (conda env '{loc.conda_name}')" if loc.conda_name else "")
        if self.action == "up-to-date":
            built = (self.existing or {}).get("completed") or "earlier"
            return (f"Environment {where} is up to date: profile {self.profile.name}, "
                    f"{' '.join(self.torch_requirements)}, built {built}. Nothing to do.")
        if loc.pending:
            where = f"conda env '{loc.conda_name}' in {self.backend}'s envs directory"
        lines = [f"Environment: {where} ({self.backend}"
                 + (", replacing the existing one)" if self.action == "replace" else ", new)"),
                 f"Machine:     {self.facts.summary()}"]
        if self.from_lock is not None:
            lines.append(f"Profile:     {self.profile.name} as locked in {self.from_lock}")
        elif self.choice is not None:
            lines.append(f"Profile:     {self.profile.name}: " + "; ".join(self.choice.reasons))
            lines += [f"             not {n}: {why}" for n, why in self.choice.rejected]
        interp = f" ({self.interpreter})" if self.interpreter else ""
        lines.append(f"Python:      {self.python_version}{interp}")
        lines.append(f"Installer:   {self.installer}")
        if self.torch_source == "local":
            files = ", ".join(str(p) for p in self.local_wheels.values())
            lines.append(f"torch:       {' '.join(self.torch_requirements)} from local wheel(s) {files} "
                         f"(the profile's index {self.torch_index_url} is not needed)")
        else:
            lines.append(f"torch:       {' '.join(self.torch_requirements)} from {self.torch_index_url}")
        lines.append(f"packages:    {' '.join(self.package_requirements) or '(none)'} "
                     "from the default index")
        lines.append("Steps:")
        for i, step in enumerate(self.steps, 1):
            lines.append(f"  {i}. {step.title}")
            lines.append(f"       {step.shown()}")
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "prefix": None if self.location.pending else str(self.prefix),
            "name": self.location.name,
            "conda_name": self.location.conda_name,
            "backend": self.backend,
            "installer": self.installer,
            "profile": self.profile.name,
            "choice": self.choice.to_dict() if self.choice else None,
            "from_lock": str(self.from_lock) if self.from_lock else None,
            "machine": self.facts.to_dict(),
            "python_version": self.python_version,
            "python": str(self.python),
            "interpreter": str(self.interpreter) if self.interpreter else None,
            "torch": {"requirements": list(self.torch_requirements), "source": self.torch_source,
                      "index_url": self.torch_index_url,
                      "local_wheels": {k: str(v) for k, v in self.local_wheels.items()}},
            "packages": list(self.package_requirements),
            "indexes": {"index_url": self.index_url, "extra_index_urls": list(self.extra_index_urls),
                        "find_links": list(self.find_links)},
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "refused": self.refusal.message if self.refusal is not None else None,
        }


def _location(options: CreateOptions, backend: EnvBackend, environ: Mapping[str, str],
              root: Path = Path("/")) -> tuple[Location, list[str]]:
    """Where the environment goes, and a note when a dry run could not ask conda."""
    if options.prefix is not None and options.name is not None:
        raise UsageError("--name and --prefix name the environment twice",
                         hint="pass one of them")
    if options.prefix is not None:
        prefix = expand_path(options.prefix, environ)
        return Location(prefix, prefix.name), []
    name = check_name(options.name or DEFAULT_NAME)
    if not isinstance(backend, CondaBackend):
        return Location(default_prefix(name, environ), name), []
    if not options.dry_run:
        return Location(backend.envs_dir(environ) / name, name, conda_name=name), []
    # A dry run runs no conda command: conda's own settings name the envs directory, or the build will.
    ask = f"`{backend.flavor} info --json`"
    found = backend.configured_envs_dir(environ, root)
    if found is not None:
        envs, source = found
        return Location(envs / name, name, conda_name=name), [
            f"{backend.flavor}'s envs directory {envs} is read from {source} (a dry run runs no "
            f"{backend.flavor} command); the build asks {ask}"]
    return Location(Path(f"<{backend.flavor} envs dir>") / name, name, conda_name=name, pending=True), [
        f"a dry run runs no {backend.flavor} command, so the build asks {ask} for the envs directory "
        f"(shown as <{backend.flavor} envs dir>), and checks there whether '{name}' exists already"]


def _existing(location: Location, environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The record of what is at the location; raise when something provision did not make is there."""
    prefix = location.prefix
    record = read_record(prefix)
    if record is not None:
        return record
    if not prefix.exists() and not prefix.is_symlink():
        return None
    if str(prefix) in read_registry(environ):
        # ours, killed between creating the prefix and writing the record
        return {"status": "building", "profile": None, "spec": None}
    if prefix.is_dir() and not any(prefix.iterdir()):
        return None                       # an empty directory: nothing to lose
    raise ProvisionError(
        f"{prefix} already exists and was not created by provision (no {RECORD_NAME} in it); "
        "provision never deletes what it did not create",
        hint="choose another --prefix or --name, or move that directory away yourself")


# --- deciding, one concern at a time ----------------------------------------------------------


@dataclass(frozen=True)
class ProfileSource:
    """The profile to build, and where it came from: the machine's choice, or a lock file."""

    profile: Profile
    choice: Choice | None
    lock: lockmod.Lock | None
    unchecked: Unchecked | None = None          # what this machine cannot check (the warning)
    refusal: ProvisionError | None = None       # kept for a dry run, raised after its plan


@dataclass(frozen=True)
class Sources:
    """Where the wheels come from."""

    torch_index: str                        # the torch index (the profile's, the lock's, or --index-url)
    extra: tuple[str, ...]                  # --extra-index-url
    links: tuple[str, ...]                  # --find-links
    env_links: tuple[str, ...]              # PIP_FIND_LINKS, or find-links in pip's configuration
    env_index: str | None                   # PIP_INDEX_URL
    local: Mapping[str, Path]               # pinned builds found in a local wheel folder

    @property
    def all_links(self) -> tuple[str, ...]:
        return self.links + tuple(u for u in self.env_links if u not in self.links)

    @property
    def torch_source(self) -> str:
        return "local" if self.local else "index"


def resolve_profile(options: CreateOptions, facts: MachineFacts, environ: Mapping[str, str],
                    profiles: Mapping[str, Profile] | None) -> ProfileSource:
    """--from-lock, else --profile / --cuda / auto.

    A lock or a named profile may be for another machine: where this one shows no usable driver or
    GPU it is planned with a warning (ProfileSource.unchecked); where it shows the build cannot run
    (a driver too old, a GPU without kernels) it is refused, after the plan in a dry run.
    """
    from provisioner import profiles as profmod
    from provisioner.env import choose
    from provisioner.versions import CudaVersion

    if options.from_lock is not None:
        if options.torch or options.cuda or (options.profile not in (None, "", "auto")):
            raise UsageError("--from-lock rebuilds exactly what the lock says",
                             hint="drop --profile, --cuda and --torch, or drop --from-lock")
        lock_file = lockmod.read(expand_path(options.from_lock, environ))
        profile = lock_file.as_profile()
        problems = choose.profile_problems(profile, facts, named=True)
        refusal = None
        if problems:
            refusal = ProvisionError(
                f"{lock_file.path} is a {lock_file.variant} build of profile {lock_file.profile_name} "
                f"that this machine cannot run: " + "; ".join(problems),
                hint="rebuild for this machine with `provision env create --profile auto` "
                     "(the lock's package versions are kept in its 'packages' section)")
            if not options.dry_run:
                raise refusal
        if lock_file.pylock is not None:
            check_reference(lock_file.pylock, lock_file.pylock_sha256, lock_file.path)
        gap = None if refusal else choose.unchecked(
            facts, profile, what=f"the lock's {lock_file.variant} build (profile {lock_file.profile_name})")
        return ProfileSource(profile, None, lock_file, gap, refusal)
    cuda = CudaVersion.parse(options.cuda) if options.cuda else None
    requested = options.profile if options.profile not in (None, "", "auto") else None
    if requested and cuda is not None:
        raise UsageError("--profile and --cuda both choose the profile", hint="pass one of them")
    if requested and profiles is None:
        profmod.get(requested, environ)     # a broken user profile of that name is an error, not skipped
    choice = choose.choose_profile(facts, profiles if profiles is not None else profmod.load_all(environ),
                                   requested=requested, cuda=cuda, keep_refusal=options.dry_run)
    return ProfileSource(choice.profile, choice, None, choice.unchecked, choice.refusal)


def python_version(options: CreateOptions, source: ProfileSource) -> tuple[str, list[str]]:
    """The environment's Python X.Y, and a note when it differs from the lock's."""
    version = options.python or source.profile.python
    if not re.fullmatch(r"3\.\d{1,2}", version):
        raise UsageError(f"--python {version} is not a Python version", hint="write it as 3.11")
    notes = []
    if source.lock is not None and source.lock.python != version:
        notes.append(f"the lock was built with Python {source.lock.python}; building with "
                     f"{version} may resolve other wheels")
    return version, notes


def wheel_sources(options: CreateOptions, source: ProfileSource, torch_reqs: Sequence[str],
                  python: str, environ: Mapping[str, str], platforms: Sequence[str] | None = None) -> Sources:
    """Index URLs (https unless allowed), wheel folders (which must exist), and the local pinned builds
    that install on `platforms` (this machine's by default; a bundle's target's)."""
    allow = options.allow_insecure_index
    default_index = source.lock.torch_index_url if source.lock else source.profile.torch_index_url
    torch_index = check_url(options.index_url or default_index,
                            option="--index-url" if options.index_url else "the torch index",
                            allow_insecure=allow)
    extra = tuple(check_url(u, option="--extra-index-url", allow_insecure=allow)
                  for u in options.extra_index_urls)
    links = tuple(check_url(u, option="--find-links", allow_insecure=allow) for u in options.find_links)
    for u in links:
        folder = local_dir(u)
        # pip and uv only warn about a missing folder and then go to the index: say it now
        if folder is not None and not expand_path(folder, environ).is_dir():
            raise UsageError(f"--find-links {u}: no such folder",
                             hint="give the folder that holds the wheel files (or an https:// URL)")
    # pip reads PIP_FIND_LINKS / PIP_INDEX_URL and its config files itself; uv reads none of them, so
    # for uv they are passed explicitly (and the local-wheel search sees them in both cases). pip is
    # asked, with the environ the install steps get: first the base interpreter a venv is made from.
    env_links = pip_find_links(step_environ(environ), [find_interpreter(python, environ)[0]])
    sources = Sources(torch_index, extra, links, env_links, environ.get("PIP_INDEX_URL") or None, {})
    # A local wheel folder that already holds the exact pinned builds answers for the torch index
    # (air-gapped machines, mirrors, CI): the labelled pin cannot match any other build.
    if not options.index_url:
        local = find_local_wheels(torch_reqs, sources.all_links, python, platforms) or {}
        sources = replace(sources, local=local)
    return sources


def requirements(options: CreateOptions, source: ProfileSource) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(torch pinned to the profile's build, everything else by the profile's ranges), or the lock's."""
    if source.lock is not None:
        return tuple(source.lock.torch_requirements), tuple(source.lock.requirements())
    profile = source.profile
    return (tuple(pin_build(r, profile.variant) for r in profile.torch_requirements(options.torch)),
            tuple(profile.package_requirements()))


def tools(options: CreateOptions, python: str,
          environ: Mapping[str, str]) -> tuple[Installer, EnvBackend, Path | None, list[str]]:
    """(installer, backend, the base interpreter a venv is made from, notes)."""
    installer = pick_installer(options.installer, environ)
    base_python, note = find_interpreter(python, environ)
    backend = choose_backend(options.backend, environ, options.channels, installer, base_python)
    interpreter: Path | None = base_python
    if isinstance(backend, CondaBackend):
        interpreter, note = None, None   # conda brings its own python=X.Y
    if note and options.python:
        import sys

        current = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise UsageError(f"--python {python}: no python{python} on PATH to make the venv from",
                         hint=f"install Python {python} (or put it on PATH), use a conda backend "
                              f"(--backend conda/mamba/micromamba bring python={python}), or pass --python {current}")
    notes = [note] if note else []
    if options.channels and not isinstance(backend, CondaBackend):
        notes.append("--channel applies to conda backends only; ignored for a venv")
    return installer, backend, interpreter, notes


def decide_existing(existing: Mapping[str, Any] | None, *, spec: Mapping[str, Any], python: Path,
                    python_exists: bool, building_now: bool, force: bool, prefix: Path, profile: str,
                    damage: Sequence[str] = (), repair: bool = False) -> str:
    """What to do with what is already at the prefix: "create", "up-to-date" or "replace".

    A pure function of the facts about the prefix; every refusal is a ProvisionError naming the fix.
    """
    if existing is None:
        return "create"
    status = str(existing.get("status") or "building")
    if status == "complete" and existing.get("spec") == spec and python_exists and not damage:
        return "up-to-date"
    if status != "complete" and building_now:
        raise ProvisionError(f"{prefix} is being built right now by another `provision env create`",
                             hint="wait for it to finish, then run this again")
    if force or (repair and (status != "complete" or damage)):
        return "replace"
    if damage:
        raise ProvisionError(f"{prefix} is damaged: " + "; ".join(damage[:3])
                             + (f" (and {len(damage) - 3} more)" if len(damage) > 3 else ""),
                             hint="rebuild it with --force (it was created by provision, so it may be replaced)")
    if status != "complete":
        raise ProvisionError(
            f"{prefix} is half-built: an earlier `env create` for profile "
            f"{existing.get('profile') or '?'} did not finish" + _failure(existing),
            hint="rebuild it with --force (it was created by provision, so it may be replaced)")
    if not python_exists:
        raise ProvisionError(f"{prefix} is broken: {python} is missing", hint="rebuild it with --force")
    raise ProvisionError(
        f"{prefix} holds an environment built from " + _what(existing)
        + f", not {_what({'profile': profile, 'spec': spec})}",
        hint="replace it with --force, or build the new one elsewhere with --name/--prefix")


def build_steps(action: str, *, location: Location, existing: Mapping[str, Any] | None, backend: EnvBackend,
                installer: Installer, python: Path, python_version: str, torch_reqs: Sequence[str],
                package_reqs: Sequence[str], sources: Sources, profile: Profile,
                environ: Mapping[str, str], pylock: Path | None = None,
                backend_tag: str | None = None) -> tuple[Step, ...]:
    """The commands, in order: remove (replace), create, install torch, install packages (or the
    lock's pylock.toml), verify, record."""
    if action == "up-to-date":
        return ()
    steps: list[Step] = []
    if action == "replace":
        steps.append(remove_step(location, existing, backend, environ))
    steps.append(backend.create(location, python_version))
    if pylock is not None:
        steps.append(pylock_step(installer, python, pylock, location, exact=not isinstance(backend, CondaBackend)))
    else:
        steps += install_steps(installer, backend, python, torch_reqs, package_reqs, sources, backend_tag, environ)
    steps.append(Step("verify", "verify the environment", (), detail=(
        f"run the verify environment checks with {python} against profile {profile.name}")))
    steps.append(Step("record", "record and lock", (), detail=(
        f"mark it complete in {record_path(location.prefix)}; write "
        f"{location.prefix / lockmod.LOCK_NAME} and {location.prefix / PYLOCK_NAME}"
        + (" (copied from the lock)" if pylock is not None else
           " (uv pip compile of the installed versions: every wheel's URL and hashes)"))))
    return tuple(steps)


def install_steps(installer: Installer, backend: EnvBackend, python: Path, torch_reqs: Sequence[str],
                  package_reqs: Sequence[str], sources: Sources, backend_tag: str | None,
                  environ: Mapping[str, str]) -> list[Step]:
    """torch from its index (through uv's `backend_tag` where torch_backend() gave one, or local wheels),
    then the packages with torch pinned."""
    steps: list[Step] = []
    uv = installer.uv is not None
    torch_args = list(torch_reqs)
    if backend_tag is not None:
        # uv sends only the PyTorch packages to the PyTorch index, everything else to the default one
        torch_args += ["--torch-backend", backend_tag]
        if sources.env_index:
            torch_args += ["--index-url", sources.env_index]
    elif sources.torch_source == "index":
        torch_args += ["--index-url", sources.torch_index]
    elif uv and sources.env_index:
        torch_args += ["--index-url", sources.env_index]       # torch's own dependencies
    torch_links = with_local(sources.all_links if uv else sources.links, sources.local)
    torch_args += source_args(sources.extra, torch_links, uv, environ)
    steps.append(replace(backend.pip_install(python, torch_args, "install torch"), key="torch"))
    if package_reqs:
        # torch again, pinned: the resolver then keeps the installed build, whatever the packages ask for
        pkg_args = [*torch_reqs, *package_reqs]
        if backend_tag is not None:
            pkg_args += ["--torch-backend", backend_tag]
        if uv and sources.env_index:
            pkg_args += ["--index-url", sources.env_index]
        pkg_args += source_args(sources.extra, sources.all_links if uv else sources.links, uv, environ)
        steps.append(replace(backend.pip_install(python, pkg_args, "install packages"), key="packages"))
    return steps


#: The PyTorch index a `--torch-backend TAG` stands for (uv's own mapping, for the CUDA and CPU builds).
PYTORCH_INDEX = "https://download.pytorch.org/whl/"


def torch_backend(installer: Installer, sources: Sources, profile: Profile,
                  environ: Mapping[str, str]) -> str | None:
    """uv's `--torch-backend` tag for the profile's build, where it means the same index.

    Only when uv installs, torch comes from the profile's own PyTorch index (not a mirror given with
    --index-url, not local wheels), and this uv knows the tag (older uv releases lack the newest CUDA
    tags): then uv routes torch and its companions to that index and everything else to the default
    index, which `--index-url` plus `unsafe-best-match` only approximated.
    """
    if installer.uv is None or sources.torch_source != "index":
        return None
    if sources.torch_index.rstrip("/") != PYTORCH_INDEX + profile.variant:
        return None
    if profile.variant not in uv_torch_backends(installer.uv, environ):
        return None
    return profile.variant


_BACKENDS: dict[str, frozenset[str]] = {}


def uv_torch_backends(uv: Path, environ: Mapping[str, str]) -> frozenset[str]:
    """The `--torch-backend` values this uv accepts, from its own help text (asked once per uv)."""
    key = str(uv)
    if key not in _BACKENDS:
        from provisioner import proc

        try:
            text = proc.run([str(uv), "pip", "install", "--help"], env=environ, timeout=QUERY_TIMEOUT).stdout
        except ProvisionError:
            text = ""
        found = re.search(r"--torch-backend.*?possible values:([^\]]*)\]", text, re.S)
        _BACKENDS[key] = frozenset(v.strip() for v in found.group(1).split(",")) if found else frozenset()
    return _BACKENDS[key]


def pylock_step(installer: Installer, python: Path, pylock: Path, location: Location, *, exact: bool) -> Step:
    """Install exactly the pylock.toml's wheels, every hash checked (uv natively, pip from hashes)."""
    reqs = None if installer.uv is not None else location.prefix / PIP_HASHES
    argv = install_argv(uv=installer.uv, python=python, lock_path=pylock, exact=exact, requirements=reqs)
    detail = f"from {pylock}" + (f" (as {reqs}, pip's hash-checking mode)" if reqs else "")
    return Step("pylock", "install from pylock.toml", tuple(argv), INSTALL_TIMEOUT, detail)


#: pip cannot read pylock.toml: apply() writes its hash-checking requirements file here, then removes it.
PIP_HASHES = ".provision-pylock-requirements.txt"


def plan_create(options: CreateOptions, *, root: Path, environ: Mapping[str, str],
                facts: MachineFacts | None = None,
                profiles: Mapping[str, Profile] | None = None) -> CreatePlan:
    """Decide everything `env create` will do; reads the machine (once), changes nothing."""
    if facts is None:
        from provisioner import facts as facts_mod

        facts = facts_mod.gather_machine(root=root, environ=environ).machine()
    source = resolve_profile(options, facts, environ, profiles)
    version, notes = python_version(options, source)
    torch_reqs, package_reqs = requirements(options, source)
    sources = wheel_sources(options, source, torch_reqs, version, environ)
    installer, backend, interpreter, tool_notes = tools(options, version, environ)
    location, where_notes = _location(options, backend, environ, root)
    python = backend.python(location.prefix)
    spec = {"profile": source.profile.name, "python": version, "torch": list(torch_reqs),
            "packages": list(package_reqs), "backend": backend.name}
    existing = None if location.pending else _existing(location, environ)
    building = existing is not None and existing.get("status") != "complete" and is_building_now(
        location.prefix, environ)
    damage: list[str] = []
    if existing is not None and existing.get("status") == "complete" and existing.get("spec") == spec \
            and python.exists():
        # "up to date" is what the environment holds, not what its record says
        damage = lockmod.installed_problems(python, location.prefix, environ)
    action = decide_existing(existing, spec=spec, python=python, python_exists=python.exists(),
                             building_now=building, damage=damage, repair=options.repair,
                             force=options.force, prefix=location.prefix, profile=source.profile.name)
    pylock = source.lock.pylock if source.lock else None
    # decided once: the install steps use the tag, and so does the pylock.toml compile after them
    tag = (torch_backend(installer, sources, source.profile, environ)
           if action != "up-to-date" and pylock is None else None)
    steps = build_steps(action, location=location, existing=existing, backend=backend, installer=installer,
                        python=python, python_version=version, torch_reqs=torch_reqs,
                        package_reqs=package_reqs, sources=sources, profile=source.profile, environ=environ,
                        pylock=pylock, backend_tag=tag)
    uv = installer.uv is not None
    return CreatePlan(
        action=action, location=location, backend=backend.name, installer=installer.name,
        profile=source.profile, choice=source.choice, facts=facts, python_version=version, python=python,
        interpreter=interpreter, torch_requirements=torch_reqs, package_requirements=package_reqs,
        torch_index_url=sources.torch_index, local_wheels=sources.local,
        index_url=sources.env_index, extra_index_urls=sources.extra,
        find_links=sources.all_links if uv else sources.links, steps=steps, spec=spec, options=options,
        existing=existing, notes=tuple(notes + tool_notes + where_notes),
        from_lock=source.lock.path if source.lock else None, root=root,
        unchecked=source.unchecked, refusal=source.refusal, torch_backend=tag, pylock=pylock,
    )


def _failure(record: Mapping[str, Any]) -> str:
    error = record.get("error")
    return f" (it failed: {str(error).splitlines()[0]})" if error else " (it was interrupted)"


def _what(record: Mapping[str, Any]) -> str:
    spec = record.get("spec") or {}
    torch = " ".join(spec.get("torch") or [])
    return f"profile {record.get('profile') or '?'}" + (f" ({torch}, Python {spec.get('python')})"
                                                         if torch else "")


def remove_step(location: Location, existing: Mapping[str, Any] | None, backend: EnvBackend,
                 environ: Mapping[str, str]) -> Step:
    kind = (existing or {}).get("backend")
    if kind in CONDA_BACKENDS:
        exe = which(str(kind), environ)
        if exe is not None and location.prefix.exists():
            return CondaBackend(exe, str(kind)).remove(location)
    return Step("remove", "remove the environment", (), QUERY_TIMEOUT, f"delete {location.prefix}")


