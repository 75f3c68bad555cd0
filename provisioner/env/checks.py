"""The env.* checks: an environment's Python, torch build, CUDA, architectures, packages and bitsandbytes,
judged from the probe's facts (or what a paste shows of them)."""
from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.env.target import EnvTarget
from provisioner.known_messages import explain
from provisioner.report import Check, Status
from provisioner.system import gpu
from provisioner.system.checks import driver_install_fix
from provisioner.versions import CudaVersion

if TYPE_CHECKING:
    from provisioner.profiles import Profile


def _provision(root: Path, args: str) -> str:
    from provisioner.cuda import command_line

    return command_line(root, args)


# --------------------------------------------------------------------------- environment

@dataclass(frozen=True)
class EnvContext:
    """What the env checks need besides the probe: where the env is and which profiles fix it."""

    target: EnvTarget | None = None
    profile: Profile | None = None            # ranges to check against (chosen as the issue says)
    profile_requested: bool = False           # --profile given
    fix_profile: Profile | None = None        # the profile this machine should use (for fixes)
    root: Path = Path("/")
    os_id: tuple[str, ...] = ()
    #: why this machine cannot check the GPU (a named CUDA build made for another machine): the checks
    #: that need one skip with this reason, the package and build checks still run
    on_target: str | None = None

    def target_skip(self, cid: str, what: str, data: Mapping[str, Any]) -> Check:
        """A GPU check left to the target machine: `what` could not be checked here, and why."""
        from provisioner.env.choose import ON_TARGET

        return Check(cid, Status.SKIP, f"{what}: {self.on_target}; {ON_TARGET}", None, dict(data))


def _pip(ctx: EnvContext) -> str:
    py = str(ctx.target.python) if ctx.target else "python"
    return f"{shlex.quote(py)} -m pip"


def _torch_fix(ctx: EnvContext, profile: Profile | None, *, replace: bool = True) -> str | None:
    """Install `profile`'s torch build in the env, in place (plus the fresh-env alternative)."""
    if profile is None:
        return None
    py = str(ctx.target.python) if ctx.target else "python"
    install = shlex.join(profile.install_commands(py)[0])
    fresh = _provision(ctx.root, f"env create --profile {profile.name}")
    if not replace:
        return f"{install}  (or a fresh env: {fresh})"
    # An installed 2.13.0+cpu satisfies `torch==2.13.0`, so pip would keep it: uninstall first.
    companions = " ".join(["torch"] + [n for n, v in (("torchvision", profile.torchvision),
                                                       ("torchaudio", profile.torchaudio)) if v])
    return f"{_pip(ctx)} uninstall -y {companions} && {install}  (or a fresh env: {fresh})"


def _packages_fix(ctx: EnvContext, names: Sequence[str]) -> str | None:
    profile = ctx.profile
    if profile is None:
        return f"{_pip(ctx)} install -U " + " ".join(names)
    from provisioner.profiles import spec_text

    reqs = []
    for name in names:
        spec = profile.packages.get(name)
        reqs.append(shlex.quote(f"{name}{spec_text(spec)}" if spec is not None and str(spec) else name))
    return f"{_pip(ctx)} install " + " ".join(reqs)


def _line(v: CudaVersion | None) -> tuple[int, int] | None:
    return (v.major, v.minor) if v is not None else None


def arch_supported(arch_list: Sequence[str], cc: tuple[int, int]) -> bool:
    """Whether a binary with these `sm_XY` / `compute_XY` targets runs on compute capability `cc`.

    A cubin for sm_XY runs on X.Z with Z >= Y (binary compatibility within a major; the
    arch-specific sm_90a/sm_100f variants do not carry over); PTX (compute_XY) is JIT-compiled for
    any newer GPU.
    """
    for entry in arch_list:
        kind, _, digits = entry.partition("_")
        if not digits or not digits[:-1].isdigit():
            continue
        if not digits[-1].isdigit():
            continue   # sm_90a, sm_100f: tied to that exact architecture family
        target = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and target[0] == cc[0] and target[1] <= cc[1]:
            return True
        if kind == "compute" and target <= cc:
            return True
    return False


def _gpus(info: gpu.DriverInfo) -> tuple[gpu.GpuInfo, ...]:
    return info.gpus if info.status == "ok" else ()


