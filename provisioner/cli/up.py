"""`provision up` and `provision report` (Click layer only)."""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from provisioner.cli import ui
from provisioner.cli.app import App, json_option, pass_app
from provisioner.errors import ProvisionError, UsageError
from provisioner.units import gib

if TYPE_CHECKING:
    from rich.padding import Padding
    from rich.text import Text

    from provisioner.up import UpSummary

STATUS_WORDS = {"todo": "to do", "check": "check", "done": "done", "done?": "done?", "skipped": "skipped",
                "ran": "ran", "warn": "warn", "failed": "FAILED"}


@click.command("up")
@click.option("--model", default=None, envvar="PROVISION_MODEL", show_envvar=True,
              help="Local folder, hub id or built-in name (default: the largest current Qwen chat model "
                   "that fits the free GPU memory at 4k context; the smallest without a GPU).")
@click.option("--profile", default="auto", envvar="PROVISION_PROFILE", show_envvar=True,
              help="Profile name, or auto to choose from this machine.")
@click.option("--cuda", default=None, help="Pick the profile of this CUDA version (12.6, cu126).")
@click.option("--name", default=None, help="Environment name (a conda env name with conda).")
@click.option("--prefix", type=click.Path(path_type=Path), default=None, help="Environment prefix (a venv path).")
@click.option("--quant", type=click.Choice(["auto", "nf4", "int8", "none"]), default="auto", show_default=True)
@click.option("--context", type=click.IntRange(1, 1 << 24), default=None, help="Context tokens to plan for.")
@click.option("--backend", type=click.Choice(["auto", "conda", "mamba", "micromamba", "venv"]), default="auto",
              envvar="PROVISION_BACKEND", show_envvar=True)
@click.option("--python", "python_version", default=None, help="Python X.Y for the environment.")
@click.option("--torch", "torch_version", default=None, help="Override the profile's torch version.")
@click.option("--index-url", default=None, help="Where torch wheels come from (https).")
@click.option("--extra-index-url", default=None)
@click.option("--find-links", default=None, help="A local folder of wheels.")
@click.option("--allow-insecure-index", is_flag=True, help="Accept http:// index URLs.")
@click.option("--endpoint", default=None, help="Hub endpoint (a mirror URL); HF_ENDPOINT is honoured.")
@click.option("--mirror", default=None, help="A known hub mirror by name (e.g. hf-mirror).")
@click.option("--local-dir", type=click.Path(path_type=Path), default=None, help="Download the model here.")
@click.option("--gpu-memory", default=None,
              help="GiB the model may use (the default model is chosen for it), or auto (free memory from NVML).")
