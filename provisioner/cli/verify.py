"""`provision verify` (alias `provision doctor`): checks as a table or one JSON document (Click layer only)."""
from __future__ import annotations

import contextlib
import sys

import click

from provisioner.cli import ui
from provisioner.cli.app import App, json_option, pass_app

QUANTS = ("nf4", "int8", "none")


@click.command("verify")
@click.option("--env", "env_target", metavar="NAME|PATH",
              help="Environment to check: a conda env name or a venv/conda prefix "
                   "(default: the activated one, else provision's own interpreter).")
@click.option("--profile", "profile_name", metavar="NAME",
              help="Profile whose version ranges the environment must meet "
                   "(default: the one matching its torch build).")
@click.option("--smoke-chat", is_flag=True, help="Also load a chat model in 4-bit and generate a reply.")
@click.option("--model", metavar="MODEL", help="Smoke-chat model: a hub id or a local folder.")
@click.option("--quant", type=click.Choice(QUANTS), default="nf4", show_default=True,
              help="Smoke-chat precision.")
@click.option("--prompt", metavar="TEXT", help="Smoke-chat prompt.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Smoke-chat reply length.")
@click.option("--trust-remote-code", is_flag=True,
              help="Let the smoke-chat model run code from its repository (off by default).")
@click.option("--fresh", is_flag=True, envvar="PROVISION_FRESH", show_envvar=True,
              help="Probe the environment again even when its cached facts still match.")
@json_option
@pass_app
def verify_cmd(app: App, env_target: str | None, profile_name: str | None, smoke_chat: bool,
               model: str | None, quant: str, prompt: str | None, max_new_tokens: int,
               trust_remote_code: bool, fresh: bool) -> None:
    """Check driver, GPUs, CUDA toolkit, the environment's torch wheel and bitsandbytes.

    Each problem comes with the command that fixes it. Exit 0 when no check failed, 1 otherwise.
    """
    from provisioner import report, verify

    smoke = (verify.SmokeRequest(model, quant, prompt, max_new_tokens, trust_remote_code,
                                 stream_to=None if app.json else sys.stderr) if smoke_chat else None)
    if smoke_chat and trust_remote_code:
        app.info("warning: --trust-remote-code runs Python code from the model's repository")
    # with --smoke-chat the env's process streams the reply to the terminal itself: no spinner over it
    with ui.spinner(app, "checking the driver, GPUs, toolkit and environment") if smoke is None \
            else contextlib.nullcontext():
        facts, chat = verify.gather_and_chat(root=app.root, environ=app.environ, env_target=env_target,
                                             fresh=fresh, smoke=smoke)
        checks = verify.evaluate(facts, root=app.root, environ=app.environ, profile_name=profile_name)
    if facts.probe_cache and facts.probe_cache.get("hit"):
        app.info(f"environment facts from the cache (probed {facts.probe_cache['probed_at']}); "
                 "--fresh probes again")
    if smoke_chat:
        checks += verify.smoke_checks(facts, checks, environ=app.environ, model=model, quant=quant,
                                      prompt=prompt, max_new_tokens=max_new_tokens,
                                      trust_remote_code=trust_remote_code,
                                      stream_to=None if app.json else sys.stderr, chat=chat)
    if app.json:
        app.emit_json(report.to_document(checks))
    else:
        ui.show(app, report.check_table(checks), "", report.summary(checks))
    code = report.exit_code(checks)
    if code:
        raise SystemExit(code)


doctor_cmd = click.Command(
    "doctor", callback=verify_cmd.callback, params=verify_cmd.params,
    help="Alias of `provision verify`: " + (verify_cmd.help or "").split("\n")[0],
    short_help="Alias of `provision verify`.",
)

COMMANDS: list[click.Command] = [verify_cmd, doctor_cmd]