def check_env(probe: Mapping[str, Any] | None, info: gpu.DriverInfo, profile: Profile | None,
              *, ctx: EnvContext | None = None, probe_error: str | None = None) -> list[Check]:
    """env.python, env.torch, env.torch_cuda, env.torch_arch, env.packages, env.requirements,
    env.bitsandbytes."""
    ctx = ctx or EnvContext(profile=profile)
    if ctx.profile is not profile:
        ctx = replace(ctx, profile=profile)
    where = ctx.target.describe() if ctx.target else "the environment"
    ids = ("env.torch", "env.torch_cuda", "env.torch_arch", "env.packages", "env.requirements",
           "env.bitsandbytes")
    if probe is None:
        msg = f"cannot run the Python of {where}: {probe_error or 'no result'}"
        fresh = _provision(ctx.root, "env create --profile "
                           + (ctx.fix_profile.name if ctx.fix_profile else "auto"))
        return [Check("env.python", Status.FAIL, msg, f"recreate it: {fresh}", {"error": probe_error}),
                *(Check(i, Status.SKIP, "the environment's Python did not run", None, {}) for i in ids)]
    py = probe.get("python") or {}
    pkgs: Mapping[str, str | None] = probe.get("packages") or {}
    if probe.get("partial"):
        # What a paste shows of an environment: judge what is there, leave the rest unjudged.
        return _check_pasted_env(probe, pkgs, info, ctx)
    checks = [Check("env.python", Status.OK, f"Python {py.get('version', '?')} in {where}", None,
                    {"python": py, "prefix": str(ctx.target.prefix) if ctx.target else py.get("prefix"),
                     "kind": ctx.target.kind if ctx.target else None,
                     "probe_seconds": probe.get("seconds")})]
    torch: Mapping[str, Any] = probe.get("torch") or {}
    checks.append(_check_torch(pkgs, torch, ctx, probe_error))
    checks.append(_check_torch_cuda(torch, info, ctx))
    checks.append(_check_torch_arch(torch, info, ctx))
    checks.append(_check_packages(pkgs, ctx))
    checks.append(check_requirements(probe.get("requirements"), pkgs, py, ctx))
    checks.append(_check_bnb(pkgs, torch, probe.get("bitsandbytes"), info, ctx))
    return checks


def _check_pasted_env(probe: Mapping[str, Any], pkgs: Mapping[str, str | None], info: gpu.DriverInfo,
                      ctx: EnvContext) -> list[Check]:
    """env.* for an environment known only from pasted text (pip list, collect_env, ...).

    A package the paste does not list is unknown, not missing; torch is judged when the paste
    shows its build (a +cuXYZ/+cpu label, collect_env's "CUDA used to build PyTorch").
    """
    torch: Mapping[str, Any] = probe.get("torch") or {}
    checks: list[Check] = []
    version = pkgs.get("torch") or torch.get("version")
    if version is None:
        checks.append(Check("env.torch", Status.SKIP, "the paste does not show torch", None, {}))
    elif not torch.get("build"):
        checks.append(Check("env.torch", Status.SKIP,
                            f"torch {version}: the paste does not show which build (CUDA or CPU)", None,
                            {"version": version}))
    else:
        checks.append(_check_torch(pkgs, torch, ctx, None))
        checks.append(_check_torch_cuda(torch, info, ctx))
    installed = {k: v for k, v in pkgs.items() if v}
    if ctx.profile is not None and installed:
        problems = ctx.profile.check_versions(installed)
        shown = ", ".join(f"{n} {v}" for n, v in installed.items())
        if problems:
            checks.append(Check("env.packages", Status.WARN,
                                f"against profile {ctx.profile.name}: " + "; ".join(problems),
                                _provision(ctx.root, f"env create --profile {ctx.profile.name}"),
                                {"profile": ctx.profile.name, "installed": installed, "problems": problems}))
        else:
            checks.append(Check("env.packages", Status.OK,
                                f"{shown} within profile {ctx.profile.name}'s ranges", None,
                                {"profile": ctx.profile.name, "installed": installed}))
    return checks


