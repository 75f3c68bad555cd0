"""Facts: the one snapshot of a machine that every check judges.

`gather()` reads it live (NVML once, each toolkit's nvcc once, the link once, the env probe once);
`provision explain` builds the same type from pasted text; a `provision report --json` carries it
(`to_dict`/`from_dict`), so a report made on one machine is judged on another by the same checks.
A field that is None was not observed (a paste shows no nvidia-smi, say): the checks that need it
are then left out, never guessed. `sources` says where each observed fact came from.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.env.target import EnvTarget
from provisioner.errors import ProvisionError
from provisioner.system import gpu

if TYPE_CHECKING:
    from provisioner.cuda import CudaFacts
    from provisioner.env.choose import MachineFacts

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
    """The machine without an environment: NVML once, kernel modules, toolkits and the link (each nvcc once)."""
    from provisioner import cuda

    timings: dict[str, float] = {}
    t = time.monotonic()
    info = gpu.probe(environ, timeout=NVML_TIMEOUT)
    timings["nvml"] = time.monotonic() - t
    modules_file = root / "proc" / "modules"
    modules = frozenset(gpu.kernel_modules(root)) if modules_file.is_file() else None
    t = time.monotonic()
    cuda_facts = cuda.gather(root, environ)
    timings["toolkit"] = time.monotonic() - t
    return Facts(origin="live", root=str(root), info=info, modules=modules,
                 kernel_driver=gpu.kernel_driver_version(root),
                 pci_gpus=tuple(gpu.nvidia_pci_devices(root)), os_id=os_ids(root), cuda=cuda_facts,
                 sources={"driver": "NVML", "cuda": "the filesystem and each toolkit's nvcc --version"},
                 timings=timings)


def gather(*, root: Path, environ: Mapping[str, str], env_target: str | None) -> Facts:
    """Read this machine once: gather_machine(), then the environment's probe (its own Python, once)."""
    from dataclasses import replace

    from provisioner.env import probe as envprobe
    from provisioner.env import target as envtarget

    machine = gather_machine(root=root, environ=environ)
    target: EnvTarget | None = None
    target_error = target_hint = None
    report: dict[str, Any] | None = None
    probe_error: str | None = None
    record: Mapping[str, Any] | None = None
    built: tuple[str, ...] | None = None
    t = time.monotonic()
    try:
        target = envtarget.resolve(env_target, environ)
    except ProvisionError as e:
        target_error, target_hint = e.message, e.hint
    if target is not None:
        report, probe_error = envprobe.run(target, environ)
        record = _read_record(target.prefix)
        if target.kind == "current" and report is not None and not (report.get("packages") or {}).get("torch"):
            built = _built_envs(environ)
    timings = dict(machine.timings, env_probe=time.monotonic() - t)
    return replace(machine, target=target, target_error=target_error, target_hint=target_hint, probe=report,
                   probe_error=probe_error, record=record, built_envs=built,
                   sources=dict(machine.sources, probe="the environment's own Python"), timings=timings)


def _read_record(prefix: Path) -> Mapping[str, Any] | None:
    from provisioner import env as envmod

    return envmod.read_record(prefix)


def _built_envs(environ: Mapping[str, str]) -> tuple[str, ...]:
    from provisioner import env as envmod

    return tuple(str(e.prefix) for e in envmod.list_envs(environ) if e.status == "complete")
