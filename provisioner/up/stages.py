"""The stages of `up`, in order, each with status() for the plan and run() to do it; each calls the
same code as its own command."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Protocol

from provisioner.cuda import command_line
from provisioner.errors import PermissionDenied, ProvisionError
from provisioner.units import gib
from provisioner.up import choose
from provisioner.up.records import Records, fingerprint
from provisioner.up.types import CONFIRM_DOWNLOAD_BYTES, Confirm, Say, StageFailed, StageOutcome, UpOptions, UpState

if TYPE_CHECKING:
    from provisioner.env.choose import Choice
    from provisioner.facts import Facts
    from provisioner.model.choice import ModelChoice
    from provisioner.model.download import Progress

#: Opens a download's progress display: `with up.transfer(title) as update:` (the CLI's ui.transfer).
Transfer = Callable[[str], ContextManager["Progress | None"]]


def no_transfer(title: str) -> ContextManager[None]:
    """No progress display (the default of Up)."""
    return contextlib.nullcontext()


def is_local_model(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def env_prefix(opts: UpOptions, environ: Mapping[str, str]) -> Path:
    from provisioner import env as envmod

    if opts.prefix is not None:
        return Path(os.path.abspath(opts.prefix))
    return Path(envmod.default_prefix(opts.name or envmod.DEFAULT_NAME, environ))


def toolkit_writable(root: Path) -> bool:
    """Whether this user may switch the link: `cuda switch` writes /usr/local and its lock/record dir."""
    from provisioner import cuda
    from provisioner.paths import under_root

    return all(cuda.writable(under_root(root, d)) for d in (cuda.LOCAL, cuda.STATE_DIR))


class Run(Protocol):
    """What a stage may use of the run: options, machine root, the records, the shared state."""

    o: UpOptions
    root: Path
    environ: Mapping[str, str]
    say: Say
    confirm: Confirm
    transfer: Transfer
    records: Records
    state: UpState
    did_work: bool

    def fail(self, name: str, inputs: str, message: str, hint: str | None) -> StageFailed: ...

    def confirm_torch(self, plan: Any) -> bool: ...

    def machine(self) -> Facts: ...

    def choose_model(self) -> ModelChoice: ...


class Stage:
    """One step of the walkthrough: status() for the plan (reads, never changes), run() to do it."""

    name = ""
    title = ""

    def status(self, up: Run) -> tuple[str, str]:
        return "todo", self.title

    def run(self, up: Run) -> StageOutcome:
        raise NotImplementedError


class Diagnose(Stage):
    name, title = "diagnose", "diagnose the machine"

    def status(self, up: Run) -> tuple[str, str]:
        return "check", f"{self.title} (cheap; always re-checked)"

    def run(self, up: Run) -> StageOutcome:
        facts = up.machine()          # read once: by the plan, or here
        up.state.machine = facts.machine()
        info = facts.info
        if info is not None and info.loaded and info.gpus:
            gpus = ", ".join(f"{g.name} ({g.sm}, {gib(g.memory_free)} free)" for g in info.gpus)
            msg = f"driver {info.driver_version} (CUDA {info.cuda.short if info.cuda else '?'}); {gpus}"
        else:
            reason = info.error if info is not None and info.error else "no NVIDIA driver/GPU found"
            msg = f"no usable NVIDIA GPU ({reason}); continuing on the CPU"
        return StageOutcome(self.name, "done", msg, {"facts": up.state.machine.to_dict()})


class ChooseProfile(Stage):
    name, title = "profile", "choose the profile"

    def status(self, up: Run) -> tuple[str, str]:
        planned = _named_choice(up)
        if planned is not None and planned.unchecked is not None:
            return "warn", f"{planned.profile.name}, as named; warning: {planned.unchecked.line()}"
        return "check", f"{self.title} (cheap; always re-checked)"

    def run(self, up: Run) -> StageOutcome:
        from provisioner import profiles
        from provisioner.env import choose
        from provisioner.versions import CudaVersion

        assert up.state.machine is not None
        if up.o.bundle is not None:
            from provisioner.up import from_bundle

            return from_bundle.choose_profile(up, self.name)
        cuda = CudaVersion.parse(up.o.cuda) if up.o.cuda else None
        requested = None if up.o.profile in (None, "", "auto") else up.o.profile
        choice = choose.choose_profile(up.state.machine, profiles.load_all(up.environ),
                                       requested=requested, cuda=cuda)
        up.state.profile = choice.profile
        data = {"profile": choice.profile.name, "reasons": list(choice.reasons),
                "rejected": [list(r) for r in choice.rejected]}
        message = f"{choice.profile.name}: {'; '.join(choice.reasons)}"
        if choice.unchecked is not None:
            # named for another machine: built here, checked there. The plan's row (printed before
            # every run) holds the one warning line; this line points back at it.
            return StageOutcome(self.name, "warn", f"{message}; not checked on this machine (the plan's warning)",
                                dict(data, unchecked=choice.unchecked.line()))
        return StageOutcome(self.name, "done", message, data)


class Toolkit(Stage):
    name, title = "toolkit", "check the CUDA toolkit"

    def status(self, up: Run) -> tuple[str, str]:
        return "check", f"{self.title} (switch only if the profile needs another installed toolkit)"

    def run(self, up: Run) -> StageOutcome:
        from provisioner import cuda

        profile, facts = up.state.profile, up.state.facts
        assert profile is not None and facts is not None and facts.cuda is not None
        if profile.is_cpu or profile.cuda is None:
            return StageOutcome(self.name, "skipped", f"profile {profile.name} needs no CUDA toolkit")
        want = profile.cuda
        link = facts.cuda.link
        state = link.state if link is not None else "unreadable"
        have = link.toolkit.version if link is not None and link.toolkit is not None else None
        if have is not None and (have.major, have.minor) == (want.major, want.minor):
            return StageOutcome(self.name, "done", f"/usr/local/cuda is CUDA {have}, as profile {profile.name} wants")
        installed = [t for t in facts.cuda.toolkits if t.complete and t.version is not None
                     and (t.version.major, t.version.minor) == (want.major, want.minor)]
        note = "torch wheels bring their own CUDA runtime, so this only matters for compiling extensions"
        if not installed:
            fix = command_line(up.root, f"cuda install {want.short}") if want.major >= 13 else None
            return StageOutcome(self.name, "warn", f"no CUDA {want.short} toolkit installed (linked: {have or state}); "
                                f"{note}", {"fix": fix})
        switch = command_line(up.root, f"cuda switch {want.short}")
        needs_root = (f"/usr/local/cuda is {have or state}, profile wants {want.short}; switching needs root, "
                      f"run: sudo {switch}")
        if not toolkit_writable(up.root):
            return StageOutcome(self.name, "warn", needs_root, {"fix": f"sudo {switch}"})
        try:
            plan = cuda.plan_switch(want, up.root, up.environ)
        except PermissionDenied:
            return StageOutcome(self.name, "warn", needs_root, {"fix": f"sudo {switch}"})
        except ProvisionError as e:
            # `cuda switch` refuses (a real directory at the link, ...); the wheel does not need it.
            return StageOutcome(self.name, "warn", f"not switched to CUDA {want.short}: {e.message}; {note}",
                                {"fix": e.hint})
        if not up.o.yes and not up.confirm(f"Switch /usr/local/cuda to CUDA {want.short}?"):
            return StageOutcome(self.name, "warn", f"not switched (declined); run: {switch}", {"fix": switch})
        cuda.apply(plan)
        up.did_work = True
        return StageOutcome(self.name, "ran", f"switched /usr/local/cuda to CUDA {want.short} (was {have or state})")


class Environment(Stage):
    name, title = "env", "create or reuse the environment"

    def status(self, up: Run) -> tuple[str, str]:
        from provisioner import env as envmod

        prefix = env_prefix(up.o, up.environ)
        st = envmod.env_status(prefix, up.environ)
        if st == "complete" and (up.records.stages.get(self.name) or {}).get("status") == "done":
            return "done", f"environment {prefix} is complete"
        if st == "building":
            return "todo", f"{self.title}: {prefix} was left half-built; it will be rebuilt"
        return "todo", f"{self.title} at {prefix}"

    def run(self, up: Run) -> StageOutcome:
        from provisioner import env as envmod

        profile, o = up.state.profile, up.o
        assert profile is not None
        prefix = env_prefix(o, up.environ)
        if o.bundle is not None:
            from provisioner.up import from_bundle

            return from_bundle.environment(up, self.name, prefix)
        inputs = up.state.inputs[self.name] = fingerprint(
            str(prefix), profile.name, o.torch, o.index_url, o.extra_index_url, o.find_links, o.backend, o.python)
        if envmod.env_status(prefix, up.environ) == "building":
            up.say(f"environment {prefix} was left half-built by an interrupted run; rebuilding it")
        result = envmod.create_env(
            prefix=prefix, name=None, profile=profile.name, cuda=None, backend=o.backend,
            python_version=o.python, torch=o.torch, index_url=o.index_url, extra_index_url=o.extra_index_url,
            find_links=o.find_links, allow_insecure_index=o.allow_insecure_index, repair=True,
            root=up.root, environ=up.environ, progress=up.say, facts=up.state.machine,
            confirm_download=None if o.yes else up.confirm_torch)
        up.state.env = result
        ran = result.status != "up-to-date"
        up.did_work |= ran
        up.records.done(self.name, inputs, {"prefix": str(result.prefix), "python": str(result.python)})
        return StageOutcome(self.name, "ran" if ran else "done",
                            f"{result.prefix} ({result.status}, profile {profile.name})",
                            {"prefix": str(result.prefix), "python": str(result.python), "status": result.status})


class Fit(Stage):
    name, title = "fit", "check the model fits; choose precision and context"

    def status(self, up: Run) -> tuple[str, str]:
        return "check", f"{self.title} (cheap; always re-checked)"

    def run(self, up: Run) -> StageOutcome:
        from provisioner.model import fit
        from provisioner.model import info as modelinfo

        chosen = up.choose_model()
        spec = modelinfo.resolve(chosen.model, environ=up.environ)
        facts = up.state.facts
        memory = fit.gpu_memory(up.o.gpu_memory or "auto", environ=up.environ,
                                info=facts.info if facts is not None else None)
        # `up` loads in 16 bit, int8 or nf4 (what the smoke chat and `provision chat` offer).
        report = fit.fit(spec, gpu_free_bytes=memory.free_bytes, context=up.o.context, batch=1,
                         quants=choose.fit_quants(up.o.quant), prefer_bf16=memory.prefer_bf16)
        st = up.state
        st.fit, st.context = report, report.context
        note = "" if chosen.chosen_by == "flag" else f" ({chosen.how})"
        if memory.free_bytes is None:
            # On the CPU nothing is gated on GPU memory: load as asked (4-bit by default, as the
            # walkthrough does) and keep the estimate to compare with the measured peak.
            quant = "nf4" if up.o.quant == "auto" else up.o.quant
            option = next(o for o in report.options if o.quant == choose.fit_quant(quant))
            st.quant, st.estimate = quant, option.total_bytes
            choose.remember(up.o, facts, up.records, chosen)
            return StageOutcome(self.name, "done", f"{spec.name}{note}: {_human_params(spec.params)} params; "
                                f"{memory.source}; {quant} estimate {gib(option.total_bytes)} at {st.context} tokens",
                                {"quant": quant, "estimate_bytes": option.total_bytes, "context": st.context,
                                 "chosen_by": chosen.chosen_by})
        rec = report.recommended
        if rec is None:
            best = min(report.options, key=lambda o: o.total_bytes)
            raise up.fail(self.name, "", f"{spec.name} does not fit: it needs at least {gib(best.total_bytes)} "
                          f"({best.quant}, {st.context} tokens) and {memory.source}; nothing was downloaded",
                          report.advice or "free GPU memory or choose a smaller model")
        st.quant, st.estimate = _up_quant(rec.quant), rec.total_bytes
        choose.remember(up.o, facts, up.records, chosen)
        return StageOutcome(self.name, "done",
                            f"{spec.name}{note}: {rec.quant} fits ({memory.source}): estimate "
                            f"{gib(rec.total_bytes)} at {st.context} tokens; up to {rec.max_context} tokens",
                            {"quant": st.quant, "estimate_bytes": rec.total_bytes, "context": st.context,
                             "max_context": rec.max_context, "gpu_free_bytes": memory.free_bytes,
                             "chosen_by": chosen.chosen_by})


class Download(Stage):
    name, title = "download", "download the model"

    def status(self, up: Run) -> tuple[str, str]:
        rec = up.records.stages.get(self.name) or {}
        path = Path(str((rec.get("result") or {}).get("path", "")))
        o, model = up.o, up.choose_model().model
        if is_local_model(model):
            return "skipped", "the model is a local folder"
        same = rec.get("inputs") == fingerprint(model, o.endpoint, o.mirror, str(o.local_dir))
        if rec.get("status") == "done" and same and path.is_dir():
            return "done", f"already downloaded to {path}"
        return "todo", f"{self.title}: {model}"

    def run(self, up: Run) -> StageOutcome:
        from provisioner.model import download

        o, model = up.o, up.choose_model().model
        if is_local_model(model):
            path = Path(model).expanduser().resolve()
            up.state.model_path = path
            return StageOutcome(self.name, "skipped", f"local folder {path}", {"path": str(path)})
        inputs = fingerprint(model, o.endpoint, o.mirror, str(o.local_dir))
        rec = up.records.get(self.name, inputs)
        if rec and Path(rec["path"]).is_dir() and (Path(rec["path"]) / "config.json").is_file():
            up.state.model_path = Path(rec["path"])
            return StageOutcome(self.name, "done", f"already downloaded: {rec['path']}", rec)
        plan = download.plan_download(model, local_dir=o.local_dir, endpoint=o.endpoint, mirror=o.mirror,
                                      environ=up.environ)
        up.say(plan.describe())
        size = plan.need_bytes
        if size > CONFIRM_DOWNLOAD_BYTES and not o.yes and not up.confirm(f"Download {gib(size)} of {model}?"):
            raise up.fail(self.name, inputs, "download declined", "re-run with --yes to download")
        with up.transfer(plan.repo_id) as update:
            path = download.apply(plan, on_progress=update).path
        up.did_work = True
        up.state.model_path = Path(path)
        up.records.done(self.name, inputs, {"path": str(path), "bytes": size})
        return StageOutcome(self.name, "ran", f"{model} -> {path} ({gib(size)})", {"path": str(path)})


class Smoke(Stage):
    name, title = "smoke", "smoke-test chat"

    def status(self, up: Run) -> tuple[str, str]:
        elsewhere = needs_target_gpu(up)
        if elsewhere is not None:
            return "skipped", elsewhere
        if (up.records.stages.get(self.name) or {}).get("status") == "done":
            return "done", "passed before (re-run when the environment, model or precision changes)"
        return "todo", self.title

    def run(self, up: Run) -> StageOutcome:
        from provisioner.model import smoke

        elsewhere = needs_target_gpu(up)
        if elsewhere is not None:
            return StageOutcome(self.name, "skipped", elsewhere, {"needs_target_gpu": True})
        st = up.state
        assert st.env is not None and st.model_path is not None and st.quant is not None
        inputs = up.state.inputs[self.name] = fingerprint(
            str(st.env.prefix), str(st.model_path), st.quant, up.o.prompt, up.o.max_new_tokens,
            _mtime(st.model_path), _mtime(Path(st.env.prefix) / "provision-env.json"))
        rec = up.records.get(self.name, inputs)
        if rec is not None:
            st.smoke = rec
            return StageOutcome(self.name, "done", f"passed before: {rec.get('reply', '')!r}", rec)
        kwargs: dict[str, Any] = {"quant": st.quant, "max_new_tokens": up.o.max_new_tokens, "environ": up.environ}
        if up.o.prompt:
            kwargs["prompt"] = up.o.prompt
        result = smoke.run_smoke(Path(st.env.python), str(st.model_path), **kwargs)
        up.did_work = True
        hint = None
        if result.oom:
            free = st.fit.gpu_free_bytes if st.fit is not None else None
            hint = smoke.fit_hint_for(str(st.model_path), st.quant, up.environ, free_bytes=free)
        checks = smoke.check_smoke(result, estimate_bytes=st.estimate, gpu_present=st.gpus, fit_hint=hint)
        failed = [c for c in checks if c.status.value == "fail"]
        data = result.to_dict()
        if failed:
            raise up.fail(self.name, inputs, f"{failed[0].id}: {failed[0].message}", failed[0].fix)
        up.records.done(self.name, inputs, data)
        st.smoke = data
        return StageOutcome(self.name, "ran", f"reply {data.get('reply', '')!r}", data)


def _named_choice(up: Run) -> Choice | None:
    """The profile stage's choice of a named profile (--profile, --cuda), for the plan before that
    stage runs; None for auto, or where the profile stage will refuse (it says why)."""
    from provisioner import profiles
    from provisioner.env import choose
    from provisioner.versions import CudaVersion

    requested = None if up.o.profile in (None, "", "auto") else up.o.profile
    if requested is None and not up.o.cuda:
        return None
    try:
        return choose.choose_profile(up.machine().machine(), profiles.load_all(up.environ), requested=requested,
                                     cuda=CudaVersion.parse(up.o.cuda) if up.o.cuda else None)
    except ProvisionError:
        return None


def needs_target_gpu(up: Run) -> str | None:
    """Why the smoke chat is left to the target machine: a CUDA profile named for it (--profile,
    --cuda) on a machine without a usable driver/GPU. A chat on this CPU would test neither the
    target's GPU nor bitsandbytes' CUDA library; None when the chat runs here."""
    from provisioner.env import choose

    if up.state.machine is not None and up.state.profile is not None:
        gap = choose.unchecked(up.state.machine, up.state.profile)
    else:
        planned = _named_choice(up)
        gap = planned.unchecked if planned is not None else None
    if gap is None:
        return None
    return (f"not run here: the smoke chat of {gap.what} needs the target's GPU ({gap.why}); on the target "
            f"machine run `provision verify`, then `provision up` with the same options")


#: The walkthrough, in order (STAGES names the same stages for the plan and the records).
PIPELINE: tuple[Stage, ...] = (Diagnose(), ChooseProfile(), Toolkit(), Environment(), Fit(), Download(), Smoke())


def _up_quant(fit_quant: str) -> str:
    """`model fit` precision -> the smoke chat's --quant (nf4 with or without double quant is nf4)."""
    return {"bf16": "none", "fp16": "none", "fp32": "none", "nf4-dq": "nf4"}.get(fit_quant, fit_quant)


def _human_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