def _check_torch(pkgs: Mapping[str, str | None], torch: Mapping[str, Any], ctx: EnvContext,
                 probe_error: str | None) -> Check:
    version = pkgs.get("torch")
    fix_profile = ctx.fix_profile or ctx.profile
    if version is None:
        return Check("env.torch", Status.FAIL, "torch is not installed in this environment",
                     _torch_fix(ctx, fix_profile, replace=False), {})
    if not torch.get("imported"):
        error = torch.get("error") or probe_error or "the probe did not finish"
        suffix, known_fix, known_id = explain(error, profile=fix_profile.name if fix_profile else None)
        return Check("env.torch", Status.FAIL,
                     f"torch {version} is installed but `import torch` fails: {error}{suffix}",
                     known_fix or _torch_fix(ctx, fix_profile),
                     {"version": version, "error": error, "known_message": known_id})
    build = torch.get("build")
    desc = "CPU-only build" if build == "cpu" else (
        f"CUDA {torch.get('cuda')} build" if build == "cuda" else f"{build} build")
    took = (f", import {torch['import_seconds']} s" if torch.get("import_seconds") is not None
            else "" if torch.get("pasted") else ", import ? s")
    return Check("env.torch", Status.OK, f"torch {torch.get('version')} ({desc}){took}", None,
                 {"version": torch.get("version"), "build": build, "cuda": torch.get("cuda"),
                  "import_seconds": torch.get("import_seconds")})


def _check_torch_cuda(torch: Mapping[str, Any], info: gpu.DriverInfo, ctx: EnvContext) -> Check:
    cid = "env.torch_cuda"
    if not torch.get("imported"):
        return Check(cid, Status.SKIP, "torch does not import", None, {})
    gpus = _gpus(info)
    fixp = ctx.fix_profile
    build = torch.get("build")
    data = {"build": build, "cuda": torch.get("cuda"), "cuda_available": torch.get("cuda_available"),
            "device_count": torch.get("device_count"),
            "driver_cuda": info.cuda.short if info.cuda else None}
    wants_cuda = ctx.profile is not None and not ctx.profile.is_cpu and ctx.profile_requested
    if build == "cpu":
        if gpus and not (ctx.profile_requested and ctx.profile is not None and ctx.profile.is_cpu):
            names = ", ".join(sorted({g.name or "?" for g in gpus}))
            cuda_profile = next((p for p in (fixp, ctx.profile) if p is not None and not p.is_cpu), None)
            return Check(cid, Status.FAIL,
                         f"torch {torch.get('version')} is a CPU-only build on a machine with "
                         f"{len(gpus)} NVIDIA GPU(s) ({names}): everything would run on the CPU",
                         _torch_fix(ctx, cuda_profile), data)
        if wants_cuda:
            assert ctx.profile is not None
            return Check(cid, Status.FAIL,
                         f"torch is a CPU-only build; profile {ctx.profile.name} wants the "
                         f"{ctx.profile.variant} build", _torch_fix(ctx, ctx.profile), data)
        if info.status == "ok" or info.status == "no-library":
            why = "no NVIDIA driver" if info.status == "no-library" else "NVML lists no GPU"
            return Check(cid, Status.OK, f"CPU-only build, as fits this machine ({why})", None, data)
        return Check(cid, Status.WARN,
                     f"CPU-only build; the NVIDIA driver is installed but not usable ({info.status}): "
                     "once the driver works, this environment needs a CUDA build", None, data)
    if build != "cuda":
        return Check(cid, Status.WARN, f"torch is a {build} build, not CUDA", None, data)

    wheel = CudaVersion.parse(str(torch.get("cuda")))
    warnings_text = "\n".join(torch.get("warnings") or []) + "\n" + str(torch.get("cuda_error") or "")
    if ctx.on_target is not None and not gpus and info.status != "ok":
        return ctx.target_skip(cid, f"CUDA {wheel.short} build, not run on a GPU here", data)
    if info.status != "ok":
        return Check(cid, Status.WARN,
                     f"CUDA {wheel.short} build, but there is no usable NVIDIA driver: torch runs on the CPU",
                     driver_install_fix(ctx.os_id), data)
    fix = _torch_fix(ctx, fixp)
    if info.cuda is not None and _line(wheel) > _line(info.cuda):  # type: ignore[operator]
        from provisioner.system import compat

        family = compat.family_min_driver(wheel)
        drv = info.driver_version
        if wheel.major == info.cuda.major and family and drv is not None and drv >= family[0]:
            return Check(cid, Status.WARN,
                         f"torch is built for CUDA {wheel.short}, newer than the CUDA {info.cuda.short} "
                         f"driver {drv} supports; it runs through minor version compatibility "
                         f"(driver >= {family[0]}), without PTX JIT", fix, data)
        suffix, _, known_id = explain(warnings_text)
        return Check(cid, Status.FAIL,
                     f"torch is built for CUDA {wheel.short} but driver {drv or '?'} supports only up "
                     f"to CUDA {info.cuda.short}: torch cannot use the GPU{suffix}",
                     fix, dict(data, known_message=known_id))
    if gpus and torch.get("cuda_available") is False:
        suffix, known_fix, known_id = explain(warnings_text, profile=fixp.name if fixp else None)
        detail = (torch.get("warnings") or [torch.get("cuda_error") or "no reason given"])[0]
        return Check(cid, Status.FAIL,
                     f"CUDA {wheel.short} build, but torch.cuda.is_available() is False: {detail}{suffix}",
                     known_fix or fix, dict(data, known_message=known_id))
    if torch.get("kernel_ok") is False:
        err = str(torch.get("kernel_error") or "")
        suffix, known_fix, known_id = explain(err, profile=fixp.name if fixp else None)
        return Check(cid, Status.FAIL, f"a CUDA kernel failed to run: {err}{suffix}",
                     known_fix or fix, dict(data, known_message=known_id))
    if ctx.on_target is not None and not gpus:
        return ctx.target_skip(cid, f"CUDA {wheel.short} build, not run on a GPU here", data)
    n = torch.get("device_count") or 0
    seen = "" if torch.get("pasted") else f"; {n} device(s) visible to torch"
    return Check(cid, Status.OK,
                 f"CUDA {wheel.short} build; the driver supports CUDA {info.cuda.short if info.cuda else '?'}"
                 + seen, None, data)


