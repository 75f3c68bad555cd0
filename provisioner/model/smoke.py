"""The smoke-test chat: load a model in the environment's own python and generate one reply.

The verdicts on what it measured are in provisioner.model.smoke_result.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from provisioner import proc, state
from provisioner.env.probe import PROBE_TIMEOUT
from provisioner.errors import CommandError, ProvisionError

# `X as X`: callers and the tests use them as smoke.X
from provisioner.model.smoke_result import SmokeResult as SmokeResult
from provisioner.model.smoke_result import check_smoke as check_smoke
from provisioner.units import human_bytes

SCRIPTS = Path(__file__).parent.parent / "scripts"
SMOKE_SCRIPT = SCRIPTS / "smoke_chat.py"
#: A current Qwen chat model small enough for any GPU with 4 GB (about 1.2 GiB in nf4).
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
DEFAULT_PROMPT = "Hello! How are you?"
QUANTS = ("nf4", "int8", "none")
LAST_RESULT = "last-smoke.json"
#: `model fit` names for our --quant values ("none" loads in float16 on a GPU, as the walkthrough).
FIT_QUANT = {"nf4": "nf4", "int8": "int8", "none": "fp16"}
#: Context the estimate is asked for: the smoke prompt with its chat template, plus the reply.
PROMPT_ALLOWANCE = 128


def last_result_path(environ: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/provision/last-smoke.json: every smoke result lands here (`provision report` reads it)."""
    return state.path(environ, LAST_RESULT)


def load_last(environ: Mapping[str, str]) -> SmokeResult | None:
    data = state.read(environ, LAST_RESULT)
    if not isinstance(data, dict):
        return None
    try:
        return SmokeResult.from_dict(data)
    except TypeError:
        return None


def local_model_problem(model: str) -> str | None:
    """Why `model`, when it names a local folder, cannot be loaded; None for a hub id or a good folder.

    The same rules as the scripts' `_loader.check_local`, checked here so a bad path fails at once.
    """
    path = Path(os.path.expanduser(model))
    local = (model.startswith(("/", "./", "../", "~")) or model in (".", "..")
             or model.count("/") > 1 or path.is_dir())
    if not local:
        return None
    if not path.exists():
        return f"model folder {model} does not exist"
    if not path.is_dir():
        return f"{model} is a file, not a model folder"
    if not (path / "config.json").is_file():
        return f"{model} has no config.json: not a transformers model folder"
    return None


def script_argv(python: Path, script: Path, model: str, **options: str | int | bool | None) -> list[str]:
    """argv for one of the model scripts, run by the environment's python: options in the order
    given, `--name value`; True is a bare flag; None and False are left out."""
    args = [str(python), str(script), model]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    return args


def smoke_command(python: Path, model: str, *, quant: str = "nf4", prompt: str = DEFAULT_PROMPT,
                  max_new_tokens: int = 64, trust_remote_code: bool = False, sample: bool = False,
                  system: str | None = None, dtype: str = "auto", probe_out: Path | None = None) -> list[str]:
    """The argv that runs the smoke script in the environment `python` belongs to (with `probe_out`,
    the script first runs the env probe in its own process and writes the report there)."""
    if quant not in QUANTS:
        raise ProvisionError(f"unknown quantization '{quant}'", hint=f"use one of {', '.join(QUANTS)}")
    return script_argv(python, SMOKE_SCRIPT, model, quant=quant, prompt=prompt,
                       max_new_tokens=max_new_tokens, dtype=dtype, system=system or None, sample=sample,
                       trust_remote_code=trust_remote_code, probe_out=str(probe_out) if probe_out else None)


def run_with_probe(python: Path, model: str = DEFAULT_MODEL, *, environ: Mapping[str, str],
                   timeout: float = 900 + PROBE_TIMEOUT,      # the chat's, plus the probe's own
                   **options: Any) -> tuple[SmokeResult, dict[str, Any] | None, str | None]:
    """The env probe, then the smoke chat, in ONE process of the environment (one torch import):
    (the chat's result, the probe's report, why there is no report).

    The report is None when the process ended before the probe finished; the caller then probes on
    its own (env.probe.run also salvages the package versions of a torch that crashes on import).
    Options as run_smoke; raises ProvisionError as it does.
    """
    with tempfile.TemporaryDirectory(prefix="provision-probe-") as tmp:
        out = Path(tmp) / "probe.json"
        result = run_smoke(python, model, environ=environ, timeout=timeout, probe_out=out, **options)
        try:
            report = json.loads(out.read_text())
        except (OSError, ValueError):
            report = None
    if not isinstance(report, dict):
        why = result.error or "no result"
        return result, None, f"the environment probe did not finish in the smoke chat's process: {why}"
    return result, report, None


