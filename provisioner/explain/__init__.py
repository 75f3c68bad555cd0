"""`provision explain`: the facts in a paste, the verify checks they allow, and the recognised errors.

Inputs are read into `Facts` (the same snapshot `verify` gathers live), so the checks that run are
verify's own; a `provision report` file carries its facts whole. Nothing is guessed: a value the
paste does not show stays unknown, and its checks are left out.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import ProvisionError
from provisioner.explain import causes as causes_mod
from provisioner.explain import nvcc as nvcc_mod
from provisioner.explain import pyenv as pyenv_mod
from provisioner.explain import smi as smi_mod
from provisioner.explain import text
from provisioner.explain.reading import Reading
from provisioner.facts import Facts
from provisioner.report import Check, Status
from provisioner.system import gpu, gpuarch
from provisioner.versions import CudaVersion, DriverVersion

JSON_VERSION = 1
MIB = 1024 * 1024
_REPORT_JSON = re.compile(r"```json\s*\n(\{\s*\"version\": 1,\s*\"origin\".*?\n\})\s*\n```", re.DOTALL)


@dataclass
class Explanation:
    facts: Facts
    readings: list[Reading]
    checks: list[Check]
    causes: list[causes_mod.Cause]
    unread: list[str]
    next_steps: list[str] = field(default_factory=list)
    read_anything: bool = True

    @property
    def exit_code(self) -> int:
        """0: nothing wrong found; 1: problems diagnosed; 2: nothing readable."""
        if not self.read_anything:
            return 2
        if self.causes or any(c.status is Status.FAIL for c in self.checks):
            return 1
        return 0

    def facts_summary(self) -> dict[str, Any]:
        """The facts section of --json: the documented keys first, then the whole snapshot."""
        info = self.facts.info
        tk = self.facts.linked_toolkit
        torch = (self.facts.probe or {}).get("torch") or {}
        toolkit_full = None
        if tk is not None and tk.version is not None:
            toolkit_full = str(tk.version)
        else:
            toolkit_full = next((r.value for r in self.readings if r.fact == "toolkit.full"), None)
        toolkit_version = (tk.version.short if tk is not None and tk.version is not None
                           else self.facts.toolkit_version)
        return {
            "driver": {"version": str(info.driver_version) if info and info.driver_version else None,
                       "cuda": info.cuda.short if info and info.cuda else None,
                       "status": info.status if info else None},
            "gpus": [{"index": g.index, "name": g.name,
                      "memory_total_mib": g.memory_total // MIB if g.memory_total is not None else None,
                      "memory_used_mib": g.memory_used // MIB if g.memory_used is not None else None,
                      "cc": f"{g.cc[0]}.{g.cc[1]}" if g.cc else None}
                     for g in (info.gpus if info else ())],
            "toolkit": {"version": toolkit_version, "full": toolkit_full},
            "torch": {"version": torch.get("version"), "cuda": torch.get("cuda"),
                      "build": torch.get("build")},
            "packages": dict((self.facts.probe or {}).get("packages") or {}),
            "read": [r.to_dict() for r in self.readings],
            "snapshot": self.facts.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"version": JSON_VERSION, "ok": self.exit_code == 0, "exit_code": self.exit_code,
                "facts": self.facts_summary(), "checks": [c.to_dict() for c in self.checks],
                "causes": [c.to_dict() for c in self.causes], "unread": list(self.unread),
                "next_steps": list(self.next_steps)}


# --------------------------------------------------------------------------- reports

def report_facts(doc: text.Doc) -> Facts | None:
    """The facts a `provision report` carries (its JSON, or the JSON block of its Markdown)."""
    raw = "\n".join(doc.lines).strip()
    data: Any = None
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
    elif "# provision report" in raw:
        m = _REPORT_JSON.search(raw)
        if m:
            try:
                data = {"facts": json.loads(m[1])}
            except ValueError:
                data = None
    if not isinstance(data, Mapping) or not isinstance(data.get("facts"), Mapping):
        return None
    try:
        return Facts.from_dict(data["facts"], origin="report")
    except (ValueError, KeyError, TypeError, ProvisionError):
        return None


# --------------------------------------------------------------------------- pastes

def _smi_gpus(smi: smi_mod.Smi) -> list[gpu.GpuInfo]:
    """The GPUs of nvidia-smi's rows (or `-L` list), with the memory the table shows."""
    gpus = []
    for g in smi.gpus or ():
        total = g["memory_total_mib"] * MIB if g["memory_total_mib"] is not None else None
        used = g["memory_used_mib"] * MIB if g["memory_used_mib"] is not None else None
        gpus.append(gpu.GpuInfo(
            index=g["index"], name=g["name"], cc=gpuarch.compute_capability(g["name"]),
            memory_total=total, memory_used=used,
            memory_free=total - used if total is not None and used is not None else None,
            processes=None,
            errors={"processes.compute": "not in the paste", "bus_width_bits": "not in the paste"}))
    return gpus


