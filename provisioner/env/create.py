"""`env create`: plan every command first (changes nothing), then apply it, verify, record and lock."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager


from provisioner.env import lock as lockmod
from provisioner.errors import CommandError, ProvisionError, UsageError

if TYPE_CHECKING:
    from provisioner.env.choose import Choice, MachineFacts
    from provisioner.profiles import Profile
    from provisioner.report import Check
from provisioner.env.record import DEFAULT_NAME, RECORD_NAME, RECORD_VERSION, build_lock_path, check_name, default_prefix, expand_path, flock, is_building_now, now, read_record, read_registry, record_path, update_registry, write_record
from provisioner.env.backends import CONDA_BACKENDS, CondaBackend, EnvBackend, Location, Progress, QUERY_TIMEOUT, StatusFactory, Step, choose_backend, find_interpreter, pick_installer, run_step, step_environ, which
from provisioner.env.sources import as_list, check_url, find_local_wheels, local_dir, pin_build, pip_find_links, source_args


TORCH_FAMILY = lockmod.TORCH_FAMILY


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
    torch_source: str                    # "index" | "local"
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

    @property
    def prefix(self) -> Path:
        return self.location.prefix

    def describe(self) -> str:
        loc = self.location
        where = f"{loc.prefix}" + (f" (conda env '{loc.conda_name}')" if loc.conda_name else "")
        if self.action == "up-to-date":
            built = (self.existing or {}).get("completed") or "earlier"
            return (f"Environment {where} is up to date: profile {self.profile.name}, "
                    f"{' '.join(self.torch_requirements)}, built {built}. Nothing to do.")
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
            "prefix": str(self.prefix),
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
        }


@dataclass(frozen=True)
class EnvResult:
    prefix: Path
    python: Path
    profile: str
    status: str                          # "created" | "up-to-date"
    lock_path: Path | None
    seconds: float = 0.0
    plan: CreatePlan | None = None
    checks: tuple[Check, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "prefix": str(self.prefix), "python": str(self.python),
                "profile": self.profile, "lock": str(self.lock_path) if self.lock_path else None,
                "seconds": round(self.seconds, 2),
                "checks": [c.to_dict() for c in self.checks]}


def _location(options: CreateOptions, backend: EnvBackend, environ: Mapping[str, str]) -> Location:
    if options.prefix is not None and options.name is not None:
        raise UsageError("--name and --prefix name the environment twice",
                         hint="pass one of them")
    if options.prefix is not None:
        prefix = expand_path(options.prefix, environ)
        return Location(prefix, prefix.name)
    name = check_name(options.name or DEFAULT_NAME)
    if isinstance(backend, CondaBackend):
        return Location(backend.envs_dir(environ) / name, name, conda_name=name)
    return Location(default_prefix(name, environ), name)


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


def plan_create(options: CreateOptions, *, root: Path, environ: Mapping[str, str],
                facts: MachineFacts | None = None,
                profiles: Mapping[str, Profile] | None = None) -> CreatePlan:
    """Decide everything `env create` will do; reads the machine, changes nothing."""
    from provisioner.env import choose
    from provisioner import profiles as profmod

    if facts is None:
        facts = choose.gather_facts(root, environ)

    choice: Choice | None = None
    lock_file: lockmod.Lock | None = None
    if options.from_lock is not None:
        if options.torch or options.cuda or (options.profile not in (None, "", "auto")):
            raise UsageError("--from-lock rebuilds exactly what the lock says",
                             hint="drop --profile, --cuda and --torch, or drop --from-lock")
        lock_file = lockmod.read(expand_path(options.from_lock, environ))
        problems = lockmod.check_runnable(lock_file, facts)
        if problems:
            raise ProvisionError(
                f"{lock_file.path} is a {lock_file.variant} build of profile {lock_file.profile_name} "
                f"that this machine cannot run: " + "; ".join(problems),
                hint="rebuild for this machine with `provision env create --profile auto` "
                     "(the lock's package versions are kept in its 'packages' section)")
        profile = lock_file.as_profile()
    else:
        if profiles is None:
            profiles = profmod.load_all(environ)
        from provisioner.versions import CudaVersion

        cuda = CudaVersion.parse(options.cuda) if options.cuda else None
        requested = options.profile if options.profile not in (None, "", "auto") else None
        if requested and cuda is not None:
            raise UsageError("--profile and --cuda both choose the profile", hint="pass one of them")
        choice = choose.choose_profile(facts, profiles, requested=requested, cuda=cuda)
        profile = choice.profile

    python_version = options.python or profile.python
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise UsageError(f"--python {python_version} is not a Python version", hint="write it as 3.11")
    notes: list[str] = []
    if lock_file is not None and lock_file.python != python_version:
        notes.append(f"the lock was built with Python {lock_file.python}; building with "
                     f"{python_version} may resolve other wheels")

    # where wheels come from
    allow = options.allow_insecure_index
    torch_index = check_url(options.index_url or (lock_file.torch_index_url if lock_file
                                                  else profile.torch_index_url),
                            option="--index-url" if options.index_url else "the torch index",
                            allow_insecure=allow)
    extra = tuple(check_url(u, option="--extra-index-url", allow_insecure=allow)
                  for u in options.extra_index_urls)
    links = tuple(check_url(u, option="--find-links", allow_insecure=allow)
                  for u in options.find_links)
    for u in links:
        folder = local_dir(u)
        # pip and uv only warn about a missing folder and then go to the index: say it now
        if folder is not None and not expand_path(folder, environ).is_dir():
            raise UsageError(f"--find-links {u}: no such folder",
                             hint="give the folder that holds the wheel files (or an https:// URL)")

    # what to install: torch pinned to the profile's build, everything else by the profile's ranges
    if lock_file is not None:
        torch_reqs = tuple(lock_file.torch_requirements)
        package_reqs = tuple(lock_file.requirements())
    else:
        torch_reqs = tuple(pin_build(r, profile.variant)
                           for r in profile.torch_requirements(options.torch))
        package_reqs = tuple(profile.package_requirements())

    installer = pick_installer(options.installer, environ)
    base_python, note = find_interpreter(python_version, environ)
    backend = choose_backend(options.backend, environ, options.channels, installer, base_python)
    interpreter: Path | None = base_python
    if isinstance(backend, CondaBackend):
        interpreter, note = None, None   # conda brings its own python=X.Y
    if note:
        notes.append(note)
    if options.channels and not isinstance(backend, CondaBackend):
        notes.append("--channel applies to conda backends only; ignored for a venv")

    # pip reads PIP_FIND_LINKS / PIP_INDEX_URL / PIP_EXTRA_INDEX_URL itself; uv reads none of them,
    # so for uv they are passed explicitly (and the local-wheel search sees them in both cases).
    env_links = pip_find_links(environ)
    env_index = environ.get("PIP_INDEX_URL") or None
    uv = installer.uv is not None
    all_links = links + tuple(u for u in env_links if u not in links)

    # A local wheel folder that already holds the exact pinned builds answers for the torch index
    # (air-gapped machines, mirrors, CI): the labelled pin cannot match any other build.
    local: dict[str, Path] = {}
    if not options.index_url:
        local = find_local_wheels(torch_reqs, all_links, python_version) or {}
    torch_source = "local" if local else "index"

    location = _location(options, backend, environ)
    python = backend.python(location.prefix)

    spec = {"profile": profile.name, "python": python_version, "torch": list(torch_reqs),
            "packages": list(package_reqs), "backend": backend.name}

    existing = _existing(location, environ)
    action = "create"
    if existing is not None:
        status = str(existing.get("status") or "building")
        built_from = existing.get("profile")
        if status == "complete" and existing.get("spec") == spec and python.exists():
            action = "up-to-date"
        elif status != "complete" and is_building_now(location.prefix, environ):
            raise ProvisionError(f"{location.prefix} is being built right now by another "
                                 "`provision env create`",
                                 hint="wait for it to finish, then run this again")
        elif options.force:
            action = "replace"
        elif status != "complete":
            raise ProvisionError(
                f"{location.prefix} is half-built: an earlier `env create` for profile "
                f"{built_from or '?'} did not finish" + _failure(existing),
                hint="rebuild it with --force (it was created by provision, so it may be replaced)")
        elif not python.exists():
            raise ProvisionError(f"{location.prefix} is broken: {python} is missing",
                                 hint="rebuild it with --force")
        else:
            raise ProvisionError(
                f"{location.prefix} holds an environment built from "
                + _what(existing) + f", not {_what({'profile': profile.name, 'spec': spec})}",
                hint="replace it with --force, or build the new one elsewhere with --name/--prefix")

    steps: list[Step] = []
    if action == "replace":
        steps.append(remove_step(location, existing, backend, environ))
    if action != "up-to-date":
        steps.append(backend.create(location, python_version))
        torch_args = list(torch_reqs)
        if torch_source == "index":
            torch_args += ["--index-url", torch_index]
        elif uv and env_index:
            torch_args += ["--index-url", env_index]       # torch's own dependencies
        # name the folders holding the local wheels, so the plan shows where torch comes from
        wheel_dirs = tuple(str(p.parent) for p in local.values())
        torch_links = tuple(dict.fromkeys((all_links if uv else links) + wheel_dirs))
        torch_args += source_args(extra, torch_links, uv, environ)
        steps.append(replace(backend.pip_install(python, torch_args, "install torch"), key="torch"))
        if package_reqs:
            # torch again, pinned: the resolver then keeps the installed build, whatever the
            # packages ask for
            pkg_args = [*torch_reqs, *package_reqs]
            if uv and env_index:
                pkg_args += ["--index-url", env_index]
            pkg_args += source_args(extra, all_links if uv else links, uv, environ)
            steps.append(replace(backend.pip_install(python, pkg_args, "install packages"),
                                 key="packages"))
        steps.append(Step("verify", "verify the environment", (), detail=(
            f"run the verify environment checks with {python} against profile {profile.name}")))
        steps.append(Step("record", "record and lock", (), detail=(
            f"mark it complete in {record_path(location.prefix)}; write "
            f"{location.prefix / lockmod.LOCK_NAME}")))

    return CreatePlan(
        action=action, location=location, backend=backend.name, installer=installer.name,
        profile=profile, choice=choice, facts=facts, python_version=python_version, python=python,
        interpreter=interpreter,
        torch_requirements=torch_reqs, package_requirements=package_reqs,
        torch_source=torch_source, torch_index_url=torch_index, local_wheels=local,
        index_url=env_index, extra_index_urls=extra, find_links=all_links if uv else links,
        steps=tuple(steps), spec=spec, options=options, existing=existing, notes=tuple(notes),
        from_lock=lock_file.path if lock_file else None, root=root,
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


def delete_prefix(prefix: Path) -> None:
    try:
        if prefix.is_symlink() or prefix.is_file():
            prefix.unlink()
        elif prefix.exists():
            shutil.rmtree(prefix)
    except OSError as e:
        raise ProvisionError(f"cannot delete {prefix}: {e.strerror or e}"
                             + (f" ({e.filename})" if e.filename and str(e.filename) != str(prefix) else ""),
                             hint="check its permissions (an environment made with sudo needs sudo to "
                                  "remove), then run the command again") from None


def apply_create(plan: CreatePlan, *, environ: Mapping[str, str], progress: Progress | None = None,
                 status: StatusFactory | None = None) -> EnvResult:
    """Run the plan: create, install, verify; mark complete and write the lock only at the end."""
    say = progress or (lambda _msg: None)
    start = time.monotonic()
    prefix = plan.prefix
    if plan.action == "up-to-date":
        lock_path = prefix / lockmod.LOCK_NAME
        return EnvResult(prefix, plan.python, plan.profile.name, "up-to-date",
                         lock_path if lock_path.exists() else None, time.monotonic() - start, plan)

    with flock(build_lock_path(prefix, environ), blocking=False) as got:
        if not got:
            raise ProvisionError(f"{prefix} is being built right now by another `provision env create`",
                                 hint="wait for it to finish, then run this again")
        return _build(plan, environ=environ, say=say, status=status, start=start)


def _build(plan: CreatePlan, *, environ: Mapping[str, str], say: Progress,
           status: StatusFactory | None, start: float) -> EnvResult:
    prefix = plan.prefix
    env = step_environ(environ)
    record: dict[str, Any] = {
        "version": RECORD_VERSION, "status": "building", "profile": plan.profile.name,
        "spec": dict(plan.spec), "backend": plan.backend, "installer": plan.installer,
        "name": plan.location.name, "conda_name": plan.location.conda_name,
        "prefix": str(prefix), "python": str(plan.python.relative_to(prefix)),
        "torch": " ".join(plan.torch_requirements),
        "from_lock": str(plan.from_lock) if plan.from_lock else None,
        "started": now(), "pid": os.getpid(), "error": None,
    }
    total = len(plan.steps)
    checks: tuple[Check, ...] = ()
    lock_path: Path | None = None
    for i, step in enumerate(plan.steps, 1):
        t0 = time.monotonic()
        say(f"[{i}/{total}] {step.title} ...")
        try:
            if step.key == "remove":
                if step.argv:
                    run_step(step, env, status)
                delete_prefix(prefix)
                update_registry(environ, prefix, None)
            elif step.key == "create":
                # the registry first: a run killed inside `venv`/`conda create` leaves a prefix
                # that is still known as provision's own
                update_registry(environ, prefix, {"name": plan.location.name, "backend": plan.backend,
                                                   "profile": plan.profile.name, "created": now()})
                if prefix.is_dir() and not any(prefix.iterdir()):
                    prefix.rmdir()       # conda refuses an existing directory
                run_step(step, env, status)
                if not plan.python.exists():
                    raise ProvisionError(f"`{step.shown()}` finished but {plan.python} does not exist",
                                         hint="run it by hand to see why; then `provision env create "
                                              "--force`")
                write_record(prefix, record)
            elif step.key in ("torch", "packages"):
                run_step(step, env, status)
            elif step.key == "verify":
                checks = _verify(plan, env, status)
            elif step.key == "record":
                found = lockmod.installed(plan.python, env)
                doc = lockmod.build(
                    profile=plan.profile, torch_requirements=plan.torch_requirements, found=found,
                    facts=plan.facts, backend=plan.backend, installer=plan.installer, prefix=prefix,
                    torch_index_url=plan.torch_index_url, index_url=plan.index_url,
                    extra_index_urls=plan.extra_index_urls, find_links=plan.find_links)
                lock_path = lockmod.write(prefix, doc)
                record.update(status="complete", completed=now(), python_version=found.python,
                              torch_installed=found.version("torch"), pid=None)
                write_record(prefix, record)
                update_registry(environ, prefix, {"profile": plan.profile.name,
                                                   "completed": record["completed"]})
        except ProvisionError as e:
            if prefix.exists() and step.key not in ("remove",):
                with contextlib.suppress(OSError):
                    if read_record(prefix) is not None or step.key != "create":
                        record.update(status="building", error=_short_error(step, e), pid=None)
                        write_record(prefix, record)
            raise _step_error(step, e, plan) from None
        say(f"[{i}/{total}] {step.title}: done in {time.monotonic() - t0:.1f} s")
    assert lock_path is not None
    return EnvResult(prefix, plan.python, plan.profile.name, "created", lock_path,
                     time.monotonic() - start, plan, checks)


def _short_error(step: Step, e: ProvisionError) -> str:
    """One line for the record: the step and the last thing the failing tool said."""
    detail = e.message
    if isinstance(e, CommandError):
        lines = [ln.strip() for ln in (e.stderr or e.stdout or e.message).splitlines() if ln.strip()]
        detail = lines[-1] if lines else e.message
    return f"{step.title} failed: {detail.splitlines()[0] if detail else '?'}"


def _step_error(step: Step, e: ProvisionError, plan: CreatePlan) -> ProvisionError:
    if step.key in ("torch", "packages") and isinstance(e, CommandError):
        where = (f"{plan.torch_index_url}" if step.key == "torch" and plan.torch_source == "index"
                 else "the configured indexes")
        return ProvisionError(
            f"{step.title} failed; {plan.prefix} is left half-built\n{e.message}",
            hint=f"check that {where} is reachable and holds "
                 f"{' '.join(plan.torch_requirements if step.key == 'torch' else plan.package_requirements)} "
                 "(--index-url / --find-links point elsewhere); then re-run with --force")
    if step.key == "verify" or isinstance(e, CommandError):
        return ProvisionError(f"{step.title} failed; {plan.prefix} is left half-built\n{e.message}",
                              hint=e.hint or "re-run with --force once the cause is fixed")
    return e


def env_checks(plan: CreatePlan, environ: Mapping[str, str]) -> list[Check]:
    """`provision verify`'s environment checks (env.*) for the new environment, against its profile."""
    from provisioner.env import checks as env_checks_mod
    from provisioner.env import probe as envprobe
    from provisioner.env import target as envtarget
    from provisioner.system import gpu

    target = envtarget.EnvTarget(envtarget.kind_of(plan.prefix), plan.prefix, plan.python)
    info = plan.facts.driver or gpu.DriverInfo(status=plan.facts.driver_status,
                                               error=plan.facts.driver_error)
    probe, problem = envprobe.run(target, environ)
    ctx = env_checks_mod.EnvContext(target=target, profile=plan.profile, profile_requested=True,
                            fix_profile=plan.profile, root=plan.root)
    return env_checks_mod.check_env(probe, info, plan.profile, ctx=ctx, probe_error=problem)


