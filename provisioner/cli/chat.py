"""`provision chat` command (Click layer only): the smoke chat's loading path as an interactive chat."""
from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import click

from provisioner.cli.app import F, App, pass_app
from provisioner.env.target import EnvTarget
from provisioner.errors import ProvisionError, UsageError
from provisioner.model import smoke

REPL_SCRIPT = smoke.SCRIPTS / "chat_repl.py"
#: Gradio's own default port.
WEB_PORT = 7860


def model_options(f: F) -> F:
    """MODEL, --env and --quant of `chat` and `serve`: what resolve() turns into what to load, and where."""
    for option in reversed((
            click.argument("model", required=False, default=None),
            click.option("--env", "env", metavar="NAME|PATH",
                         help="Environment to run in: a conda env name or a venv/conda prefix "
                              "(default: the active one, else the one `provision up` built)."),
            click.option("--quant", type=click.Choice(smoke.QUANTS), default=None,
                         help="Weights precision: bitsandbytes 4-bit NF4, 8-bit, or none (float16 on a GPU); "
                              "default: what `provision up` chose, else nf4."))):
        f = option(f)
    return f


def repl_command(python: Path, model: str, *, quant: str, max_new_tokens: int, system: str | None,
                 trust_remote_code: bool, greedy: bool, stats: bool) -> list[str]:
    return smoke.script_argv(python, REPL_SCRIPT, model, quant=quant, max_new_tokens=max_new_tokens,
                             system=system or None, trust_remote_code=trust_remote_code, greedy=greedy,
                             stats=stats)


def exec_script(args: list[str] | tuple[str, ...], environ: Mapping[str, str]) -> None:
    # The chat takes over this process: the terminal, Ctrl-C and the exit status are the REPL's
    # own, with no provision process in between (proc.run would cut stdin off).
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(args[0], list(args), dict(environ))
    except OSError as e:
        raise ProvisionError(f"cannot start {args[0]}: {e.strerror}",
                             hint="recreate the environment: provision env create") from e


@click.command("chat")
@model_options
@click.option("--max-new-tokens", type=click.IntRange(1, 1 << 20), default=512, show_default=True,
              help="Longest reply, in tokens.")
@click.option("--system", metavar="TEXT", help="System message that starts the conversation.")
@click.option("--trust-remote-code", is_flag=True,
              help="Run Python code shipped with the model (off unless given).")
@click.option("--greedy", is_flag=True,
              help="Greedy decoding (default: temperature 0.6, top_p 0.9 as the walkthrough).")
@click.option("--stats", is_flag=True, help="Print time to first token and tokens/s after each reply.")
@click.option("--web", is_flag=True,
              help="Chat in the browser instead (Gradio, installed into the environment on first use).")
