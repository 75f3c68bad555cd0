"""`provision up`: the walkthrough's stages in order, each recorded so a rerun resumes; orchestration only.

    types.py    options, the state the stages share, outcomes, the summary
    records.py  up.json: what each stage did, so a rerun resumes
    stages.py   the stages, each with status() and run()
    runner.py   Up: plan, run, summary
"""
from provisioner.up.records import STATE_FILE, Records, fingerprint, last_setup
from provisioner.up.runner import Up
from provisioner.up.stages import PIPELINE, Stage, env_prefix, is_local_model, toolkit_writable
from provisioner.up.types import (CONFIRM_DOWNLOAD_BYTES, NO_GPU, StageFailed, StageOutcome, UpOptions, UpResult,
                                  UpState, UpSummary)

__all__ = ["STATE_FILE", "Records", "fingerprint", "last_setup", "Up", "PIPELINE", "Stage", "env_prefix",
           "is_local_model", "toolkit_writable", "CONFIRM_DOWNLOAD_BYTES", "NO_GPU", "StageFailed",
           "StageOutcome", "UpOptions", "UpResult", "UpState", "UpSummary"]
