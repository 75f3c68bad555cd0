"""`provision up`: the walkthrough's stages in order, each recorded so a rerun resumes; orchestration only."""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import state
from provisioner.cuda import command_line
from provisioner.errors import PermissionDenied, ProvisionError
from provisioner.units import gib

if TYPE_CHECKING:
    from provisioner.env import EnvResult
    from provisioner.env.choose import MachineFacts
    from provisioner.facts import Facts
    from provisioner.model.fit import FitReport
    from provisioner.profiles import Profile

STATE_FILE = "up.json"
#: Downloads above this many bytes are confirmed first (without --yes).
CONFIRM_DOWNLOAD_BYTES = 300 * 1024**2

NO_GPU = "none (CPU)"
STAGES: tuple[tuple[str, str], ...] = (
    ("diagnose", "diagnose the machine"),
    ("profile", "choose the profile"),
    ("toolkit", "check the CUDA toolkit"),
    ("env", "create or reuse the environment"),
    ("fit", "check the model fits; choose precision and context"),
    ("download", "download the model"),
    ("smoke", "smoke-test chat"),
)


@dataclass
class UpOptions:
    model: str
    profile: str = "auto"
    name: str | None = None
    prefix: Path | None = None
    quant: str = "auto"                # auto | nf4 | int8 | none
    context: int | None = None         # None: `model fit`'s default (4096, or the model's maximum)
    yes: bool = False
    cuda: str | None = None
    backend: str = "auto"
    python: str | None = None
    torch: str | None = None
    index_url: str | None = None
    extra_index_url: str | None = None
    find_links: str | None = None
    allow_insecure_index: bool = False
    endpoint: str | None = None
    mirror: str | None = None
    local_dir: Path | None = None
    gpu_memory: str | None = None      # GiB as text, or "auto"
    prompt: str | None = None
    max_new_tokens: int = 64


@dataclass
class StageOutcome:
    name: str
    status: str                        # done | ran | skipped | warn | failed | todo
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UpSummary:
    """What `up` set up and measured: the summary table, and `summary` in `up --json`."""

    gpu: str
    driver: str | None
    driver_cuda: str | None
    toolkit: str
    profile: str | None
    environment: str | None
    model: str
    precision: str | None
    context: int | None
    estimated_peak_bytes: int | None
    measured_peak_bytes: int | None
    time_to_first_token_s: float | None
    tokens_per_s: float | None
    reply: str | None
    chat_command: str | None

    @property
    def on_cpu(self) -> bool:
        return self.gpu == NO_GPU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UpResult:
    stages: list[StageOutcome]
    summary: UpSummary
    did_work: bool

    @property
    def chat_command(self) -> str | None:
        return self.summary.chat_command

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.stages)

    def to_document(self) -> dict[str, Any]:
        return {"version": 1, "ok": self.ok, "did_work": self.did_work,
                "stages": [s.to_dict() for s in self.stages], "summary": self.summary.to_dict(),
                "chat_command": self.chat_command}


class StageFailed(ProvisionError):
    """A stage stopped `up`; earlier stages stay recorded, so a rerun resumes here."""


Say = Callable[[str], None]
Confirm = Callable[[str], bool]


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:16]