def _check_torch_arch(torch: Mapping[str, Any], info: gpu.DriverInfo, ctx: EnvContext) -> Check:
    cid = "env.torch_arch"
    if not torch.get("imported") or torch.get("build") != "cuda":
        return Check(cid, Status.SKIP, "no CUDA build of torch", None, {})
    gpus = [g for g in _gpus(info) if g.cc is not None]
    if not gpus and ctx.on_target is not None:
        return ctx.target_skip(cid, "the wheel's architectures against the GPUs",
                               {"arch_list": list(torch.get("arch_list") or [])})
    if not gpus:
        return Check(cid, Status.SKIP, "no GPU with a known compute capability", None, {})
    archs = list(torch.get("arch_list") or [])
    if not archs:
        return Check(cid, Status.SKIP, "torch reports no arch list", None, {})
    missing = [g for g in gpus if not arch_supported(archs, g.cc)]  # type: ignore[arg-type]
    data = {"arch_list": archs, "gpus": {str(g.index): g.sm for g in gpus}}
    if missing:
        fixp = ctx.fix_profile
        what = ", ".join(f"GPU {g.index} {g.name} ({g.sm})" for g in missing)
        return Check(cid, Status.FAIL,
                     f"torch {torch.get('version')} has no kernels for {what}; it was compiled for "
                     f"{' '.join(archs)}: every CUDA op fails with \"no kernel image is available\"",
                     _torch_fix(ctx, fixp), data)
    sms = ", ".join(sorted({g.sm or '?' for g in gpus}))
    return Check(cid, Status.OK, f"the wheel's arch list covers {sms}", None, data)


def _check_packages(pkgs: Mapping[str, str | None], ctx: EnvContext) -> Check:
    cid = "env.packages"
    profile = ctx.profile
    if profile is None:
        return Check(cid, Status.SKIP, "no profile to compare with", None, {})
    installed = {k: v for k, v in pkgs.items() if v}
    problems = profile.check_versions(installed)
    missing = [n for n in profile.packages if not pkgs.get(n) and n != "bitsandbytes"]
    data = {"profile": profile.name, "installed": installed, "problems": problems, "missing": missing}
    if missing:
        problems = [f"missing: {', '.join(missing)}"] + problems
    if problems:
        bad = missing + [n for n in profile.packages if n not in missing and any(
            p.startswith(f"{n} ") for p in problems)]
        torch_bad = any(p.startswith(("torch ", "torchvision ", "torchaudio ")) for p in problems)
        fixes = []
        if torch_bad:
            fixes.append(_torch_fix(ctx, profile) or "")
        if bad:
            fixes.append(_packages_fix(ctx, bad) or "")
        return Check(cid, Status.FAIL, f"against profile {profile.name}: " + "; ".join(problems),
                     " && ".join(f for f in fixes if f) or None, data)
    shown = ", ".join(f"{n} {installed[n]}" for n in profile.packages if n in installed)
    return Check(cid, Status.OK, f"{shown or 'nothing to compare'} within profile {profile.name}'s ranges",
                 None, data)


