"""Facts: the one snapshot of a machine that every check judges.

`gather()` reads it live (NVML once, each toolkit's nvcc once, the link once, the env probe once or
from its cache, started first and run alongside the rest);
`provision explain` builds the same type from pasted text; a `provision report --json` carries it
(`to_dict`/`from_dict`), so a report made on one machine is judged on another by the same checks.
A field that is None was not observed (a paste shows no nvidia-smi, say): the checks that need it
are then left out, never guessed. `sources` says where each observed fact came from.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from provisioner.env.target import EnvTarget
from provisioner.errors import ProvisionError
from provisioner.system import gpu

if TYPE_CHECKING:
    from provisioner.cuda import CudaFacts
    from provisioner.env.choose import MachineFacts

#: The environment probe's answer (report, problem), as env.probe.run returns it, and what runs it.
Probed = tuple[Optional[dict[str, Any]], Optional[str]]
EnvProbe = Callable[[EnvTarget], Probed]
T = TypeVar("T")

#: Version of the `facts` document (in `provision report --json` and `provision explain --json`).
SCHEMA_VERSION = 1
NVML_TIMEOUT = 30


@dataclass(frozen=True)
class Facts:
    """Everything verify looks at. `origin` is "live", "report" or "paste"."""

    origin: str = "live"
    root: str = "/"                                   # the filesystem root the facts were read under
    info: gpu.DriverInfo | None = None                # NVML's driver and GPUs
    gpus_complete: bool = True                        # False: the GPU list was not seen (a partial paste)
    modules: frozenset[str] | None = None             # loaded kernel modules; None: unknown
    kernel_driver: str | None = None                  # version of the loaded nvidia kernel module
    pci_gpus: tuple[str, ...] | None = None           # NVIDIA display controllers on the PCI bus
    os_id: tuple[str, ...] = ()                       # ID and ID_LIKE from os-release
    cuda: CudaFacts | None = None                     # the link, the toolkits, PATH's nvcc
    toolkit_version: str | None = None                # an nvcc's CUDA release when no link is known (a paste)
    target: EnvTarget | None = None                   # the environment judged
    target_error: str | None = None                   # why there is none
    target_hint: str | None = None
    probe: Mapping[str, Any] | None = None            # the env probe's JSON (or what a paste shows of it)
    probe_error: str | None = None
    probe_cache: Mapping[str, Any] | None = None      # hit, probed_at, why it was probed again (env.probe_cache)
    record: Mapping[str, Any] | None = None           # the env's provision record (provision-env.json)
    built_envs: tuple[str, ...] | None = None         # complete envs provision built (asked only when needed)
    sources: Mapping[str, str] = field(default_factory=dict)   # fact -> where it came from
    timings: Mapping[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    @property
    def link(self) -> Any:
        """The /usr/local/cuda link state (cuda.LinkState) or None."""
        return self.cuda.link if self.cuda is not None else None

    @property
    def link_error(self) -> str | None:
        return self.cuda.link_error if self.cuda is not None else None

    @property
    def linked_toolkit(self) -> Any:
        link = self.link
        return link.toolkit if link is not None and link.state == "ok" else None

    def machine(self) -> MachineFacts:
        """The view the profile choice takes (driver, GPUs' compute capabilities, linked toolkit)."""
        from provisioner.env.choose import MachineFacts
        from provisioner.versions import CudaVersion

        tk = self.linked_toolkit
        version = tk.version if tk is not None else None
        if version is None and self.toolkit_version:
            try:
                version = CudaVersion.parse(self.toolkit_version)
            except ProvisionError:
                version = None
        return MachineFacts.from_probe(self.info or gpu.DriverInfo("no-library"), version)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        t = self.target
        driver = self.info.to_dict() if self.info is not None else None
        if driver is not None and self.info is not None:
            driver["seconds"] = self.info.seconds
        return {
            "version": SCHEMA_VERSION, "origin": self.origin, "root": self.root,
            "driver": driver,
            "gpus_complete": self.gpus_complete,
            "modules": sorted(self.modules) if self.modules is not None else None,
            "kernel_driver": self.kernel_driver,
            "pci_gpus": list(self.pci_gpus) if self.pci_gpus is not None else None,
            "os_id": list(self.os_id),
            "cuda": self.cuda.to_dict() if self.cuda is not None else None,
            "toolkit_version": self.toolkit_version,
            "target": ({"kind": t.kind, "prefix": str(t.prefix), "python": str(t.python)}
                       if t is not None else None),
            "target_error": self.target_error, "target_hint": self.target_hint,
            "probe": dict(self.probe) if self.probe is not None else None,
            "probe_error": self.probe_error,
            "probe_cache": dict(self.probe_cache) if self.probe_cache is not None else None,
            "record": dict(self.record) if self.record is not None else None,
            "built_envs": list(self.built_envs) if self.built_envs is not None else None,
            "sources": dict(self.sources),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, origin: str | None = None) -> Facts:
        """Read a `to_dict` document back; raises ValueError on one that is not a facts document."""
        from provisioner.cuda import CudaFacts

        if not isinstance(d, Mapping) or d.get("version") != SCHEMA_VERSION:
            raise ValueError(f"not a version-{SCHEMA_VERSION} facts document")
        driver = d.get("driver")
        t = d.get("target")
        cuda = d.get("cuda")
        info = None
        if isinstance(driver, Mapping):
            info = gpu.DriverInfo.from_dict(driver, seconds=driver.get("seconds"))
        return cls(
            origin=origin or str(d.get("origin") or "report"), root=str(d.get("root") or "/"),
            info=info, gpus_complete=bool(d.get("gpus_complete", True)),
            modules=frozenset(d["modules"]) if d.get("modules") is not None else None,
            kernel_driver=d.get("kernel_driver"),
            pci_gpus=tuple(d["pci_gpus"]) if d.get("pci_gpus") is not None else None,
            os_id=tuple(d.get("os_id") or ()),
            cuda=CudaFacts.from_dict(cuda) if isinstance(cuda, Mapping) else None,
            toolkit_version=d.get("toolkit_version"),
            target=(EnvTarget(str(t["kind"]), Path(t["prefix"]), Path(t["python"]))
                    if isinstance(t, Mapping) else None),
            target_error=d.get("target_error"), target_hint=d.get("target_hint"),
            probe=d.get("probe"), probe_error=d.get("probe_error"), record=d.get("record"),
            probe_cache=d.get("probe_cache") if isinstance(d.get("probe_cache"), Mapping) else None,
            built_envs=tuple(d["built_envs"]) if d.get("built_envs") is not None else None,
            sources=dict(d.get("sources") or {}),
            timings={str(k): float(v) for k, v in (d.get("timings") or {}).items()},
        )


# --------------------------------------------------------------------------- live

def os_ids(root: Path) -> tuple[str, ...]:
    """`ID` then the `ID_LIKE` words of the distribution under root (distro.os_ids)."""
    from provisioner.system import distro

    return distro.os_ids(root)


def gather_machine(*, root: Path, environ: Mapping[str, str]) -> Facts:
    """The machine without an environment: NVML once (its child runs while the toolkits are read),
    kernel modules, toolkits and the link (each nvcc once)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="provision-gather") as pool:
        return _machine(root, environ, pool.submit)


def _machine(root: Path, environ: Mapping[str, str],
             submit: Callable[[Callable[[], gpu.DriverInfo]], Future[gpu.DriverInfo]]) -> Facts:
    from provisioner import cuda

    timings: dict[str, float] = {}
    nvml = submit(lambda: _timed(timings, "nvml", lambda: gpu.probe(environ, timeout=NVML_TIMEOUT)))
    modules_file = root / "proc" / "modules"
    modules = frozenset(gpu.kernel_modules(root)) if modules_file.is_file() else None
    cuda_facts = _timed(timings, "toolkit", lambda: cuda.gather(root, environ))
    info = nvml.result()
    return Facts(origin="live", root=str(root), info=info, modules=modules,
                 kernel_driver=gpu.kernel_driver_version(root),
                 pci_gpus=tuple(gpu.nvidia_pci_devices(root)), os_id=os_ids(root), cuda=cuda_facts,
                 sources={"driver": "NVML", "cuda": "the filesystem and each toolkit's nvcc --version"},
                 timings=timings)


def _timed(timings: dict[str, float], name: str, fn: Callable[[], T]) -> T:
    t = time.monotonic()
    try:
        return fn()
    finally:
        timings[name] = time.monotonic() - t


def gather(*, root: Path, environ: Mapping[str, str], env_target: str | None, fresh: bool = False,
           env_probe: EnvProbe | None = None) -> Facts:
    """Read this machine once, the environment's probe alongside.

    The probe (its own Python importing torch: the long part) starts first, then NVML and the
    toolkits are read while it runs. A cached probe (env.probe_cache) stands in for it while its
    key holds; `fresh` ignores the cache. `env_probe` replaces the probe run (verify's smoke chat
    probes in its own process); its report is cached like any other.
    """
    from dataclasses import replace

    from provisioner.env import probe as envprobe
    from provisioner.env import probe_cache
    from provisioner.env import target as envtarget

    target: EnvTarget | None = None
    target_error = target_hint = None
    try:
        target = envtarget.resolve(env_target, environ)
    except ProvisionError as e:
        target_error, target_hint = e.message, e.hint
    run: EnvProbe = env_probe or (lambda t: envprobe.run(t, environ))
    timings: dict[str, float] = {}
    cached: probe_cache.Entry | None = None
    why: str | None = None
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="provision-gather") as pool:
        pending: Future[Probed] | None = None

        def start(t: EnvTarget) -> Future[Probed]:
            return pool.submit(_timed, timings, "env_probe", lambda: run(t))

        if target is not None:
            if fresh:
                why = "--fresh"
            elif env_probe is not None:
                why = "probed in the smoke chat's process"
            else:
                cached = probe_cache.load(target, environ)
                parts = probe_cache.changed(cached.env, probe_cache.env_part(target, environ)) if cached else []
                why = "nothing cached" if cached is None else (", ".join(parts) + " changed" if parts else None)
                cached = cached if not parts else None
            if cached is None:
                pending = start(target)       # first: the rest is read while it runs
        machine = _machine(root, environ, pool.submit)
        key = probe_cache.machine_part(machine.info, machine.link) if target is not None else {}
        if cached is not None and target is not None:
            parts = probe_cache.changed(cached.machine, key)
            if parts:
                why, cached = ", ".join(parts) + " changed", None
                pending = start(target)
        report: dict[str, Any] | None = None
        probe_error: str | None = None
        if pending is not None:
            report, probe_error = pending.result()
        elif cached is not None:
            report = dict(cached.probe)
    record: Mapping[str, Any] | None = None
    built: tuple[str, ...] | None = None
    cache_info: dict[str, Any] | None = None
    sources = dict(machine.sources, probe="the environment's own Python")
    if target is not None:
        if cached is not None:
            cache_info = {"hit": True, "probed_at": cached.probed_at, "file": str(cached.path)}
            sources["probe"] = f"the env-probe cache ({cached.path}), probed {cached.probed_at}"
        else:
            stored = (probe_cache.store(target, environ, key, report)
                      if report is not None and probe_error is None and probe_cache.cacheable(report) else None)
            cache_info = {"hit": False, "probed_at": stored.probed_at if stored else probe_cache.now(),
                          "reason": why, "stored": stored is not None}
        record = _read_record(target.prefix)
        if target.kind == "current" and report is not None and not (report.get("packages") or {}).get("torch"):
            built = _built_envs(environ)
    return replace(machine, target=target, target_error=target_error, target_hint=target_hint, probe=report,
                   probe_error=probe_error, probe_cache=cache_info, record=record, built_envs=built,
                   sources=sources, timings=dict(machine.timings, **timings))


def _read_record(prefix: Path) -> Mapping[str, Any] | None:
    from provisioner import env as envmod

    return envmod.read_record(prefix)


def _built_envs(environ: Mapping[str, str]) -> tuple[str, ...]:
    from provisioner import env as envmod

    return tuple(str(e.prefix) for e in envmod.list_envs(environ) if e.status == "complete")
