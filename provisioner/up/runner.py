"""Runs the stages in order, records each, and assembles the summary."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.errors import ProvisionError
from provisioner.up import choose
from provisioner.up.records import Records
from provisioner.up.stages import PIPELINE, no_transfer
from provisioner.up.types import NO_GPU, Confirm, Say, StageFailed, StageOutcome, UpOptions, UpResult, UpState, UpSummary

if TYPE_CHECKING:
    from provisioner.facts import Facts
    from provisioner.model.choice import ModelChoice
    from provisioner.up.stages import Transfer


class Up:
    """Runs the stages in order; every stage calls the same code its own command uses."""

    def __init__(self, opts: UpOptions, *, root: Path, environ: Mapping[str, str],
                 say: Say, confirm: Confirm, transfer: Transfer = no_transfer) -> None:
        self.o = opts
        self.root = root
        self.environ = environ
        self.say = say
        self.confirm = confirm
        self.transfer = transfer
        self.records = Records(environ)
        self.outcomes: list[StageOutcome] = []
        self.state = UpState()
        self.did_work = False

    def machine(self) -> Facts:
        """The machine's facts (Facts), read once: by the plan, or by the diagnose stage."""
        if self.state.facts is None:
            from provisioner import facts as facts_mod

            self.state.facts = facts_mod.gather_machine(root=self.root, environ=self.environ)
        return self.state.facts

    def choose_model(self) -> ModelChoice:
        """The model this run sets up, and why (--model, or the default for this machine)."""
        if self.state.choice is None:
            self.state.choice = choose.choose(self.o, self.machine(), self.records, self.environ)
        return self.state.choice

    def plan(self) -> list[StageOutcome]:
        """Each stage's state before anything runs: done / to do / skipped, with why."""
        self.choose_model()
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
        return UpResult(self.outcomes, self.summary(), self.did_work, self.state.choice)

    def fail(self, name: str, inputs: str, message: str, hint: str | None) -> StageFailed:
        self.records.failed(name, inputs, message)
        return StageFailed(message, hint=hint)

    def confirm_torch(self, plan: Any) -> bool:
        what = " ".join(plan.torch_requirements)
        size = "a CPU build, about 200 MB" if plan.profile.is_cpu else "a CUDA build, several GB with its libraries"
        return self.confirm(f"Install {what} from {plan.torch_index_url} ({size}) into {plan.prefix}?")

    def _model_name(self) -> str:
        if self.state.choice is not None:
            return self.state.choice.model
        return self.o.model or "(not chosen yet)"

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
            model=str(st.model_path) if st.model_path is not None else self._model_name(),
            precision=st.quant, context=st.context, estimated_peak_bytes=st.estimate,
            measured_peak_bytes=smoke_data.get("peak_bytes"), time_to_first_token_s=smoke_data.get("ttft_s"),
            tokens_per_s=smoke_data.get("tokens_per_s"), reply=smoke_data.get("reply"), chat_command=chat)
