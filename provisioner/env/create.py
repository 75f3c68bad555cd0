"""`env create`: plan every command first (changes nothing), then apply it, verify, record and lock."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

from provisioner import fsio
from provisioner.env import lock as lockmod
from provisioner.env import pylock as pylockmod
from provisioner.errors import CommandError, ProvisionError

if TYPE_CHECKING:
    from provisioner.env.choose import MachineFacts
    from provisioner.report import Check
from provisioner.env.backends import Progress, StatusFactory, Step, run_step, step_environ
from provisioner.env.plan import PIP_HASHES, CreateOptions, CreatePlan, plan_create
from provisioner.env.record import RECORD_VERSION, build_lock_path, now, read_record, update_registry, write_record
from provisioner.env.sources import as_list
from provisioner.fsio import locked

TORCH_FAMILY = lockmod.TORCH_FAMILY


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
    plan.require_runnable()
    if plan.location.pending:
        raise ProvisionError("a dry run's plan cannot be applied: conda has not named the envs directory",
                             hint="plan again without dry_run")
    say = progress or (lambda _msg: None)
    start = time.monotonic()
    prefix = plan.prefix
    if plan.action == "up-to-date":
        lock_path = prefix / lockmod.LOCK_NAME
        return EnvResult(prefix, plan.python, plan.profile.name, "up-to-date",
                         lock_path if lock_path.exists() else None, time.monotonic() - start, plan)

    with locked(build_lock_path(prefix, environ), blocking=False) as got:
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
            elif step.key == "pylock":
                _install_pylock(plan, step, env, status)
            elif step.key == "verify":
                checks = _verify(plan, env, status)
            elif step.key == "record":
                found = lockmod.installed(plan.python, env)
                pylock = _write_pylock(plan, found, env, status, say)
                doc = lockmod.build(
                    profile=plan.profile, torch_requirements=plan.torch_requirements, found=found,
                    facts=plan.facts, backend=plan.backend, installer=plan.installer, prefix=prefix,
                    torch_index_url=plan.torch_index_url, index_url=plan.index_url,
                    extra_index_urls=plan.extra_index_urls, find_links=plan.find_links, pylock=pylock)
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


def _install_pylock(plan: CreatePlan, step: Step, env: Mapping[str, str], status: StatusFactory | None) -> None:
    """Install the lock's pylock.toml; for pip, through the hash-checking file written just for it."""
    assert plan.pylock is not None, "build_steps plans a pylock step only for a lock that names one"
    if plan.installer == "uv":
        run_step(step, env, status)
        return
    reqs = plan.prefix / PIP_HASHES
    reqs.write_text(pylockmod.hashed_requirements(pylockmod.read(plan.pylock)))
    try:
        run_step(step, env, status)
    finally:
        reqs.unlink(missing_ok=True)


def _write_pylock(plan: CreatePlan, found: lockmod.Installed, env: Mapping[str, str],
                  status: StatusFactory | None, say: Progress) -> dict[str, Any]:
    """pylock.toml in the prefix: copied from the lock it was built from, else compiled by uv from
    the installed versions through the sources that installed them. Never fails the build: an
    environment that passed its checks is complete; the lock says why it has no pylock."""
    target = plan.prefix / pylockmod.PYLOCK_NAME
    try:
        if plan.pylock is not None:
            fsio.atomic_write(target, plan.pylock.read_bytes(), mode=0o644)
        else:
            _compile_pylock(plan, found, target, env, status)
    except (ProvisionError, OSError) as e:
        target.unlink(missing_ok=True)
        why = e.message if isinstance(e, ProvisionError) else str(e)
        say(f"warning: no {pylockmod.PYLOCK_NAME} written ({why.splitlines()[0]}); "
            f"{lockmod.LOCK_NAME} still records every version")
        return {"file": None, "error": why.splitlines()[0]}
    return {"file": pylockmod.PYLOCK_NAME, "sha256": fsio.sha256_file(target)}


def _compile_pylock(plan: CreatePlan, found: lockmod.Installed, target: Path, env: Mapping[str, str],
                    status: StatusFactory | None) -> None:
    from provisioner.env.backends import which
    from provisioner.env.sources import compile_source_args

    uv = which("uv", env)
    if uv is None:
        raise ProvisionError("uv is not on PATH (it writes pylock.toml)", hint="install uv")
    sources = compile_source_args(index_url=plan.index_url, torch_index=plan.torch_index_url,
                                  torch_backend=plan.torch_backend, local=plan.local_wheels,
                                  extra=plan.extra_index_urls, links=plan.find_links, environ=env)
    pins = "".join(f"{name}=={version}\n" for name, version in found.packages.items())
    fd, tmp = tempfile.mkstemp(prefix=".provision-pins.", suffix=".txt", dir=plan.prefix)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(pins)
        step = Step("pylock", f"write {pylockmod.PYLOCK_NAME}",
                    tuple(pylockmod.compile_argv(uv, requirements=Path(tmp), output=target, sources=sources,
                                                 options=["--no-deps", "--python", str(plan.python)])),
                    pylockmod.COMPILE_TIMEOUT)
        run_step(step, env, status)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _short_error(step: Step, e: ProvisionError) -> str:
    """One line for the record: the step and the last thing the failing tool said."""
    detail = e.message
    if isinstance(e, CommandError):
        lines = [ln.strip() for ln in (e.stderr or e.stdout or e.message).splitlines() if ln.strip()]
        detail = lines[-1] if lines else e.message
    return f"{step.title} failed: {detail.splitlines()[0] if detail else '?'}"


def _step_error(step: Step, e: ProvisionError, plan: CreatePlan) -> ProvisionError:
    if step.key == "pylock" and isinstance(e, CommandError):
        return ProvisionError(
            f"installing from the lock's pylock.toml failed; {plan.prefix} is left half-built\n{e.message}",
            hint="a hash mismatch means a wheel differs from the one locked (a changed mirror or a tampered "
                 "file); an unreachable URL means the wheels must be fetched where the lock says. Re-run with "
                 "--force once fixed")
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
    # a named CUDA build on a machine without a usable driver/GPU: the GPU checks are the target's
    ctx = env_checks_mod.EnvContext(target=target, profile=plan.profile, profile_requested=True,
                                    fix_profile=plan.profile, root=plan.root,
                                    on_target=plan.unchecked.why if plan.unchecked else None)
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
               from_lock: Path | str | None = None, force: bool = False, repair: bool = False,
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
        from_lock=Path(from_lock) if from_lock is not None else None, force=force, repair=repair)
    plan = plan_create(options, root=root, environ=environ, facts=facts)
    if (confirm_download is not None and plan.action != "up-to-date" and plan.torch_source == "index"
            and not confirm_download(plan)):
        raise ProvisionError(f"not building {plan.prefix}: the torch download was declined",
                             hint="re-run with --yes, or give a local wheel folder with --find-links")
    return apply_create(plan, environ=environ, progress=progress, status=status)
