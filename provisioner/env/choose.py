"""Which profile fits this machine: driver, each GPU's compute capability and the linked toolkit."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from provisioner.errors import ProvisionError, UsageError
from provisioner.versions import CudaVersion, DriverVersion

if TYPE_CHECKING:
    from provisioner.profiles import Profile
    from provisioner.system.gpu import DriverInfo

#: What checks a named build's GPU needs where this machine cannot (the warning's last words).
ON_TARGET = "`provision verify` on the target machine checks it"

#: Driver states that mean "no NVIDIA driver on this machine": a CPU build is the right answer.
#: Any other non-ok state (module not loaded, NVML/RM mismatch, error) is a driver to repair, and
#: silently falling back to CPU there is what users of other installers complain about.
NO_DRIVER = ("no-library",)


@dataclass(frozen=True)
class GpuFact:
    index: int
    name: str
    cc: tuple[int, int] | None          # None: NVML could not tell

    @property
    def sm(self) -> str:
        return f"sm_{self.cc[0]}{self.cc[1]}" if self.cc else "sm_?"

    def label(self) -> str:
        return f"GPU {self.index} {self.name}"


@dataclass(frozen=True)
class MachineFacts:
    """What the profile choice looks at: a view of facts.Facts (Facts.machine()), or built directly in tests."""

    driver_status: str = "no-library"             # gpu.DriverInfo.status
    driver_version: DriverVersion | None = None
    driver_cuda: CudaVersion | None = None        # newest CUDA the driver supports
    gpus: tuple[GpuFact, ...] = ()
    toolkit: CudaVersion | None = None            # what /usr/local/cuda points at
    driver_error: str | None = None
    #: NVML's full answer (memory, processes) for callers that need more than the choice does
    driver: DriverInfo | None = field(default=None, compare=False, repr=False)

    @property
    def has_gpu(self) -> bool:
        return self.driver_status == "ok" and bool(self.gpus)

    def summary(self) -> str:
        """One line: "driver 575.57.08 (CUDA 12.9), GPU 0 ... (sm_61), toolkit 12.6"."""
        if self.driver_status != "ok":
            head = f"no usable NVIDIA driver ({self.driver_status})"
        else:
            head = f"driver {self.driver_version or '?'}"
            if self.driver_cuda:
                head += f" (CUDA {self.driver_cuda.short})"
        parts = [head] + [f"{g.label()} ({g.sm})" for g in self.gpus]
        parts.append(f"toolkit {self.toolkit.short}" if self.toolkit else "no linked toolkit")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "driver_status": self.driver_status,
            "driver_error": self.driver_error,
            "driver_version": str(self.driver_version) if self.driver_version else None,
            "driver_cuda": self.driver_cuda.short if self.driver_cuda else None,
            "gpus": [{"index": g.index, "name": g.name,
                      "cc": f"{g.cc[0]}.{g.cc[1]}" if g.cc else None} for g in self.gpus],
            "toolkit": str(self.toolkit) if self.toolkit else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MachineFacts:
        def cc(text: Any) -> tuple[int, int] | None:
            if not text:
                return None
            major, minor = str(text).split(".")
            return int(major), int(minor)

        return cls(
            driver_status=str(d.get("driver_status") or "no-library"),
            driver_error=d.get("driver_error"),
            driver_version=DriverVersion.parse(d["driver_version"]) if d.get("driver_version") else None,
            driver_cuda=CudaVersion.parse(d["driver_cuda"]) if d.get("driver_cuda") else None,
            gpus=tuple(GpuFact(int(g["index"]), str(g.get("name") or "?"), cc(g.get("cc")))
                       for g in d.get("gpus") or ()),
            toolkit=CudaVersion.parse(d["toolkit"]) if d.get("toolkit") else None,
        )

    @classmethod
    def from_probe(cls, info: DriverInfo, toolkit: CudaVersion | None) -> MachineFacts:
        return cls(
            driver_status=info.status,
            driver_error=info.error,
            driver_version=info.driver_version,
            driver_cuda=info.cuda,
            gpus=tuple(GpuFact(g.index, g.name or "?", g.cc) for g in info.gpus),
            toolkit=toolkit,
            driver=info,
        )


@dataclass(frozen=True)
class Unchecked:
    """What a named CUDA build needs that this machine cannot show (no usable driver, no GPU): built
    anyway, for the machine it is meant for, where `provision verify` checks it."""

    what: str                 # "profile cu126", "the lock's cu126 build"
    why: str                  # "no NVIDIA driver/GPU visible here (no libnvidia-ml.so.1 found)"
    needs: str                # "driver >= 525.60.13 and a GPU of compute capability 5.0-9.x"

    def line(self) -> str:
        """The one warning line: what could not be checked here, and where it is checked."""
        return f"{self.why}: {self.what} needs {self.needs}; {ON_TARGET}"


@dataclass(frozen=True)
class Choice:
    profile: Profile
    reasons: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)    # (profile name, why not)
    unchecked: Unchecked | None = None      # a named CUDA build this machine cannot check
    #: a named build this machine visibly cannot run, kept (not raised) for a plan that only prints
    refusal: ProvisionError | None = field(default=None, compare=False)

    def describe(self) -> str:
        lines = [f"profile {self.profile.name}: " + "; ".join(self.reasons)]
        lines += [f"  not {name}: {why}" for name, why in self.rejected]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "reasons": list(self.reasons),
                "rejected": [{"profile": n, "reason": r} for n, r in self.rejected],
                "unchecked": self.unchecked.line() if self.unchecked else None,
                "refused": self.refusal.message if self.refusal else None}


def requirement_problems(facts: MachineFacts, *, cuda: CudaVersion | None,
                         driver_min: DriverVersion | None,
                         supports_cc: Any = None, wheel: str = "wheel", named: bool = False) -> list[str]:
    """Why a build for `cuda` (None: CPU) cannot run here; empty when it can.

    Shared by the profile choice and `--from-lock`, which has only the recorded facts of a profile.
    `named`: the user named this build (--profile, --cuda, a lock), perhaps for another machine. Then
    only what this machine shows and contradicts counts (a driver too old, a GPU without kernels);
    what it cannot show (no usable driver, no GPU) is not a problem but unchecked() (a warning).
    """
    if cuda is None:
        return []
    if not facts.has_gpu and not named:
        if facts.driver_status == "ok":
            return ["the NVIDIA driver reports no GPU"]
        return [f"no usable NVIDIA GPU/driver ({_driver_state(facts)})"]
    problems = []
    # driver_version is known only from a working driver (status "ok"), with or without a GPU
    if driver_min is not None and facts.driver_version is not None and facts.driver_version < driver_min:
        problems.append(f"needs driver >= {driver_min}, this machine has {facts.driver_version}")
    # Within a major release a newer wheel runs on an older driver of that family (CUDA minor
    # version compatibility; the profile's driver_min carries that floor with its source). Across
    # majors it cannot: a 13.x wheel on a driver that speaks 12.x fails with "driver too old".
    if (not problems and facts.driver_cuda is not None and facts.driver_status == "ok"
            and cuda.major > facts.driver_cuda.major):
        problems.append(f"a CUDA {cuda.major}.x build needs a CUDA {cuda.major} driver; driver "
                        f"{facts.driver_version or '?'} supports CUDA {facts.driver_cuda.short}")
    if supports_cc is not None and facts.driver_status == "ok":
        for g in facts.gpus:
            if g.cc is not None and not supports_cc(g.cc):
                problems.append(f"its {wheel} has no kernels for {g.sm} ({g.label()})")
    return problems


def unchecked(facts: MachineFacts, profile: Profile, *, what: str | None = None) -> Unchecked | None:
    """What a CUDA `profile` needs that this machine cannot show; None when it shows everything
    (a usable driver and GPUs) or the build needs nothing (CPU)."""
    if profile.cuda is None or facts.has_gpu:
        return None
    gpu = f"a GPU of compute capability {cc_range(profile)}"
    if facts.driver_status == "ok":
        # the driver is here and was checked; only the GPU is missing
        why, needs = f"NVIDIA driver {facts.driver_version or '?'} reports no GPU here", gpu
    else:
        why = f"no NVIDIA driver/GPU visible here ({_driver_state(facts)})"
        needs = (f"driver >= {profile.driver_min} and {gpu}" if profile.driver_min is not None else gpu)
    return Unchecked(what or f"profile {profile.name}", why, needs)


def cc_range(profile: Profile) -> str:
    """The compute capabilities a wheel has kernels for, short: "5.0-9.x", "7.5-10.x, 12.0 or newer".

    A cubin for X.Y runs on X.Z with Z >= Y; PTX of P runs on anything >= P (Profile.supports_cc).
    """
    lowest: dict[int, int] = {}
    for major, minor in sorted(profile.compute_capabilities):
        lowest.setdefault(major, minor)
    ptx = profile.ptx
    majors = sorted(m for m in lowest if ptx is None or (m, lowest[m]) < ptx)
    runs: list[list[int]] = []
    for m in majors:
        if runs and m == runs[-1][-1] + 1:
            runs[-1].append(m)
        else:
            runs.append([m])
    parts = []
    for run in runs:
        first, last = run[0], run[-1]
        start = f"{first}.{lowest[first]}"
        parts.append(f"{first}.x" if first == last and lowest[first] == 0 else f"{start}-{last}.x")
    if ptx is not None:
        parts.append(f"{ptx[0]}.{ptx[1]} or newer")
    return ", ".join(parts) or "any"


def _driver_state(facts: MachineFacts) -> str:
    if facts.driver_status in NO_DRIVER:
        return "no libnvidia-ml.so.1 found"
    return facts.driver_status + (f": {facts.driver_error}" if facts.driver_error else "")


def profile_problems(profile: Profile, facts: MachineFacts, *, named: bool = False) -> list[str]:
    """Why `profile` cannot run on this machine; empty when it can (see requirement_problems)."""
    return requirement_problems(facts, cuda=profile.cuda, driver_min=profile.driver_min,
                                supports_cc=profile.supports_cc,
                                wheel=f"torch {profile.torch} {profile.variant} wheel", named=named)


def _newest_first(profiles: Sequence[Profile]) -> list[Profile]:
    # The newest torch first (a cu129 build of torch 2.8 is older than a cu126 build of 2.13),
    # then the newest CUDA build of it; a line's default profile (named cu126) wins a tie.
    def key(p: Profile) -> tuple[Any, ...]:
        cuda = (p.cuda.major, p.cuda.minor) if p.cuda else (0, 0)
        return (p.torch, cuda, p.name == p.variant, p.name)

    return sorted(profiles, key=key, reverse=True)


def _line(v: CudaVersion | None) -> tuple[int, int] | None:
    return (v.major, v.minor) if v is not None else None


def choose_profile(facts: MachineFacts, profiles: Mapping[str, Profile], *,
                   requested: str | None = None, cuda: CudaVersion | None = None,
                   keep_refusal: bool = False) -> Choice:
    """The profile to build: `requested` by name, the newest of `cuda`'s line, or the best fit.

    A named profile (`requested`, `cuda`) may be for another machine: where this one shows no usable
    driver or GPU it is chosen anyway, with Choice.unchecked saying what `provision verify` on the
    target checks. Raises ProvisionError (with the reasons) where this machine shows that it cannot
    run the request (a driver too old, a GPU without kernels; with `keep_refusal`, for a plan that
    only prints, the error is kept in Choice.refusal instead), and when no profile fits a machine
    that has a GPU (never a silent CPU fallback).
    """
    if requested and requested != "auto":
        choice = _requested(facts, profiles, requested)
    elif cuda is not None:
        choice = _for_cuda(facts, profiles, cuda)
    else:
        return _auto(facts, profiles)
    if choice.refusal is not None and not keep_refusal:
        raise choice.refusal
    return choice


def _requested(facts: MachineFacts, profiles: Mapping[str, Profile], name: str) -> Choice:
    profile = profiles.get(name)
    if profile is None:
        known = ", ".join(profiles) or "none"
        raise UsageError(f"no profile named '{name}'",
                         hint=f"known profiles: {known}; or use --profile auto")
    reasons = [f"requested with --profile {name}"]
    problems = profile_problems(profile, facts, named=True)
    if problems:
        return Choice(profile, reasons, refusal=ProvisionError(
            f"profile {name} cannot run on this machine: " + "; ".join(problems), hint=_refusal_hint(facts)))
    if profile.is_cpu and facts.has_gpu:
        return Choice(profile, [f"requested with --profile {name} (a CPU build although "
                                f"{len(facts.gpus)} NVIDIA GPU(s) are present)"])
    return Choice(profile, reasons, unchecked=unchecked(facts, profile))


def _for_cuda(facts: MachineFacts, profiles: Mapping[str, Profile], cuda: CudaVersion) -> Choice:
    line = [p for p in profiles.values() if _line(p.cuda) == _line(cuda)]
    if not line:
        have = sorted({p.cuda.short for p in profiles.values() if p.cuda}, key=CudaVersion.parse)
        raise UsageError(f"no profile for CUDA {cuda.short}",
                         hint="profiles exist for CUDA " + ", ".join(have)
                              + "; or add one under $XDG_CONFIG_HOME/provision/profiles")
    ranked = _newest_first(line)
    rejected: list[tuple[str, str]] = []
    for p in ranked:
        problems = profile_problems(p, facts, named=True)
        if not problems:
            return Choice(p, [f"requested with --cuda {cuda.short}", *_fit_reasons(p, facts)],
                          rejected, unchecked=unchecked(facts, p))
        rejected.append((p.name, "; ".join(problems)))
    return Choice(ranked[0], [f"requested with --cuda {cuda.short}"], rejected[1:], refusal=ProvisionError(
        f"CUDA {cuda.short} cannot run on this machine: {rejected[0][1]}", hint=_refusal_hint(facts)))


def _auto(facts: MachineFacts, profiles: Mapping[str, Profile]) -> Choice:
    cpu = _newest_first([p for p in profiles.values() if p.is_cpu])
    if not facts.has_gpu:
        if facts.driver_status not in NO_DRIVER and facts.driver_status != "ok":
            raise ProvisionError(
                f"the NVIDIA driver is installed but not usable ({_driver_state(facts)})",
                hint="`provision verify` names the fix (after a driver upgrade: reboot); "
                     "or build a CPU-only environment with --profile cpu")
        if not cpu:
            raise ProvisionError("no NVIDIA GPU/driver detected and no CPU profile exists",
                                 hint="add a profile with `cuda: null`, or pass --profile NAME")
        why = ("no NVIDIA GPU/driver detected" if facts.driver_status in NO_DRIVER
               else f"NVIDIA driver {facts.driver_version or '?'} reports no GPU")
        return Choice(cpu[0], [why + " -> the CPU build of torch"])

    ranked = _newest_first([p for p in profiles.values() if not p.is_cpu])
    fit: list[Profile] = []
    problems_of: dict[str, list[str]] = {}
    for p in ranked:
        problems = profile_problems(p, facts)
        if problems:
            problems_of[p.name] = problems
        else:
            fit.append(p)
    if not fit:
        detail = "; ".join(f"{name}: {'; '.join(pr)}" for name, pr in problems_of.items())
        raise ProvisionError(f"no CUDA profile fits this machine ({facts.summary()}): {detail}",
                             hint=_refusal_hint(facts))

    chosen, preference = fit[0], ""
    if facts.toolkit is not None:
        same = [p for p in fit if _line(p.cuda) == _line(facts.toolkit)]
        same_major = [p for p in fit if p.cuda and p.cuda.major == facts.toolkit.major]
        if same:
            chosen = same[0]
            preference = f"matches the linked toolkit CUDA {facts.toolkit.short}"
        elif same_major:
            chosen = same_major[0]
            preference = f"closest to the linked toolkit CUDA {facts.toolkit.short}"
    rejected = []
    for p in ranked:
        if p is chosen:
            break
        if p.name in problems_of:
            rejected.append((p.name, "; ".join(problems_of[p.name])))
        else:
            rejected.append((p.name, f"fits, but {chosen.name} {preference} "
                                     f"(pass --cuda {p.cuda.short if p.cuda else '?'} to take it)"))
    reasons = _fit_reasons(chosen, facts)
    reasons.insert(0, preference if preference else
                   "newest profile the driver and every GPU support")
    return Choice(chosen, reasons, rejected)


def _fit_reasons(p: Profile, facts: MachineFacts) -> list[str]:
    reasons = []
    if facts.driver_version is not None and p.driver_min is not None:
        reasons.append(f"driver {facts.driver_version} >= {p.driver_min}")
    if p.cuda is not None and facts.driver_cuda is not None and (
            (p.cuda.major, p.cuda.minor) > (facts.driver_cuda.major, facts.driver_cuda.minor)):
        reasons.append(f"CUDA {p.cuda.short} on a CUDA {facts.driver_cuda.short} driver through "
                       f"minor version compatibility")
    ccs = sorted({g.sm for g in facts.gpus if g.cc is not None})
    if ccs:
        reasons.append(f"wheel supports {', '.join(ccs)}")
    unknown = [g.label() for g in facts.gpus if g.cc is None]
    if unknown:
        reasons.append(f"compute capability unknown for {', '.join(unknown)} (not checked)")
    return reasons


def _refusal_hint(facts: MachineFacts) -> str:
    if not facts.has_gpu and facts.driver_status != "ok":
        return "use --profile cpu (or --profile auto) on a machine without a usable NVIDIA GPU"
    return ("upgrade the NVIDIA driver, or pick a profile this machine supports: "
            "--profile auto chooses one; `provision profile list` shows them all")