def _env_gpus(envs: Sequence[pyenv_mod.PyEnv]) -> list[gpu.GpuInfo]:
    """The GPUs of the first collect_env that names any: names only."""
    names = next((e.gpus for e in envs if e.gpus), [])
    return [gpu.GpuInfo(index=i, name=n, cc=gpuarch.compute_capability(n), processes=None,
                        errors={"memory": "not in the paste", "processes.compute": "not in the paste"})
            for i, n in enumerate(names)]


def _driver_cuda(smi: smi_mod.Smi | None, cuda_text: str | None) -> tuple[CudaVersion | None, dict[str, str]]:
    """The driver's CUDA version, or why it is unknown (as DriverInfo.errors)."""
    errors: dict[str, str] = {}
    cuda = None
    if cuda_text:
        try:
            cuda = CudaVersion.parse(cuda_text)
        except ProvisionError:
            cuda = None
    elif smi is not None and smi.cuda_cell:
        errors["cuda"] = f"nvidia-smi shows CUDA Version: {smi.cuda_cell}"
    else:
        errors["cuda"] = "not in the paste"
    return cuda, errors


def _driver_info(smis: Sequence[smi_mod.Smi], envs: Sequence[pyenv_mod.PyEnv],
                 found: Sequence[causes_mod.Cause]) -> tuple[gpu.DriverInfo | None, bool]:
    """(DriverInfo, whether the GPU list is complete) from what the pastes show."""
    smi = next((s for s in smis if s.status is not None), None)
    driver_version = (smi.driver_version if smi else None) or next(
        (e.driver_version for e in envs if e.driver_version), None)
    cuda_text = smi.cuda if smi else None
    too_old = next((c for c in found if c.id == "driver-too-old" and c.values.get("driver_cuda")), None)
    if cuda_text is None and too_old is not None:
        cuda_text = too_old.values["driver_cuda"]
    if smi is not None and smi.gpus is not None:
        gpus, complete = _smi_gpus(smi), True
    else:
        gpus = _env_gpus(envs)
        complete = bool(gpus)
    status = smi.status if smi else None
    if status is None and (driver_version or gpus or cuda_text):
        status = "ok"
    if status is None:
        return None, False
    cuda, errors = _driver_cuda(smi, cuda_text)
    try:
        version = DriverVersion.parse(driver_version) if driver_version else None
    except ProvisionError:
        version = None
    library = f"libnvidia-ml.so.{smi.library_version}" if smi and smi.library_version else None
    info = gpu.DriverInfo(status=status, error=smi.error if smi else None, driver_version=version,
                          cuda=cuda, nvml_version=smi.nvml_version if smi else None,
                          gpus=tuple(gpus) if status == "ok" else (), library=library, errors=errors)
    return info, complete


def _probe(envs: Sequence[pyenv_mod.PyEnv]) -> dict[str, Any] | None:
    seen = [e for e in envs if e.seen]
    if not seen:
        return None
    packages: dict[str, str] = {}
    for e in seen:
        for k, v in e.packages.items():
            packages.setdefault(k, v)
    torch_version = next((e.torch_version for e in seen if e.torch_version), None)
    torch_cuda = next((e.torch_cuda for e in seen if e.torch_cuda), None)
    torch_cpu = any(e.torch_cpu for e in seen) and torch_cuda is None
    available = next((e.cuda_available for e in seen if e.cuda_available is not None), None)
    python = next((e.python for e in seen if e.python), None)
    if torch_version:
        packages.setdefault("torch", torch_version)
    build = "cuda" if torch_cuda else ("cpu" if torch_cpu else None)
    torch: dict[str, Any] = {"pasted": True, "version": torch_version, "cuda": torch_cuda, "build": build,
                             "imported": True if build else None}
    if available is not None:
        torch["cuda_available"] = available
    return {"partial": True, "python": {"version": python} if python else {}, "packages": packages,
            "torch": torch}


