"""`provision verify`: one verdict across driver, GPUs, CUDA toolkit, the torch wheel and bitsandbytes."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import facts as facts_mod
from provisioner.cuda import command_line
from provisioner.cuda.checks import check_toolkit_driver
from provisioner.env import probe as envprobe
from provisioner.env.checks import EnvContext, _gpus, check_env, check_record
from provisioner.errors import ProvisionError
from provisioner.report import Check, Status
from provisioner.system import gpu
from provisioner.system.checks import check_driver, check_gpus
from provisioner.versions import CudaVersion

if TYPE_CHECKING:
    from provisioner.env.target import EnvTarget
    from provisioner.model.smoke_result import SmokeResult
    from provisioner.profiles import Profile

# The snapshot and its live reader live in facts.py; these names stay for callers of verify.
Facts = facts_mod.Facts
os_ids = facts_mod.os_ids
probe_env = envprobe.run
PROBE_SCRIPT = envprobe.PROBE_SCRIPT


@dataclass(frozen=True)
class SmokeRequest:
    """`verify --smoke-chat`'s options: the chat then runs in the env probe's own process."""

    model: str | None = None            # None: smoke.DEFAULT_MODEL
    quant: str = "nf4"
    prompt: str | None = None
    max_new_tokens: int = 64
    trust_remote_code: bool = False
    stream_to: Any = None               # where the reply is shown as it is generated

    def run_options(self, environ: Mapping[str, str]) -> dict[str, Any]:
        """smoke.run_smoke's keyword arguments (its own default prompt unless one was given)."""
        options: dict[str, Any] = {"quant": self.quant, "max_new_tokens": self.max_new_tokens,
                                   "trust_remote_code": self.trust_remote_code, "environ": environ,
                                   "stream_to": self.stream_to}
        if self.prompt:
            options["prompt"] = self.prompt
        return options


def gather(*, root: Path, environ: Mapping[str, str], env_target: str | None, fresh: bool = False) -> Facts:
    """facts.gather(): the machine, and the environment's probe (or its cached answer)."""
    return facts_mod.gather(root=root, environ=environ, env_target=env_target, fresh=fresh)


def gather_and_chat(*, root: Path, environ: Mapping[str, str], env_target: str | None, fresh: bool = False,
                    smoke: SmokeRequest | None) -> tuple[Facts, SmokeResult | None]:
    """gather(); with `smoke`, one process of the environment probes it and then runs the smoke chat
    (one torch import for both). The facts, and the chat's result for smoke_checks (None: the chat
    did not run there, and smoke_checks runs it or says why it cannot)."""
    from provisioner.model import smoke as smoke_mod

    if smoke is None or smoke_mod.local_model_problem(smoke.model or smoke_mod.DEFAULT_MODEL):
        # a bad model folder fails in smoke_checks before anything loads
        return gather(root=root, environ=environ, env_target=env_target, fresh=fresh), None
    results: list[SmokeResult] = []

    def probe_and_chat(target: EnvTarget) -> tuple[dict[str, Any] | None, str | None]:
        try:
            result, report, problem = smoke_mod.run_with_probe(
                target.python, smoke.model or smoke_mod.DEFAULT_MODEL, **smoke.run_options(environ))
        except ProvisionError:
            return envprobe.run(target, environ)     # says why this Python cannot run (env.python)
        results.append(result)
        if report is None:
            # it died before its probe was written (a torch that crashes on import): the probe
            # on its own says what still can be said, from the metadata
            return envprobe.run(target, environ)
        return report, problem

    facts = facts_mod.gather(root=root, environ=environ, env_target=env_target, fresh=fresh,
                             env_probe=probe_and_chat)
    return facts, results[0] if results else None


# --------------------------------------------------------------------------- toolkit