@click.option("--prompt", default=None, help="Smoke-test prompt.")
@click.option("--max-new-tokens", type=click.IntRange(1, 1 << 20), default=64, show_default=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask before large downloads or root changes.")
@click.option("--dry-run", is_flag=True, help="Show the plan (each stage's state) and stop.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="Offline: profile, wheels and model from a bundle (`bundle create`), verified first; "
                   "no index, the hub off.")
@json_option
@pass_app
def up_command(app: App, model: str | None, profile: str, cuda: str | None, name: str | None,
               prefix: Path | None, quant: str, context: int | None, backend: str, python_version: str | None,
               torch_version: str | None, index_url: str | None, extra_index_url: str | None,
               find_links: str | None, allow_insecure_index: bool, endpoint: str | None, mirror: str | None,
               local_dir: Path | None, gpu_memory: str | None, prompt: str | None, max_new_tokens: int,
               yes: bool, dry_run: bool, bundle: Path | None = None) -> None:
    """Run the whole walkthrough: diagnose, profile, toolkit, environment, fit, download, smoke chat.

    Each stage is recorded; a rerun after a failure or Ctrl-C resumes at the first stage not done,
    and a run on a finished machine only re-checks.
    """
    from rich.text import Text

    from provisioner import up

    if name and prefix:
        raise UsageError("--name and --prefix are exclusive", hint="give one of them")
    if endpoint and mirror:
        raise UsageError("--endpoint and --mirror are exclusive", hint="give one of them")
    environ: Mapping[str, str] = app.environ
    bundle_dir: Path | None = None
    if bundle is not None:           # verified before the plan; profile "auto" from here on
        from provisioner.cli.bundle import for_up

        environ, bundle_dir, model, profile = for_up(
            app, bundle, model, profile, cuda=cuda, python=python_version, torch=torch_version, index_url=index_url,
            extra_index_url=extra_index_url, find_links=find_links, endpoint=endpoint, mirror=mirror,
            local_dir=local_dir)
    _check_profile_name(profile, app.environ)
    _check_arguments(model, gpu_memory, app)
    opts = up.UpOptions(model=model, profile=profile, cuda=cuda, name=name, prefix=prefix, quant=quant,
                        context=context, backend=backend, python=python_version, torch=torch_version,
                        index_url=index_url, extra_index_url=extra_index_url, find_links=find_links,
                        allow_insecure_index=allow_insecure_index, endpoint=endpoint, mirror=mirror,
                        local_dir=local_dir, gpu_memory=gpu_memory, prompt=prompt,
                        max_new_tokens=max_new_tokens, yes=yes, bundle=bundle_dir)
    confirm = _confirmer(sys.stdin is not None and sys.stdin.isatty())
    runner = up.Up(opts, root=app.root, environ=environ, say=app.info, confirm=confirm,
                   transfer=lambda title: ui.transfer(app, title))
    plan = runner.plan()
    chosen = runner.choose_model()
    for line in chosen.describe():
        app.info(line)
    ui.show(app, "Plan:", _indented([[Text(STATUS_WORDS.get(r.status, r.status), justify="right"), r.name, r.message]
                                     for r in plan]), err=True)
    if dry_run:
        if app.json:
            app.emit_json({"version": 1, "dry_run": True, "model": chosen.to_dict(),
                           "plan": [r.to_dict() for r in plan]})
        return
    try:
        result = runner.run()
    except ProvisionError as e:
        if app.json:
            # Still one document on stdout: the stages so far, the failed one last.
            app.emit_json({"version": 1, "ok": False, "did_work": runner.did_work, "model": chosen.to_dict(),
                           "stages": [s.to_dict() for s in runner.outcomes], "summary": None,
                           "chat_command": None, "error": {"message": e.message, "hint": e.hint}})
        raise
    if app.json:
        app.emit_json(result.to_document())
        return
    s = result.summary
    if not result.did_work:
        app.echo("Nothing to do: every stage was already done (re-checked).")
    rows = [("GPU", s.gpu), ("driver", f"{s.driver or 'none'}" + (f" (CUDA {s.driver_cuda})" if s.driver_cuda else "")),
            ("toolkit", s.toolkit), ("profile", s.profile), ("environment", s.environment),
            ("model", s.model), ("precision", f"{s.precision} (context {s.context})"),
            ("peak memory", _peak_text(s)),
            ("first token", f"{s.time_to_first_token_s:.2f} s" if s.time_to_first_token_s is not None else "?"),
            ("speed", f"{s.tokens_per_s:.1f} tokens/s" if s.tokens_per_s is not None else "?"),
            ("reply", repr(s.reply))]
    ui.show(app, "Summary:", _indented([[key, str(value)] for key, value in rows]))
    if result.chat_command:
        app.echo(f"\nStart chatting:\n  {result.chat_command}")


def _indented(rows: Sequence[Sequence[str | Text]]) -> Padding:
    """Aligned columns without headers, two spaces in."""
    from provisioner.report import rich_table

    return ui.indented(rich_table(rows))


def _check_profile_name(profile: str, environ: Mapping[str, str]) -> None:
    """Fail before the plan (and in --dry-run too): the profile stage would refuse it anyway."""
    if profile in ("", "auto"):
        return
    import difflib

    from provisioner import profiles

    known = profiles.load_all(environ)
    if profile in profiles.invalid_user_profiles(environ):
        profiles.get(profile, environ)      # raises with the file's problems
    if profile not in known:
        close = difflib.get_close_matches(profile, list(known), n=1, cutoff=0.5)
        raise UsageError(f"no profile named '{profile}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                         hint=f"known profiles: {', '.join(known)}; or use --profile auto")


def _check_arguments(model: str | None, gpu_memory: str | None, app: App) -> None:
    """What `up` would only find wrong stages later (after building an environment): refused now."""
    from provisioner.model import fit

    if gpu_memory not in (None, "auto"):
        fit.gpu_memory(gpu_memory, environ=app.environ)          # raises the usage error; no NVML for a number
    if model is not None and model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
        raise UsageError(f"model folder {model} does not exist",
                         hint="pass an existing folder holding config.json, a hub id or a built-in name")


def _confirmer(interactive: bool) -> Callable[[str], bool]:
    def confirm(question: str) -> bool:
        if not interactive:
            raise ProvisionError(f"{question} (needs confirmation, and stdin is not a terminal)",
                                 hint="re-run with --yes")
        return click.confirm(question, default=False, err=True)

    return confirm


def _peak_text(s: UpSummary) -> str:
    measured, estimated = s.measured_peak_bytes, s.estimated_peak_bytes
    if s.on_cpu:
        # On the CPU the measurement is the process's peak RSS (Python and torch included), and the
        # estimate is for a GPU (CUDA context included): show both, but do not pretend they compare.
        return f"{gib(measured)} peak RSS (runtime included); GPU estimate {gib(estimated)}"
    return f"{gib(measured)} measured, {gib(estimated)} estimated"


@click.command("report")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the report here (default: stdout).")
@click.option("--env", "env_target", default=None, help="Environment to report on (conda name or prefix).")
@click.option("--profile", "profile_name", default=None, help="Profile to check the environment against.")
@json_option
@pass_app
def report_command(app: App, output: Path | None, env_target: str | None, profile_name: str | None) -> None:
    """Write one Markdown (or --json) file for a bug report; secrets are redacted."""
    import json

    from provisioner import bugreport

    doc = bugreport.collect(root=app.root, environ=app.environ, env_target=env_target,
                            profile_name=profile_name)
    text = json.dumps(doc, indent=2, default=str) if app.json else bugreport.to_markdown(doc)
    if output is None:
        click.echo(text)
        return
    try:
        output.write_text(text + "\n")
    except OSError as e:
        raise ProvisionError(f"cannot write the report to {output}: {e.strerror}",
                             hint="pass --output a file in an existing, writable directory "
                                  "(or leave it out to print the report)") from None
    app.info(f"wrote {output} ({len(text)} characters); secrets redacted. Attach it to your issue.")


COMMANDS: list[click.Command] = [up_command, report_command]