@click.option("--host", metavar="ADDRESS", default=None,
              help="With --web: the address to listen on (default 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help=f"With --web: the port (default {WEB_PORT}; 0 takes any free one).")
@click.option("--thinking", is_flag=True,
              help="With --web: let chat templates that can think (Qwen3) think before replying.")
@click.option("-y", "--yes", is_flag=True, help="With --web: install Gradio without asking.")
@click.option("--dry-run", is_flag=True, help="With --web: print what would be installed and run; do nothing.")
@pass_app
def chat(app: App, model: str | None, env: str | None, quant: str | None, max_new_tokens: int,
         system: str | None, trust_remote_code: bool, greedy: bool, stats: bool, web: bool,
         host: str | None, port: int | None, thinking: bool, yes: bool, dry_run: bool) -> None:
    """Chat with MODEL (default: a current Qwen chat model) loaded as the smoke chat loads it.

    MODEL is a local folder or a hub id. /reset clears the history, /exit quits, Ctrl-C stops a reply.
    With stdin not a terminal, reads one prompt from it and prints the reply. With no MODEL, --env
    or --quant, the ones the last `provision up` set up are used. --web serves the chat as a page on
    http://127.0.0.1:7860 (streaming, Stop, Clear history, the model's precision and speed shown).
    """
    if not web:
        given = [name for name, value in (("--host", host), ("--port", port), ("--thinking", thinking or None),
                                          ("--yes", yes or None), ("--dry-run", dry_run or None))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for the web chat only",
                             hint="add --web")
    target, model, quant = resolve(app, model, env, quant)
    if web:
        if stats:
            raise UsageError("--stats is for the terminal chat; the web page always shows tokens/s",
                             hint="leave out --stats")
        host = host or "127.0.0.1"
        options: dict[str, str | int | bool | None] = {
            "quant": quant, "host": host, "port": WEB_PORT if port is None else port,
            "max_new_tokens": max_new_tokens, "system": system or None, "greedy": greedy,
            "thinking": thinking, "trust_remote_code": trust_remote_code}
        run_front_end(app, "web", target, model, options, yes=yes, dry_run=dry_run)
        return
    args = repl_command(target.python, model, quant=quant, max_new_tokens=max_new_tokens,
                        system=system, trust_remote_code=trust_remote_code, greedy=greedy,
                        stats=stats)
    app.debug("+ " + shlex.join(args))
    exec_script(args, app.environ)


def resolve(app: App, model: str | None, env: str | None, quant: str | None) -> tuple[EnvTarget, str, str]:
    """(environment, model, quant) to chat or serve with: what is given, else what the last `provision up`
    set up, else the defaults; a local model folder is checked here so that a bad path fails at once."""
    from provisioner import up
    from provisioner.env import target as envtarget

    last = up.last_setup(app.environ)
    model = model or last.get("model") or smoke.DEFAULT_MODEL
    quant = quant or last.get("quant") or "nf4"
    if env is None:
        env = _default_env(app, last)
    problem = smoke.local_model_problem(model)
    if problem is not None:
        raise UsageError(problem, hint="pass a folder holding config.json and the weights, or a hub "
                                       "id (provision model download ID --local-dir DIR)")
    return envtarget.resolve(env, app.environ), model, quant


def run_front_end(app: App, which: str, target: EnvTarget, model: str,
                  options: Mapping[str, str | int | bool | None], *, yes: bool, dry_run: bool,
                  api_key: str | None = None) -> None:
    """`chat --web` and `serve`: install the profile's extra where missing (after asking), then become
    the script's process. `options` are the script's, its --host among them."""
    from provisioner.model import serve

    front = serve.WEB if which == "web" else serve.SERVE
    what = "the chat" if which == "web" else "the model (the API)"
    warning = serve.exposure_note(str(options["host"]), what, api_key=None if which == "web" else api_key is not None)
    plan = serve.plan_front_end(front, target, model, options, environ=app.environ, api_key=api_key,
                                notes=[warning] if warning else [])
    if dry_run:
        app.show_plan(plan)
        return
    if warning:
        app.info(warning)
    if plan.install is not None:
        question = (f"{front.title} needs {', '.join(plan.missing)} in {target.prefix}; "
                    f"install {' '.join(plan.requirements)} there?")
        if not yes:
            if not sys.stdin.isatty():
                raise ProvisionError(f"{question} (needs confirmation, and stdin is not a terminal)",
                                     hint="re-run with --yes, or see the command with --dry-run")
            if not click.confirm(question, default=True, err=True):
                raise ProvisionError("nothing installed; nothing started",
                                     hint=f"install it yourself: {plan.install.shown()}")
        from provisioner.cli import ui

        with ui.spinner(app, f"installing {' '.join(plan.requirements)} into {target.prefix}"):
            serve.apply_install(plan, app.environ)
        app.info(f"installed {' '.join(plan.requirements)} into {target.prefix}")
    app.debug("+ " + shlex.join(plan.argv))
    exec_script(plan.argv, {**app.environ, **plan.environ})


def _default_env(app: App, last: dict[str, str]) -> str | None:
    """No --env: the active environment when it has torch; provision's own torch-less interpreter
    is never the one meant, so then the environment `up` built, or an error saying how to get one."""
    import importlib.metadata

    from provisioner.env import target as envtarget

    target = envtarget.resolve(None, app.environ)
    if target.kind != "current":
        return None
    try:
        importlib.metadata.version("torch")
        return None
    except importlib.metadata.PackageNotFoundError:
        pass
    if last.get("env") and Path(last["env"]).is_dir():
        app.info(f"using the environment `provision up` built: {last['env']}")
        return last["env"]
    raise UsageError("no environment to chat in: provision's own interpreter holds no torch by design",
                     hint="pass --env NAME|PATH, or build one: provision up (or provision env create)")


COMMANDS: list[click.Command] = [chat]