def paste_facts(docs: Sequence[text.Doc]) -> tuple[Facts, list[Reading], list[str], list[causes_mod.Cause]]:
    """Facts, the readings behind them, what could not be read, and the recognised causes."""
    smis = [smi_mod.parse(d) for d in docs]
    nvccs = [nvcc_mod.parse(d) for d in docs]
    envs = [pyenv_mod.parse(d) for d in docs]
    found = causes_mod.find(docs)
    readings: list[Reading] = []
    unread: list[str] = []
    for s in smis:
        readings += s.readings
        unread += s.unread
    for n in nvccs:
        readings += n.readings
    for e in envs:
        readings += e.readings
    for c in found:
        if c.id == "driver-too-old" and c.values.get("driver_cuda"):
            readings.append(Reading("driver.cuda", c.values["driver_cuda"], c.source, c.line, c.text))
    info, complete = _driver_info(smis, envs, found)
    toolkit = next((n.version for n in nvccs if n.version), None) or next(
        (e.toolkit for e in envs if e.toolkit), None)
    sources: dict[str, str] = {}
    for r in readings:
        sources.setdefault(r.fact, f"{r.where()}: {r.text}")
    facts = Facts(origin="paste", info=info, gpus_complete=complete, toolkit_version=toolkit,
                  probe=_probe(envs), sources=sources)
    return facts, readings, unread, found


# --------------------------------------------------------------------------- putting it together