def run_smoke(python: Path, model: str = DEFAULT_MODEL, *, quant: str = "nf4",
              prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 64,
              trust_remote_code: bool = False, sample: bool = False,
              environ: Mapping[str, str], timeout: float = 900,
              stream_to: IO[str] | None = None, system: str | None = None,
              dtype: str = "auto", probe_out: Path | None = None) -> SmokeResult:
    """Run the smoke chat with `python` (the target environment's) and return what it measured.

    A failing load or generation is a SmokeResult with `error` set, not an exception; only a missing
    or unrunnable interpreter raises ProvisionError. With `stream_to` the reply is shown as it is
    generated when `stream_to` is this process's stderr (the script inherits it), otherwise it is
    written there once the script ends. The result is also saved to `last_result_path(environ)`.
    """
    args = smoke_command(python, model, quant=quant, prompt=prompt, max_new_tokens=max_new_tokens,
                         trust_remote_code=trust_remote_code, sample=sample, system=system,
                         dtype=dtype, probe_out=probe_out)
    live = stream_to is not None and _is_fd(stream_to, 2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="provision-smoke-") as tmp:
        out_file = Path(tmp) / "result.json"
        try:
            if live:
                # The script writes its JSON to a file so that its stdout and stderr (the streamed
                # reply) can be this terminal's.
                done = proc.run([*args, "--json-out", str(out_file)], timeout=timeout,
                                env=environ, check=False, capture=False)
                text = out_file.read_text() if out_file.exists() else ""
            else:
                done = proc.run(args, timeout=timeout, env=environ, check=False)
                text = done.stdout
        except CommandError as e:
            if not os.path.exists(python):
                raise ProvisionError(f"the environment's python {python} does not exist",
                                     hint="create the environment: provision env create") from e
            if "timed out" not in e.message:
                raise ProvisionError(f"cannot run {python}: {e.message}",
                                     hint="recreate the environment: provision env create") from e
            result = SmokeResult(model=model, quant=quant, ok=False, stage="timeout",
                                 error=f"the smoke chat did not finish within {timeout:g} s",
                                 error_type="Timeout", wall_s=time.perf_counter() - started,
                                 command=tuple(args))
            _save(result, environ)
            return result
    wall = time.perf_counter() - started
    doc = _last_json_object(text)
    if doc is None:
        result = _crashed(model, quant, done.returncode, done.stderr, args, wall)
    else:
        result = SmokeResult.from_script(doc, wall_s=wall, returncode=done.returncode,
                                         command=tuple(args))
    if stream_to is not None and not live and result.reply:
        stream_to.write(result.reply + "\n")
    _save(result, environ)
    return result


def _is_fd(stream: IO[str], fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


def _last_json_object(text: str) -> dict[str, Any] | None:
    # The script prints one line; anything a sitecustomize printed before it is skipped.
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    return None


def _crashed(model: str, quant: str, returncode: int, stderr: str, args: list[str],
             wall: float) -> SmokeResult:
    """The script died without writing its result: a signal, a native crash, or a broken python."""
    if returncode == -9:
        error = ("the smoke chat was killed (SIGKILL), most likely by the kernel's out-of-memory "
                 "killer: system RAM ran out")
        return SmokeResult(model=model, quant=quant, ok=False, stage="killed", error=error,
                           error_type="Killed", oom=True, returncode=returncode,
                           traceback=proc.tail(stderr), wall_s=wall, command=tuple(args))
    how = f"died of signal {-returncode}" if returncode < 0 else f"exited {returncode}"
    return SmokeResult(model=model, quant=quant, ok=False, stage="crashed",
                       error=f"the smoke chat {how} without a result", error_type="Crashed",
                       returncode=returncode, traceback=proc.tail(stderr), wall_s=wall,
                       command=tuple(args))


def _save(result: SmokeResult, environ: Mapping[str, str]) -> None:
    data = result.to_dict()
    data["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        state.write(environ, LAST_RESULT, data)
    except OSError:
        pass  # a read-only state dir must not turn a finished smoke test into a failure


# ------------------------------------------------------------------------------------------
# estimates (from model fit, when its modules are there)


def estimate_for(model: str, quant: str, environ: Mapping[str, str], *,
                 max_new_tokens: int = 64) -> int | None:
    """`model fit`'s total bytes for `model` at `quant` and the smoke chat's context; None if unknown."""
    try:
        from provisioner.model import fit
        from provisioner.model import info as modelinfo

        spec = modelinfo.resolve(model, environ=environ)
        option = fit.estimate(spec, FIT_QUANT.get(quant, quant),
                              context=PROMPT_ALLOWANCE + max_new_tokens, batch=1)
        return int(option.total_bytes)
    except (ImportError, AttributeError, TypeError, ValueError, OSError, ProvisionError):
        return None


def fit_hint_for(model: str, quant: str, environ: Mapping[str, str], *, free_bytes: int | None,
                 max_new_tokens: int = 64) -> str | None:
    """Which `--quant` would fit in `free_bytes`, from the fit estimates; None when nothing is known."""
    if not free_bytes:
        return None
    # Only smaller precisions than the one that did not fit, largest first (best quality).
    order = ("none", "int8", "nf4")
    smaller = order[order.index(quant) + 1:] if quant in order else order
    known = False
    for candidate in smaller:
        need = estimate_for(model, candidate, environ, max_new_tokens=max_new_tokens)
        known = known or need is not None
        if need is not None and need <= free_bytes:
            return (f"--quant {candidate} needs about {human_bytes(need)} and fits in the "
                    f"{human_bytes(free_bytes)} free; see `provision model fit {model}`")
    if not known and smaller:
        return None
    return (f"no smaller precision of {model} fits in {human_bytes(free_bytes)} free: free GPU "
            f"memory or choose a smaller model (`provision model fit {model}`)")