def _marker_environment(py: Mapping[str, Any]) -> dict[str, str]:
    """PEP 508 marker values of the environment's Python, as the probe saw it (not this process's)."""
    version = str(py.get("version") or "")
    return {"python_version": ".".join(version.split(".")[:2]), "python_full_version": version,
            "platform_machine": str(py.get("machine") or ""), "sys_platform": str(py.get("platform") or "linux"),
            "platform_system": str(py.get("system") or "Linux"), "os_name": "posix",
            "implementation_name": str(py.get("implementation") or "CPython").lower(),
            "platform_python_implementation": str(py.get("implementation") or "CPython"), "extra": ""}


def check_requirements(reqs: Mapping[str, Any] | None, pkgs: Mapping[str, str | None],
                       py: Mapping[str, Any], ctx: EnvContext) -> Check:
    """env.requirements: what torch, transformers, accelerate and bitsandbytes declare they need, against
    what is installed, pip-check style for the stack. A broken one fails the user's load rather than the
    probe, which imports torch and bitsandbytes only: transformers refuses to import with tokenizers or
    huggingface-hub outside its range; torch._dynamo, which transformers imports to load a model and
    the probe does not, needs torch's sympy."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    cid = "env.requirements"
    if not reqs or not isinstance(reqs.get("declared"), Mapping):
        return Check(cid, Status.SKIP, "the probe did not read the packages' declared requirements", None, {})
    installed = {canonicalize_name(str(k)): v for k, v in (reqs.get("installed") or {}).items()}
    marker_env = _marker_environment(py)
    problems: list[dict[str, Any]] = []
    checked = 0
    for requirer, lines in reqs["declared"].items():
        for line in lines or []:
            try:
                req = Requirement(str(line))
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate(marker_env):
                continue
            checked += 1
            have = installed.get(canonicalize_name(req.name))
            try:
                ok = have is not None and req.specifier.contains(Version(str(have)), prereleases=True)
            except InvalidVersion:
                ok = True                                  # not comparable: not ours to judge
            if not ok:
                extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
                problems.append({"requirer": requirer, "version": pkgs.get(requirer),
                                 "requirement": f"{req.name}{extras}{req.specifier}", "name": req.name,
                                 "installed": have})
    data = {"checked": checked, "problems": problems}
    if not problems:
        names = ", ".join(reqs["declared"])
        return Check(cid, Status.OK, f"{checked} requirements of {names or 'nothing'} met", None, data)
    said = [" ".join(filter(None, (p["requirer"], p["version"]))) + f" requires {p['requirement']}, "
            + (f"installed {p['installed']}" if p["installed"] else "not installed") for p in problems]
    more = f"; and {len(said) - 3} more" if len(said) > 3 else ""
    torch_family = ("torch", "torchvision", "torchaudio")
    fixes = [_torch_fix(ctx, ctx.fix_profile or ctx.profile)
             if any(canonicalize_name(p["name"]) in torch_family for p in problems) else None]
    wanted = list(dict.fromkeys(p["requirement"] for p in problems
                                if canonicalize_name(p["name"]) not in torch_family))
    if wanted:
        fixes.append(f"{_pip(ctx)} install " + " ".join(shlex.quote(w) for w in wanted))
    return Check(cid, Status.FAIL, "; ".join(said[:3]) + more, " && ".join(f for f in fixes if f) or None, data)


def _check_bnb(pkgs: Mapping[str, str | None], torch: Mapping[str, Any], bnb: Mapping[str, Any] | None,
               info: gpu.DriverInfo, ctx: EnvContext) -> Check:
    cid = "env.bitsandbytes"
    version = pkgs.get("bitsandbytes")
    fixp = ctx.fix_profile or ctx.profile
    values = {"profile": fixp.name if fixp else None}
    if version is None:
        return Check(cid, Status.FAIL, "bitsandbytes is not installed: no 4-bit loading",
                     _packages_fix(ctx, ["bitsandbytes"]), {})
    if not torch.get("imported"):
        return Check(cid, Status.SKIP, f"bitsandbytes {version} installed; torch does not import", None,
                     {"version": version})
    if not bnb:
        return Check(cid, Status.SKIP, f"bitsandbytes {version} installed; not probed", None, {})
    log = "\n".join(bnb.get("log") or [])
    data = {k: bnb.get(k) for k in ("version", "backend", "native", "library", "native_error",
                                    "matmul", "import_seconds")}
    reinstall = f"{_pip(ctx)} install -U --force-reinstall --no-deps bitsandbytes"
    if not bnb.get("imported"):
        err = str(bnb.get("error"))
        suffix, known_fix, known_id = explain(err + "\n" + log, **values)
        return Check(cid, Status.FAIL, f"bitsandbytes {version} does not import: {err}{suffix}",
                     known_fix or reinstall, dict(data, known_message=known_id))
    on_gpu = bool(torch.get("cuda_available")) and bool(_gpus(info))
    if ctx.on_target is not None and not on_gpu and torch.get("build") == "cuda":
        data = {k: bnb.get(k) for k in ("version", "backend", "native", "library", "native_error",
                                        "matmul", "import_seconds")}
        return ctx.target_skip(cid, f"bitsandbytes {version} imports; its CUDA library and a 4-bit matmul "
                                    "on the GPU are not run here", data)
    native = bool(bnb.get("native"))
    lib = bnb.get("library") or "?"
    matmul: Mapping[str, Any] = bnb.get("matmul") or {}
    if on_gpu and (not native or not str(lib).startswith("libbitsandbytes_cuda")):
        err = str(bnb.get("native_error") or f"loaded {lib}")
        suffix, known_fix, known_id = explain(err + "\n" + log, **values)
        return Check(cid, Status.FAIL,
                     f"bitsandbytes {version} has no working CUDA library for torch's CUDA "
                     f"{torch.get('cuda')}: {err.strip().splitlines()[0] if err.strip() else err}{suffix}",
                     known_fix or f"{_pip(ctx)} install -U bitsandbytes", dict(data, known_message=known_id))
    if not matmul.get("ok"):
        err = str(matmul.get("error") or "no result")
        suffix, known_fix, known_id = explain(err + "\n" + log, **values)
        return Check(cid, Status.FAIL,
                     f"bitsandbytes {version}: a 4-bit NF4 matmul on {matmul.get('device', '?')} "
                     f"failed: {err}{suffix}", known_fix or reinstall, dict(data, known_message=known_id))
    detail = (f"4-bit NF4 matmul on {matmul.get('device')} matches fp32 within "
              f"{matmul.get('rel_error')}")
    if not native:
        return Check(cid, Status.WARN,
                     f"bitsandbytes {version}: native library not loaded, running on its pure-PyTorch "
                     f"fallback ({bnb.get('native_error') or '?'}); {detail}", reinstall, data)
    return Check(cid, Status.OK, f"bitsandbytes {version}, native library {lib}; {detail}", None, data)


def check_record(record: Mapping[str, Any] | None, prefix: Path, root: Path) -> Check | None:
    """env.record: an environment provision built is ready only if its build finished (None: not ours)."""
    if record is None:
        return None
    status = str(record.get("status") or "building")
    data = {"status": status, "profile": record.get("profile"), "completed": record.get("completed"),
            "error": record.get("error")}
    if status == "complete":
        return Check("env.record", Status.OK, f"built by provision from profile {record.get('profile')}, "
                     f"completed {record.get('completed') or '?'}", None, data)
    why = f" (it failed: {str(record['error']).splitlines()[0]})" if record.get("error") else " (it was interrupted)"
    return Check("env.record", Status.FAIL,
                 f"this environment's `env create` for profile {record.get('profile') or '?'} never finished{why}: "
                 "it is not ready, whatever its packages say",
                 _provision(root, f"env create --prefix {prefix} --force"), data)