def _gib(text_value: str | None) -> float | None:
    m = re.match(r"(\d+(?:\.\d+)?)\s*([KMGT])i?B", text_value or "")
    if not m:
        return None
    scale = {"K": 1 / 1024 / 1024, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[m[2]]
    return round(float(m[1]) * scale)


def _choice(facts: Facts, environ: Mapping[str, str], *, sm: str | None = None) -> str | None:
    """The newest bundled profile these facts allow (a GPU named only by an sm_XX counts too)."""
    from dataclasses import replace as dc_replace

    from provisioner import profiles
    from provisioner.env import choose

    machine = facts.machine()
    if sm is not None:
        m = re.fullmatch(r"sm_(\d+)(\d)", sm)
        if m:
            cc = (int(m[1]), int(m[2]))
            gpus = tuple(dc_replace(g, cc=cc) for g in machine.gpus) or (choose.GpuFact(0, "GPU", cc),)
            machine = dc_replace(machine, gpus=gpus, driver_status="ok")
    if not machine.gpus and machine.driver_cuda is not None:
        machine = dc_replace(machine, gpus=(choose.GpuFact(0, "GPU", None),), driver_status="ok")
    if not machine.gpus:
        return None
    try:
        return choose.choose_profile(machine, profiles.load_all(environ)).profile.name
    except ProvisionError:
        return None


#: A failed verify check that is itself a diagnosis: (check id, words in its message) -> cause id,
#: and the fact whose pasted line it rests on.
_CHECK_CAUSES = (
    ("env.torch_cuda", "CPU-only build", "torch-cpu-build", "torch.cuda"),
    ("env.torch_cuda", "supports only up to", "driver-too-old", "driver.cuda"),
    ("env.torch_arch", "has no kernels", "gpu-arch-unsupported", "gpu.0"),
    ("cuda.driver", "", "driver-too-old", "toolkit.version"),
    ("driver", "mismatch", "driver-mismatch", "driver.status"),
    ("driver", "lists no GPU", "no-gpu-visible", "gpus"),
)


def _check_causes(checks: Sequence[Check], readings: Sequence[Reading], known: set[str]) -> list[causes_mod.Cause]:
    """Causes that the checks on the pasted facts establish (a CPU torch beside a GPU, say)."""
    out = []
    for check in checks:
        if check.status is not Status.FAIL:
            continue
        for cid, words, cause_id, fact in _CHECK_CAUSES:
            if check.id == cid and words in check.message and cause_id not in known:
                known.add(cause_id)
                where = next((r for r in readings if r.fact == fact), None) or next(
                    (r for r in readings), None)
                out.append(causes_mod.Cause(
                    cause_id, f"check:{check.id}", check.message, check.fix, {},
                    where.source if where else "", where.line if where else 0, where.text if where else ""))
    return out


def _driver_fix(facts: Facts, environ: Mapping[str, str]) -> str:
    """Upgrade the driver to at least what the walkthrough's profile (cu126) needs."""
    from provisioner import profiles

    try:
        floor = profiles.get("cu126", environ).driver_min
    except ProvisionError:
        floor = None
    from provisioner.system.checks import driver_install_fix

    return driver_install_fix(facts.os_id, at_least=str(floor) if floor else None)


def _fits(facts: Facts, environ: Mapping[str, str]) -> list[str]:
    """Which current Qwen chat models fit each pasted GPU, at which precision (model fit's arithmetic)."""
    from provisioner.model import choice, fit
    from provisioner.model import info as modelinfo

    info = facts.info
    if info is None or info.status != "ok":
        return []
    lines = []
    for g in info.gpus:
        if not g.memory_total:
            continue
        best: dict[str, str] = {}
        for entry in modelinfo.table():
            if not choice.is_current_chat(entry.name):     # `up`'s candidates: Qwen2.5 Instruct, Qwen3
                continue
            report = fit.fit(entry.spec, gpu_free_bytes=g.memory_total, context=choice.MIN_CONTEXT)
            if report.recommended is not None:
                family = entry.name.split("-", 1)[0]       # "Qwen/Qwen2.5", "Qwen/Qwen3"
                best[family] = f"{entry.name} in {report.recommended.quant}"   # the table runs small to large
        if best:
            lines.append(f"GPU {g.index} {g.name} ({g.memory_total // MIB} MiB), the whole card at 4k "
                         f"context: largest that fits: " + "; ".join(best.values())
                         + f" (provision model fit MODEL --gpu-memory {g.memory_total / 2**30:.0f})")
    return lines


def explain(inputs: Sequence[tuple[str, str | bytes]], *, environ: Mapping[str, str],
            root: Path = Path("/")) -> Explanation:
    """Read every input, judge the facts with verify's checks, name each recognised error's cause."""
    from provisioner import verify

    docs = [text.read(name, data) for name, data in inputs]
    # each input read once as a report; the first report's facts win, the other inputs are pastes
    reports = [(d, report_facts(d)) for d in docs]
    first = next(((d, f) for d, f in reports if f is not None), None)
    pasted = [d for d, f in reports if f is None]
    facts, readings, unread, found = paste_facts(pasted)
    report = first[1] if first is not None else None
    if first is not None and report is not None:
        facts = report
        readings.append(Reading("report", "provision report facts", first[0].name, 1, "provision report"))
    has_facts = (facts.info is not None or facts.cuda is not None or facts.toolkit_version is not None
                 or facts.probe is not None or report is not None)
    for d in pasted:
        if not any(r.source == d.name for r in readings) and not any(c.source == d.name for c in found):
            unread.append(f"{d.name}: nothing recognisable (not nvidia-smi, nvcc --version, a package "
                          "list, a known error or a provision report)")
    checks = verify.evaluate(facts, environ=environ, profile_name=None) if has_facts else []
    if report is None:
        # A paste allows only the checks its facts feed: a skipped check is one it does not allow.
        checks = [c for c in checks if c.id != "profile" and c.status is not Status.SKIP]
    found += _check_causes(checks, readings, {c.id for c in found})
    profile = _choice(facts, environ)
    torch_cuda = ((facts.probe or {}).get("torch") or {}).get("cuda")
    for c in found:
        sm = c.values.get("sm") if c.id == "gpu-arch-unsupported" else None
        total = _gib(c.values.get("total"))
        if total is None and facts.info is not None and facts.info.gpus and facts.info.gpus[0].memory_total:
            total = round(facts.info.gpus[0].memory_total / 2**30)
        need = _choice(facts, environ, sm=sm) if sm else profile
        c.fix = causes_mod.fix_for(c, profile=need, driver_fix=_driver_fix(facts, environ),
                                   torch_cuda=torch_cuda, gpu_total_gib=total)
    steps = []
    if facts.info is not None and facts.info.status == "ok" and profile:
        what = "this driver and GPU run" if facts.info.gpus else "this driver runs"
        steps.append(f"newest bundled profile {what}: {profile} (provision env create --profile {profile})")
    steps += _fits(facts, environ)
    return Explanation(facts=facts, readings=readings, checks=checks, causes=found, unread=unread,
                       next_steps=steps, read_anything=has_facts or bool(found))