def choose_profiles(facts: Facts, environ: Mapping[str, str],
                    profile_name: str | None) -> tuple[Profile | None, Profile | None, list[Check]]:
    """(profile for the range checks, profile whose commands fix this machine, problems as checks).

    Range profile: --profile, else the one matching the env's torch CUDA build, else cpu.
    Fix profile: --profile when this machine can run it, else the one `env create` would choose.
    """
    from provisioner import profiles
    from provisioner.env import choose

    problems: list[Check] = []
    try:
        all_profiles = profiles.load_all(environ)
    except ProvisionError as e:
        return None, None, [Check("profile", Status.FAIL, e.message, e.hint, {})]
    if profile_name:
        # An unknown name is a usage error: let it propagate (exit 2 with the known names).
        rng: Profile | None = profiles.get(profile_name, environ)
    else:
        torch = (facts.probe or {}).get("torch") or {}
        rng = None
        if torch.get("cuda"):
            try:
                rng = profiles.for_cuda(CudaVersion.parse(str(torch["cuda"])), environ)
            except ProvisionError:
                rng = None
        if rng is None:
            rng = all_profiles.get("cpu")
    machine = facts.machine()
    fix: Profile | None = None
    if rng is not None and profile_name and not choose.profile_problems(rng, machine):
        fix = rng
    else:
        try:
            fix = choose.choose_profile(machine, all_profiles).profile
        except ProvisionError:
            fix = None
    if profile_name and rng is not None:
        why = choose.profile_problems(rng, machine)
        if why:
            problems.append(Check("profile", Status.FAIL,
                                  f"profile {rng.name} cannot run on this machine: " + "; ".join(why),
                                  f"use --profile {fix.name}" if fix else None, {"profile": rng.name}))
    return rng, fix, problems


def _is_tool_interpreter(facts: Facts) -> bool:
    """No --env, no activated env, and the interpreter is provision's own, holding no torch (by
    design: the chat stack lives in the environment provision builds, not in the tool's venv)."""
    target, probe = facts.target, facts.probe
    return (target is not None and target.kind == "current" and probe is not None
            and (probe.get("packages") or {}).get("torch") is None)


def _tool_interpreter_checks(facts: Facts, *, root: Path) -> list[Check]:
    assert facts.target is not None
    built = list(facts.built_envs or ())
    if built:
        fix = command_line(root, f"verify --env {built[-1]}")
        msg = (f"no environment given; provision's own interpreter ({facts.target.prefix}) holds no torch "
               f"by design. Environments provision built: {', '.join(built)}")
    else:
        fix = command_line(root, "env create") + "  (or the whole walkthrough: provision up)"
        msg = (f"no environment given; provision's own interpreter ({facts.target.prefix}) holds no torch "
               "by design, and provision has built no environment yet")
    return [Check("env", Status.SKIP, msg, fix, {"interpreter": str(facts.target.python)})]


def recorded_profile(facts: Facts) -> str | None:
    """The profile named in the env's provision record (provision-env.json), if provision built it."""
    name = (facts.record or {}).get("profile")
    return name if isinstance(name, str) and name else None


