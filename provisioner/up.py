"""`provision up`: the walkthrough's stages in order, each recorded so a rerun resumes; orchestration only."""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provisioner import state
from provisioner.errors import PermissionDenied, ProvisionError
from provisioner.units import gib

STATE_FILE = "up.json"
#: Downloads above this many bytes are confirmed first (without --yes).
CONFIRM_DOWNLOAD_BYTES = 300 * 1024**2

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


@dataclass
class UpResult:
    stages: list[StageOutcome]
    summary: dict[str, Any]
    did_work: bool

    @property
    def chat_command(self) -> str | None:
        command: str | None = self.summary.get("chat_command")
        return command

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.stages)

    def to_document(self) -> dict[str, Any]:
        return {"version": 1, "ok": self.ok, "did_work": self.did_work,
                "stages": [s.to_dict() for s in self.stages], "summary": self.summary,
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


class Up:
    """Runs the stages; every stage calls the same code its own command uses."""

    def __init__(self, opts: UpOptions, *, root: Path, environ: Mapping[str, str],
                 say: Say, confirm: Confirm) -> None:
        self.o = opts
        self.root = root
        self.environ = environ
        self.say = say
        self.confirm = confirm
        self.records = Records(environ)
        self.outcomes: list[StageOutcome] = []
        self.ctx: dict[str, Any] = {}
        self.did_work = False

    # ---- plan -----------------------------------------------------------------------------
    def plan(self) -> list[StageOutcome]:
        """Each stage's state before anything runs: done / to do / skipped, with why."""
        rows = []
        prefix = env_prefix(self.o, self.environ)
        for name, title in STAGES:
            status, why = "todo", title
            rec = self.records.stages.get(name) or {}
            if name in ("diagnose", "profile", "fit"):
                status, why = "check", f"{title} (cheap; always re-checked)"
            elif name == "toolkit":
                status, why = "check", f"{title} (switch only if the profile needs another installed toolkit)"
            elif name == "env":
                from provisioner import env as envmod

                st = envmod.env_status(prefix, self.environ)
                if st == "complete" and rec.get("status") == "done":
                    status, why = "done", f"environment {prefix} is complete"
                elif st == "building":
                    why = f"{title}: {prefix} was left half-built; it will be rebuilt"
                else:
                    why = f"{title} at {prefix}"
            elif name == "download":
                if is_local_model(self.o.model):
                    status, why = "skipped", "the model is a local folder"
                elif rec.get("status") == "done" and Path(str((rec.get("result") or {}).get("path", ""))).is_dir():
                    status, why = "done", f"already downloaded to {rec['result']['path']}"
            elif name == "smoke":
                if rec.get("status") == "done":
                    status, why = "done", "passed before (re-run when the environment, model or precision changes)"
            if rec.get("status") == "failed":
                why += f" (failed last time: {rec.get('message', '')[:120]})"
            rows.append(StageOutcome(name, status, why))
        return rows

    # ---- run ------------------------------------------------------------------------------
    def run(self) -> UpResult:
        for name, _title in STAGES:
            step = getattr(self, f"stage_{name}")
            try:
                outcome = step()
            except StageFailed as e:
                self.outcomes.append(StageOutcome(name, "failed", e.message))
                raise
            except ProvisionError as e:
                self.records.failed(name, self.ctx.get(f"{name}_inputs", ""), e.message)
                self.outcomes.append(StageOutcome(name, "failed", e.message))
                raise
            self.outcomes.append(outcome)
            self.say(f"[{outcome.status:>7}] {name}: {outcome.message}")
        summary = self.summary()
        return UpResult(self.outcomes, summary, self.did_work)

    def _fail(self, name: str, inputs: str, message: str, hint: str | None) -> StageFailed:
        self.records.failed(name, inputs, message)
        return StageFailed(message, hint=hint)

    def stage_diagnose(self) -> StageOutcome:
        from provisioner.env import choose

        facts = choose.gather_facts(self.root, self.environ)
        self.ctx["facts"] = facts
        info = facts.driver
        if info is not None and info.loaded and info.gpus:
            gpus = ", ".join(f"{g.name} ({g.sm}, {gib(g.memory_free)} free)" for g in info.gpus)
            msg = f"driver {info.driver_version} (CUDA {info.cuda.short if info.cuda else '?'}); {gpus}"
        else:
            reason = info.error if info is not None and info.error else "no NVIDIA driver/GPU found"
            msg = f"no usable NVIDIA GPU ({reason}); continuing on the CPU"
        return StageOutcome("diagnose", "done", msg, {"facts": choose.facts_to_dict(facts)})

    def stage_profile(self) -> StageOutcome:
        from provisioner import profiles
        from provisioner.env import choose
        from provisioner.versions import CudaVersion

        cuda = CudaVersion.parse(self.o.cuda) if self.o.cuda else None
        requested = None if self.o.profile in (None, "", "auto") else self.o.profile
        choice = choose.choose_profile(self.ctx["facts"], profiles.load_all(self.environ),
                                       requested=requested, cuda=cuda)
        self.ctx["profile"] = choice.profile
        why = "; ".join(choice.reasons)
        return StageOutcome("profile", "done", f"{choice.profile.name}: {why}",
                            {"profile": choice.profile.name, "reasons": list(choice.reasons),
                             "rejected": [list(r) for r in choice.rejected]})

    def stage_toolkit(self) -> StageOutcome:
        from provisioner import cuda

        profile = self.ctx["profile"]
        if profile.is_cpu or profile.cuda is None:
            return StageOutcome("toolkit", "skipped", f"profile {profile.name} needs no CUDA toolkit")
        want = profile.cuda
        link = cuda.read_link(self.root, self.environ)
        have = link.toolkit.version if link.toolkit is not None else None
        if have is not None and (have.major, have.minor) == (want.major, want.minor):
            return StageOutcome("toolkit", "done", f"/usr/local/cuda is CUDA {have}, as profile {profile.name} wants")
        installed = [t for t in cuda.toolkits(self.root, self.environ)
                     if t.version is not None and (t.version.major, t.version.minor) == (want.major, want.minor)
                     and t.complete]
        note = ("torch wheels bring their own CUDA runtime, so this only matters for compiling "
                "extensions")
        if not installed:
            return StageOutcome("toolkit", "warn",
                                f"no CUDA {want.short} toolkit installed (linked: {have or link.state}); {note}",
                                {"fix": f"provision cuda install {want.short}" if want.major >= 13 else None})
        sudo_line = f"sudo provision cuda switch {want.short}"
        if not toolkit_writable(self.root):
            return StageOutcome("toolkit", "warn",
                                f"/usr/local/cuda is {have or link.state}, profile wants {want.short}; "
                                f"switching needs root, run: {sudo_line}", {"fix": sudo_line})
        try:
            plan = cuda.plan_switch(want, self.root, self.environ)
        except PermissionDenied:
            return StageOutcome("toolkit", "warn",
                                f"/usr/local/cuda is {have or link.state}, profile wants {want.short}; "
                                f"switching needs root, run: {sudo_line}", {"fix": sudo_line})
        except ProvisionError as e:
            # `cuda switch` refuses (a real directory at the link, ...); the wheel does not need it.
            return StageOutcome("toolkit", "warn", f"not switched to CUDA {want.short}: {e.message}; {note}",
                                {"fix": e.hint})
        if not self.o.yes and not self.confirm(f"Switch /usr/local/cuda to CUDA {want.short}?"):
            return StageOutcome("toolkit", "warn", f"not switched (declined); run: provision cuda switch {want.short}",
                                {"fix": f"provision cuda switch {want.short}"})
        cuda.apply(plan)
        self.did_work = True
        return StageOutcome("toolkit", "ran", f"switched /usr/local/cuda to CUDA {want.short} (was {have or link.state})")

    def stage_env(self) -> StageOutcome:
        from provisioner import env as envmod

        profile = self.ctx["profile"]
        prefix = env_prefix(self.o, self.environ)
        inputs = fingerprint(str(prefix), profile.name, self.o.torch, self.o.index_url,
                             self.o.extra_index_url, self.o.find_links, self.o.backend, self.o.python)
        self.ctx["env_inputs"] = inputs
        status = envmod.env_status(prefix, self.environ)
        force = status == "building"   # provision's own half-built env (an interrupted run): rebuild it
        if force:
            self.say(f"environment {prefix} was left half-built by an interrupted run; rebuilding it")
        result = envmod.create_env(
            prefix=prefix, name=None, profile=profile.name, cuda=None, backend=self.o.backend,
            python_version=self.o.python, torch=self.o.torch, index_url=self.o.index_url,
            extra_index_url=self.o.extra_index_url, find_links=self.o.find_links,
            allow_insecure_index=self.o.allow_insecure_index, force=force,
            root=self.root, environ=self.environ, progress=self.say, facts=self.ctx["facts"],
            confirm_download=None if self.o.yes else self._confirm_torch,
        )
        self.ctx["env"] = result
        ran = result.status != "up-to-date"
        self.did_work |= ran
        self.records.done("env", inputs, {"prefix": str(result.prefix), "python": str(result.python)})
        return StageOutcome("env", "ran" if ran else "done",
                            f"{result.prefix} ({result.status}, profile {profile.name})",
                            {"prefix": str(result.prefix), "python": str(result.python),
                             "status": result.status})

    def _confirm_torch(self, plan: Any) -> bool:
        what = " ".join(plan.torch_requirements)
        size = "a CPU build, about 200 MB" if plan.profile.is_cpu else "a CUDA build, several GB with its libraries"
        return self.confirm(f"Install {what} from {plan.torch_index_url} ({size}) into {plan.prefix}?")

    def stage_fit(self) -> StageOutcome:
        from provisioner.model import fit
        from provisioner.model import info as modelinfo

        spec = modelinfo.resolve(self.o.model, environ=self.environ)
        memory = fit.gpu_memory(self.o.gpu_memory or "auto", environ=self.environ,
                                info=self.ctx["facts"].driver)
        # `up` loads in 16 bit, int8 or nf4 (what the smoke chat and `provision chat` offer).
        quants = ("fp16", "bf16", "int8", "nf4") if self.o.quant == "auto" else (_fit_quant(self.o.quant),)
        report = fit.fit(spec, gpu_free_bytes=memory.free_bytes, context=self.o.context, batch=1,
                         quants=quants, prefer_bf16=memory.prefer_bf16)
        self.ctx["fit"] = report
        context = report.context
        if memory.free_bytes is None:
            # On the CPU nothing is gated on GPU memory: load as asked (4-bit by default, as the
            # walkthrough does) and keep the estimate to compare with the measured peak.
            quant = "nf4" if self.o.quant == "auto" else self.o.quant
            option = next(o for o in report.options if o.quant == _fit_quant(quant))
            self.ctx.update(quant=quant, estimate=option.total_bytes, context=context)
            return StageOutcome("fit", "done", f"{spec.name}: {_human_params(spec.params)} params; "
                                f"{memory.source}; {quant} estimate {gib(option.total_bytes)} at {context} tokens",
                                {"quant": quant, "estimate_bytes": option.total_bytes, "context": context})
        rec = report.recommended
        if rec is None:
            best = min(report.options, key=lambda o: o.total_bytes)
            raise self._fail("fit", "", f"{spec.name} does not fit: it needs at least {gib(best.total_bytes)} "
                             f"({best.quant}, {context} tokens) and {memory.source}; nothing was downloaded",
                             report.advice or "free GPU memory or choose a smaller model")
        quant = _up_quant(rec.quant)
        self.ctx.update(quant=quant, estimate=rec.total_bytes, context=context)
        return StageOutcome("fit", "done",
                            f"{spec.name}: {rec.quant} fits ({memory.source}): estimate "
                            f"{gib(rec.total_bytes)} at {context} tokens; up to {rec.max_context} tokens",
                            {"quant": quant, "estimate_bytes": rec.total_bytes, "context": context,
                             "max_context": rec.max_context, "gpu_free_bytes": memory.free_bytes})

    def stage_download(self) -> StageOutcome:
        from provisioner.model import download

        if is_local_model(self.o.model):
            path = Path(self.o.model).expanduser().resolve()
            self.ctx["model_path"] = path
            return StageOutcome("download", "skipped", f"local folder {path}", {"path": str(path)})
        inputs = fingerprint(self.o.model, self.o.endpoint, self.o.mirror, str(self.o.local_dir))
        rec = self.records.get("download", inputs)
        if rec and Path(rec["path"]).is_dir() and (Path(rec["path"]) / "config.json").is_file():
            self.ctx["model_path"] = Path(rec["path"])
            return StageOutcome("download", "done", f"already downloaded: {rec['path']}", rec)
        plan = download.plan_download(self.o.model, local_dir=self.o.local_dir, endpoint=self.o.endpoint,
                                      mirror=self.o.mirror, environ=self.environ)
        self.say(plan.describe())
        size = plan.need_bytes
        if size > CONFIRM_DOWNLOAD_BYTES and not self.o.yes:
            if not self.confirm(f"Download {gib(size)} of {self.o.model}?"):
                raise self._fail("download", inputs, "download declined", "re-run with --yes to download")
        path = download.apply(plan).path
        self.did_work = True
        self.ctx["model_path"] = Path(path)
        self.records.done("download", inputs, {"path": str(path), "bytes": size})
        return StageOutcome("download", "ran", f"{self.o.model} -> {path} ({gib(size)})", {"path": str(path)})

    def stage_smoke(self) -> StageOutcome:
        from provisioner.model import smoke

        env = self.ctx["env"]
        model_path = self.ctx["model_path"]
        quant = self.ctx["quant"]
        inputs = fingerprint(str(env.prefix), str(model_path), quant, self.o.prompt, self.o.max_new_tokens,
                             _mtime(model_path), _mtime(Path(env.prefix) / "provision-env.json"))
        rec = self.records.get("smoke", inputs)
        if rec is not None:
            self.ctx["smoke"] = rec
            return StageOutcome("smoke", "done", f"passed before: {rec.get('reply', '')!r}", rec)
        kwargs: dict[str, Any] = {"quant": quant, "max_new_tokens": self.o.max_new_tokens,
                                  "environ": self.environ}
        if self.o.prompt:
            kwargs["prompt"] = self.o.prompt
        result = smoke.run_smoke(Path(env.python), str(model_path), **kwargs)
        self.did_work = True
        gpu = bool(self.ctx["facts"].driver and self.ctx["facts"].driver.loaded and self.ctx["facts"].driver.gpus)
        hint = None
        if result.oom:
            free = self.ctx["fit"].gpu_free_bytes if "fit" in self.ctx else None
            hint = smoke.fit_hint_for(str(model_path), quant, self.environ, free_bytes=free)
        checks = smoke.check_smoke(result, estimate_bytes=self.ctx.get("estimate"), gpu_present=gpu,
                                   fit_hint=hint)
        failed = [c for c in checks if c.status.value == "fail"]
        data = result.to_dict()
        if failed:
            first = failed[0]
            raise self._fail("smoke", inputs, f"{first.id}: {first.message}", first.fix)
        self.records.done("smoke", inputs, data)
        self.ctx["smoke"] = data
        return StageOutcome("smoke", "ran", f"reply {data.get('reply', '')!r}", data)

    # ---- summary --------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        facts = self.ctx.get("facts")
        info = facts.driver if facts is not None else None
        gpu = (", ".join(f"{g.name} ({g.sm})" for g in info.gpus)
               if info is not None and info.loaded and info.gpus else "none (CPU)")
        env = self.ctx.get("env")
        smoke_data = self.ctx.get("smoke") or {}
        toolkit = next((s.message for s in self.outcomes if s.name == "toolkit"), "")
        model_path = self.ctx.get("model_path")
        quant = self.ctx.get("quant")
        chat = None
        if env is not None and model_path is not None:
            chat = f"provision chat --env {env.prefix} --quant {quant} {model_path}"
        return {
            "gpu": gpu,
            "driver": str(info.driver_version) if info is not None and info.driver_version else None,
            "driver_cuda": info.cuda.short if info is not None and info.cuda else None,
            "toolkit": toolkit,
            "profile": self.ctx["profile"].name if "profile" in self.ctx else None,
            "environment": str(env.prefix) if env is not None else None,
            "model": str(model_path) if model_path is not None else self.o.model,
            "precision": quant,
            "context": self.ctx.get("context"),
            "estimated_peak_bytes": self.ctx.get("estimate"),
            "measured_peak_bytes": smoke_data.get("peak_bytes"),
            "time_to_first_token_s": smoke_data.get("ttft_s"),
            "tokens_per_s": smoke_data.get("tokens_per_s"),
            "reply": smoke_data.get("reply"),
            "chat_command": chat,
        }


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
