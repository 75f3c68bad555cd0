"""What the stages of `up` take and hand on: options, the shared state, outcomes and the summary."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.errors import ProvisionError

if TYPE_CHECKING:
    from provisioner.env import EnvResult
    from provisioner.env.choose import MachineFacts
    from provisioner.facts import Facts
    from provisioner.model.choice import ModelChoice
    from provisioner.model.fit import FitReport
    from provisioner.profiles import Profile


#: Downloads above this many bytes are confirmed first (without --yes).
CONFIRM_DOWNLOAD_BYTES = 300 * 1024**2

NO_GPU = "none (CPU)"


@dataclass
class UpOptions:
    model: str | None = None           # None: the default for this machine (model/choice.py)
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
    bundle: Path | None = None         # a bundle folder (`up --bundle`): profile, env and model from it, offline


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
    model: ModelChoice | None = None

    @property
    def chat_command(self) -> str | None:
        return self.summary.chat_command

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.stages)

    def to_document(self) -> dict[str, Any]:
        return {"version": 1, "ok": self.ok, "did_work": self.did_work,
                "model": self.model.to_dict() if self.model is not None else None,
                "stages": [s.to_dict() for s in self.stages], "summary": self.summary.to_dict(),
                "chat_command": self.chat_command}


class StageFailed(ProvisionError):
    """A stage stopped `up`; earlier stages stay recorded, so a rerun resumes here."""


Say = Callable[[str], None]
Confirm = Callable[[str], bool]


@dataclass
class UpState:
    """What the stages hand each other, each field set by the stage named beside it."""

    facts: Facts | None = None                # diagnose (or the plan, first): the machine, read once
    choice: ModelChoice | None = None         # the plan (or fit, first): the model and why
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