class Records:
    """Per-stage results in $XDG_STATE_HOME/provision/up.json, written after every stage."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        doc = state.read(environ, STATE_FILE)
        # A damaged record (edited by hand, another version's) only costs a re-run of the stages.
        stages = doc.get("stages") if isinstance(doc, dict) else None
        self.stages: dict[str, dict[str, Any]] = (
            {k: v for k, v in stages.items() if isinstance(v, dict)} if isinstance(stages, dict) else {})

    def get(self, name: str, inputs: str) -> dict[str, Any] | None:
        rec = self.stages.get(name)
        if rec and rec.get("status") == "done" and rec.get("inputs") == inputs:
            return dict(rec.get("result") or {})
        return None

    def done(self, name: str, inputs: str, result: Mapping[str, Any]) -> None:
        self.stages[name] = {"status": "done", "inputs": inputs, "result": dict(result),
                             "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def failed(self, name: str, inputs: str, message: str) -> None:
        self.stages[name] = {"status": "failed", "inputs": inputs, "message": message,
                             "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def save(self) -> None:
        state.write(self.environ, STATE_FILE, {"version": 1, "stages": self.stages})


def last_setup(environ: Mapping[str, str]) -> dict[str, str]:
    """What the last successful `up` set up: {"env": prefix, "model": ..., "quant": ...} (keys absent
    when unknown), so `provision chat` with no arguments talks to it."""
    stages = Records(environ).stages
    out: dict[str, str] = {}
    env = (stages.get("env") or {}).get("result") or {}
    smoke = (stages.get("smoke") or {}).get("result") or {}
    if stages.get("env", {}).get("status") == "done" and env.get("prefix"):
        out["env"] = str(env["prefix"])
    if stages.get("smoke", {}).get("status") == "done":
        for key in ("model", "quant"):
            if smoke.get(key):
                out[key] = str(smoke[key])
    return out


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


@dataclass
class UpState:
    """What the stages hand each other, each field set by the stage named beside it."""

    facts: Facts | None = None                # diagnose: the machine, read once
    machine: MachineFacts | None = None       # diagnose: the profile choice's view of it
    profile: Profile | None = None            # profile
    env: EnvResult | None = None              # env
    fit: FitReport | None = None              # fit
    quant: str | None = None                  # fit: the smoke chat's --quant
    estimate: int | None = None               # fit: estimated peak bytes
    context: int | None = None                # fit
    model_path: Path | None = None            # download
    smoke: dict[str, Any] | None = None       # smoke: the smoke chat's result
    inputs: dict[str, str] = field(default_factory=dict)   # stage -> fingerprint of what it was run with

    @property
    def gpus(self) -> bool:
        info = self.facts.info if self.facts is not None else None
        return bool(info is not None and info.loaded and info.gpus)


class Stage:
    """One step of the walkthrough: status() for the plan (reads, never changes), run() to do it."""

    name = ""
    title = ""

    def status(self, up: Up) -> tuple[str, str]:
        return "todo", self.title

    def run(self, up: Up) -> StageOutcome:
        raise NotImplementedError


class Diagnose(Stage):
    name, title = "diagnose", "diagnose the machine"

    def status(self, up: Up) -> tuple[str, str]:
        return "check", f"{self.title} (cheap; always re-checked)"

    def run(self, up: Up) -> StageOutcome:
        from provisioner import facts as facts_mod

        facts = facts_mod.gather_machine(root=up.root, environ=up.environ)
        up.state.facts, up.state.machine = facts, facts.machine()
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

    def status(self, up: Up) -> tuple[str, str]:
        return "check", f"{self.title} (cheap; always re-checked)"

    def run(self, up: Up) -> StageOutcome:
        from provisioner import profiles
        from provisioner.env import choose
        from provisioner.versions import CudaVersion

        assert up.state.machine is not None
        cuda = CudaVersion.parse(up.o.cuda) if up.o.cuda else None
        requested = None if up.o.profile in (None, "", "auto") else up.o.profile
        choice = choose.choose_profile(up.state.machine, profiles.load_all(up.environ),
                                       requested=requested, cuda=cuda)
        up.state.profile = choice.profile
        return StageOutcome(self.name, "done", f"{choice.profile.name}: {'; '.join(choice.reasons)}",
                            {"profile": choice.profile.name, "reasons": list(choice.reasons),
                             "rejected": [list(r) for r in choice.rejected]})


class Toolkit(Stage):
    name, title = "toolkit", "check the CUDA toolkit"

    def status(self, up: Up) -> tuple[str, str]:
        return "check", f"{self.title} (switch only if the profile needs another installed toolkit)"

    def run(self, up: Up) -> StageOutcome:
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

    def status(self, up: Up) -> tuple[str, str]:
        from provisioner import env as envmod

        prefix = env_prefix(up.o, up.environ)
        st = envmod.env_status(prefix, up.environ)
        if st == "complete" and (up.records.stages.get(self.name) or {}).get("status") == "done":
            return "done", f"environment {prefix} is complete"
        if st == "building":
            return "todo", f"{self.title}: {prefix} was left half-built; it will be rebuilt"
        return "todo", f"{self.title} at {prefix}"

    def run(self, up: Up) -> StageOutcome:
        from provisioner import env as envmod

        profile, o = up.state.profile, up.o
        assert profile is not None
        prefix = env_prefix(o, up.environ)
        inputs = up.state.inputs[self.name] = fingerprint(
            str(prefix), profile.name, o.torch, o.index_url, o.extra_index_url, o.find_links, o.backend, o.python)
        force = envmod.env_status(prefix, up.environ) == "building"   # an interrupted run's env: rebuild it
        if force:
            up.say(f"environment {prefix} was left half-built by an interrupted run; rebuilding it")
        result = envmod.create_env(
            prefix=prefix, name=None, profile=profile.name, cuda=None, backend=o.backend,
            python_version=o.python, torch=o.torch, index_url=o.index_url, extra_index_url=o.extra_index_url,
            find_links=o.find_links, allow_insecure_index=o.allow_insecure_index, force=force,
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

    def status(self, up: Up) -> tuple[str, str]:
        return "check", f"{self.title} (cheap; always re-checked)"

    def run(self, up: Up) -> StageOutcome:
        from provisioner.model import fit
        from provisioner.model import info as modelinfo

        spec = modelinfo.resolve(up.o.model, environ=up.environ)
        facts = up.state.facts
        memory = fit.gpu_memory(up.o.gpu_memory or "auto", environ=up.environ,
                                info=facts.info if facts is not None else None)
        # `up` loads in 16 bit, int8 or nf4 (what the smoke chat and `provision chat` offer).
        quants = ("fp16", "bf16", "int8", "nf4") if up.o.quant == "auto" else (_fit_quant(up.o.quant),)
        report = fit.fit(spec, gpu_free_bytes=memory.free_bytes, context=up.o.context, batch=1,
                         quants=quants, prefer_bf16=memory.prefer_bf16)
        st = up.state
        st.fit, st.context = report, report.context
        if memory.free_bytes is None:
            # On the CPU nothing is gated on GPU memory: load as asked (4-bit by default, as the
            # walkthrough does) and keep the estimate to compare with the measured peak.
            quant = "nf4" if up.o.quant == "auto" else up.o.quant
            option = next(o for o in report.options if o.quant == _fit_quant(quant))
            st.quant, st.estimate = quant, option.total_bytes
            return StageOutcome(self.name, "done", f"{spec.name}: {_human_params(spec.params)} params; "
                                f"{memory.source}; {quant} estimate {gib(option.total_bytes)} at {st.context} tokens",
                                {"quant": quant, "estimate_bytes": option.total_bytes, "context": st.context})
        rec = report.recommended
        if rec is None:
            best = min(report.options, key=lambda o: o.total_bytes)
            raise up.fail(self.name, "", f"{spec.name} does not fit: it needs at least {gib(best.total_bytes)} "
                          f"({best.quant}, {st.context} tokens) and {memory.source}; nothing was downloaded",
                          report.advice or "free GPU memory or choose a smaller model")
        st.quant, st.estimate = _up_quant(rec.quant), rec.total_bytes
        return StageOutcome(self.name, "done",
                            f"{spec.name}: {rec.quant} fits ({memory.source}): estimate "
                            f"{gib(rec.total_bytes)} at {st.context} tokens; up to {rec.max_context} tokens",
                            {"quant": st.quant, "estimate_bytes": rec.total_bytes, "context": st.context,
                             "max_context": rec.max_context, "gpu_free_bytes": memory.free_bytes})


class Download(Stage):
    name, title = "download", "download the model"

    def status(self, up: Up) -> tuple[str, str]:
        rec = up.records.stages.get(self.name) or {}
        path = Path(str((rec.get("result") or {}).get("path", "")))
        if is_local_model(up.o.model):
            return "skipped", "the model is a local folder"
        if rec.get("status") == "done" and path.is_dir():
            return "done", f"already downloaded to {path}"
        return "todo", self.title

    def run(self, up: Up) -> StageOutcome:
        from provisioner.model import download

        o = up.o
        if is_local_model(o.model):
            path = Path(o.model).expanduser().resolve()
            up.state.model_path = path
            return StageOutcome(self.name, "skipped", f"local folder {path}", {"path": str(path)})
        inputs = fingerprint(o.model, o.endpoint, o.mirror, str(o.local_dir))
        rec = up.records.get(self.name, inputs)
        if rec and Path(rec["path"]).is_dir() and (Path(rec["path"]) / "config.json").is_file():
            up.state.model_path = Path(rec["path"])
            return StageOutcome(self.name, "done", f"already downloaded: {rec['path']}", rec)
        plan = download.plan_download(o.model, local_dir=o.local_dir, endpoint=o.endpoint, mirror=o.mirror,
                                      environ=up.environ)
        up.say(plan.describe())
        size = plan.need_bytes
        if size > CONFIRM_DOWNLOAD_BYTES and not o.yes and not up.confirm(f"Download {gib(size)} of {o.model}?"):
            raise up.fail(self.name, inputs, "download declined", "re-run with --yes to download")
        path = download.apply(plan).path
        up.did_work = True
        up.state.model_path = Path(path)
        up.records.done(self.name, inputs, {"path": str(path), "bytes": size})
        return StageOutcome(self.name, "ran", f"{o.model} -> {path} ({gib(size)})", {"path": str(path)})


class Smoke(Stage):
    name, title = "smoke", "smoke-test chat"

    def status(self, up: Up) -> tuple[str, str]:
        if (up.records.stages.get(self.name) or {}).get("status") == "done":
            return "done", "passed before (re-run when the environment, model or precision changes)"
        return "todo", self.title

    def run(self, up: Up) -> StageOutcome:
        from provisioner.model import smoke

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


#: The walkthrough, in order (STAGES names the same stages for the plan and the records).
PIPELINE: tuple[Stage, ...] = (Diagnose(), ChooseProfile(), Toolkit(), Environment(), Fit(), Download(), Smoke())


class Up:
    """Runs the stages in order; every stage calls the same code its own command uses."""

    def __init__(self, opts: UpOptions, *, root: Path, environ: Mapping[str, str],
                 say: Say, confirm: Confirm) -> None:
        self.o = opts
        self.root = root
        self.environ = environ
        self.say = say
        self.confirm = confirm
        self.records = Records(environ)
        self.outcomes: list[StageOutcome] = []
        self.state = UpState()
        self.did_work = False

    def plan(self) -> list[StageOutcome]:
        """Each stage's state before anything runs: done / to do / skipped, with why."""
        rows = []
        for stage in PIPELINE:
            status, why = stage.status(self)
            rec = self.records.stages.get(stage.name) or {}
            if rec.get("status") == "failed":
                why += f" (failed last time: {rec.get('message', '')[:120]})"
            rows.append(StageOutcome(stage.name, status, why))
        return rows

    def run(self, until: str | None = None) -> UpResult:
        """Every stage in order (or up to and including `until`); a failure is recorded and raised."""
        for stage in PIPELINE:
            try:
                outcome = stage.run(self)
            except StageFailed as e:
                self.outcomes.append(StageOutcome(stage.name, "failed", e.message))
                raise
            except ProvisionError as e:
                self.records.failed(stage.name, self.state.inputs.get(stage.name, ""), e.message)
                self.outcomes.append(StageOutcome(stage.name, "failed", e.message))
                raise
            self.outcomes.append(outcome)
            self.say(f"[{outcome.status:>7}] {stage.name}: {outcome.message}")
            if stage.name == until:
                break
        return UpResult(self.outcomes, self.summary(), self.did_work)

    def fail(self, name: str, inputs: str, message: str, hint: str | None) -> StageFailed:
        self.records.failed(name, inputs, message)
        return StageFailed(message, hint=hint)

    def confirm_torch(self, plan: Any) -> bool:
        what = " ".join(plan.torch_requirements)
        size = "a CPU build, about 200 MB" if plan.profile.is_cpu else "a CUDA build, several GB with its libraries"
        return self.confirm(f"Install {what} from {plan.torch_index_url} ({size}) into {plan.prefix}?")

    def summary(self) -> UpSummary:
        st = self.state
        info = st.facts.info if st.facts is not None else None
        gpu = ", ".join(f"{g.name} ({g.sm})" for g in info.gpus) if st.gpus and info is not None else NO_GPU
        smoke_data = st.smoke or {}
        chat = None
        if st.env is not None and st.model_path is not None:
            chat = f"provision chat --env {st.env.prefix} --quant {st.quant} {st.model_path}"
        return UpSummary(
            gpu=gpu,
            driver=str(info.driver_version) if info is not None and info.driver_version else None,
            driver_cuda=info.cuda.short if info is not None and info.cuda else None,
            toolkit=next((s.message for s in self.outcomes if s.name == "toolkit"), ""),
            profile=st.profile.name if st.profile is not None else None,
            environment=str(st.env.prefix) if st.env is not None else None,
            model=str(st.model_path) if st.model_path is not None else self.o.model,
            precision=st.quant, context=st.context, estimated_peak_bytes=st.estimate,
            measured_peak_bytes=smoke_data.get("peak_bytes"), time_to_first_token_s=smoke_data.get("ttft_s"),
            tokens_per_s=smoke_data.get("tokens_per_s"), reply=smoke_data.get("reply"), chat_command=chat)


def _fit_quant(quant: str) -> str:
    """`up`/smoke precision names -> `model fit` names (none = 16-bit)."""
    return {"none": "bf16"}.get(quant, quant)


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