def evaluate(facts: Facts, *, root: Path | None = None, environ: Mapping[str, str],
             profile_name: str | None) -> list[Check]:
    """Judge the facts: the full, ordered list of checks these facts allow.

    A pure function of the facts (and the profiles): no process, no NVML, no machine file is read
    here. Facts that were not observed (a paste without an nvidia-smi) leave their checks out.
    """
    from provisioner import cuda

    root = Path(facts.root) if root is None else root
    if profile_name is None:
        # An environment `provision env create` built is judged against the profile it was built from.
        profile_name = recorded_profile(facts)
    rng, fixp, profile_checks = choose_profiles(facts, environ, profile_name)
    need_gpu = not (profile_name is not None and rng is not None and rng.is_cpu)
    checks = check_driver(facts, root=root, need_gpu=need_gpu)
    if facts.info is not None and (facts.info.gpus or facts.gpus_complete):
        checks += check_gpus(facts.info)
    if facts.cuda is not None:
        checks.append(cuda.judge_link(facts.cuda, root))
    if facts.cuda is not None or facts.toolkit_version:
        checks.append(check_toolkit_driver(facts, root=root))
    if facts.cuda is not None:
        checks.append(cuda.judge_nvcc_path(facts.cuda, root))
    checks += profile_checks
    info = facts.info or gpu.DriverInfo("no-library")
    if facts.target is None and facts.probe is None:
        if facts.target_error is not None or facts.origin == "live":
            checks.append(Check("env.python", Status.FAIL, facts.target_error or "no environment",
                                facts.target_hint, {}))
        # else: a paste without any environment facts: no env checks
    elif _is_tool_interpreter(facts):
        checks += _tool_interpreter_checks(facts, root=root)
    else:
        ctx = EnvContext(target=facts.target, profile=rng, profile_requested=bool(profile_name),
                         fix_profile=fixp, root=root, os_id=facts.os_id)
        env_checks = check_env(facts.probe, info, rng, ctx=ctx, probe_error=facts.probe_error)
        if facts.origin != "paste":
            # the probe's wall time (interpreter start included) says where verify's seconds go;
            # 0 when the env-probe cache answered (probe_cache says so, and when it was probed). The
            # message stays the same either way: the same facts give the same verdicts.
            first = env_checks[0]
            data = dict(first.data, probe_wall_seconds=round(facts.timings.get("env_probe", 0.0), 3))
            if facts.probe_cache is not None:
                data["probe_cache"] = dict(facts.probe_cache)
            env_checks[0] = replace(first, data=data)
        checks += env_checks
        if facts.target is not None:
            record = check_record(facts.record, facts.target.prefix, root)
            if record is not None:
                checks.append(record)
    return checks


def run_checks(*, root: Path, environ: Mapping[str, str], env_target: str | None,
               profile_name: str | None, fresh: bool = False) -> list[Check]:
    """Every verify check for this machine and environment (NVML and the env probe run as subprocesses)."""
    facts = gather(root=root, environ=environ, env_target=env_target, fresh=fresh)
    return evaluate(facts, root=root, environ=environ, profile_name=profile_name)


def smoke_checks(facts: Facts, checks: Sequence[Check], *, environ: Mapping[str, str], model: str | None,
                 quant: str, prompt: str | None, max_new_tokens: int, trust_remote_code: bool,
                 stream_to: Any = None, chat: SmokeResult | None = None) -> list[Check]:
    """The `--smoke-chat` checks (smoke.*): a real 4-bit chat in the environment, unless it cannot start.

    `chat`: the chat gather_and_chat ran in the probe's process, judged here; without one, it runs
    now in a process of its own.
    """
    from provisioner.model import smoke

    blocking = [c for c in checks if c.id in ("env.python", "env.torch") and c.status is Status.FAIL]
    if facts.target is None or blocking:
        why = blocking[0].id if blocking else "env.python"
        return [Check("smoke.load", Status.SKIP, f"smoke chat not run: {why} failed", None, {})]
    model = model or smoke.DEFAULT_MODEL
    problem = smoke.local_model_problem(model)
    if problem:
        return [Check("smoke.load", Status.FAIL, problem,
                      "pass a folder holding config.json and the weights, or a hub id", {})]
    result = chat
    if result is None:
        request = SmokeRequest(model, quant, prompt, max_new_tokens, trust_remote_code, stream_to)
        result = smoke.run_smoke(facts.target.python, model, **request.run_options(environ))
    gpus = _gpus(facts.info or gpu.DriverInfo("no-library"))
    free = gpus[0].memory_free if gpus else None
    return smoke.check_smoke(
        result, estimate_bytes=smoke.estimate_for(model, quant, environ, max_new_tokens=max_new_tokens),
        gpu_present=bool(gpus),
        fit_hint=smoke.fit_hint_for(model, quant, environ, free_bytes=free, max_new_tokens=max_new_tokens),
        bandwidth_bytes_per_s=gpus[0].bandwidth_bytes_per_s if gpus else None)