def _verify(plan: CreatePlan, environ: Mapping[str, str], status: StatusFactory | None) -> tuple[Check, ...]:
    """The verify environment checks; completion is recorded only when none fails."""
    from provisioner import report

    ctx: ContextManager[Any] = status("verify the environment") if status else contextlib.nullcontext()
    with ctx:
        checks = tuple(env_checks(plan, environ))
    failed = [c for c in checks if c.status is report.Status.FAIL]
    if failed:
        lines = "\n".join(f"    {c.id}: {c.message}" + (f" (fix: {c.fix})" if c.fix else "")
                          for c in failed)
        raise ProvisionError(f"the new environment failed {len(failed)} verify check(s):\n{lines}",
                             hint=f"see `provision verify --env {plan.prefix}`; fix the cause and "
                                  "re-run with --force")
    return checks


def create_env(*, prefix: Path | str | None = None, name: str | None = None,
               profile: str | None = "auto", cuda: str | None = None, backend: str = "auto",
               python_version: str | None = None, torch: str | None = None,
               index_url: str | None = None, extra_index_url: str | Sequence[str] | None = None,
               find_links: str | Sequence[str] | None = None, channels: Sequence[str] = (),
               installer: str = "auto", allow_insecure_index: bool = False,
               from_lock: Path | str | None = None, force: bool = False,
               root: Path, environ: Mapping[str, str], progress: Progress | None = None,
               status: StatusFactory | None = None, facts: MachineFacts | None = None,
               confirm_download: Callable[[CreatePlan], bool] | None = None) -> EnvResult:
    """Plan and apply in one call (what `provision up` uses); "up-to-date" when nothing changed.

    `confirm_download` is asked before a build that fetches torch from an index (a CUDA build is
    several GB); a False answer raises ProvisionError and changes nothing.
    """
    options = CreateOptions(
        name=name, prefix=Path(prefix) if prefix is not None else None, profile=profile, cuda=cuda,
        backend=backend, python=python_version, torch=torch, index_url=index_url,
        extra_index_urls=as_list(extra_index_url), find_links=as_list(find_links),
        channels=tuple(channels), installer=installer, allow_insecure_index=allow_insecure_index,
        from_lock=Path(from_lock) if from_lock is not None else None, force=force)
    plan = plan_create(options, root=root, environ=environ, facts=facts)
    if (confirm_download is not None and plan.action != "up-to-date" and plan.torch_source == "index"
            and not confirm_download(plan)):
        raise ProvisionError(f"not building {plan.prefix}: the torch download was declined",
                             hint="re-run with --yes, or give a local wheel folder with --find-links")
    return apply_create(plan, environ=environ, progress=progress, status=status)
