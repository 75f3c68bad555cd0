"""`provision chat` command (Click layer only): the smoke chat's loading path as an interactive chat."""
from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import click

from provisioner.cli.app import App, pass_app
from provisioner.errors import ProvisionError, UsageError
from provisioner.model import smoke

REPL_SCRIPT = smoke.SCRIPTS / "chat_repl.py"


def repl_command(python: Path, model: str, *, quant: str, max_new_tokens: int, system: str | None,
                 trust_remote_code: bool, greedy: bool, stats: bool) -> list[str]:
    return smoke.script_argv(python, REPL_SCRIPT, model, quant=quant, max_new_tokens=max_new_tokens,
                             system=system or None, trust_remote_code=trust_remote_code, greedy=greedy,
                             stats=stats)


def _exec(args: list[str], environ: Mapping[str, str]) -> None:
    # The chat takes over this process: the terminal, Ctrl-C and the exit status are the REPL's
    # own, with no provision process in between (proc.run would cut stdin off).
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(args[0], args, dict(environ))
    except OSError as e:
        raise ProvisionError(f"cannot start {args[0]}: {e.strerror}",
                             hint="recreate the environment: provision env create") from e


@click.command("chat")
@click.argument("model", required=False, default=None)
@click.option("--env", "env", metavar="NAME|PATH",
              help="Environment to run in: a conda env name or a venv/conda prefix "
                   "(default: the active one).")
@click.option("--quant", type=click.Choice(smoke.QUANTS), default=None,
              help="Weights precision: bitsandbytes 4-bit NF4, 8-bit, or none (float16 on a GPU); "
                   "default: what `provision up` chose, else nf4.")
@click.option("--max-new-tokens", type=click.IntRange(1, 1 << 20), default=512, show_default=True,
              help="Longest reply, in tokens.")
@click.option("--system", metavar="TEXT", help="System message that starts the conversation.")
@click.option("--trust-remote-code", is_flag=True,
              help="Run Python code shipped with the model (off unless given).")
@click.option("--greedy", is_flag=True,
              help="Greedy decoding (default: temperature 0.6, top_p 0.9 as the walkthrough).")
@click.option("--stats", is_flag=True, help="Print time to first token and tokens/s after each reply.")
@pass_app
def chat(app: App, model: str | None, env: str | None, quant: str | None, max_new_tokens: int,
         system: str | None,
         trust_remote_code: bool, greedy: bool, stats: bool) -> None:
    """Chat with MODEL (default: a current Qwen chat model) loaded as the smoke chat loads it.

    MODEL is a local folder or a hub id. /reset clears the history, /exit quits, Ctrl-C stops a reply.
    With stdin not a terminal, reads one prompt from it and prints the reply. With no MODEL, --env
    or --quant, the ones the last `provision up` set up are used.
    """
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
    target = envtarget.resolve(env, app.environ)
    args = repl_command(target.python, model, quant=quant, max_new_tokens=max_new_tokens,
                        system=system, trust_remote_code=trust_remote_code, greedy=greedy,
                        stats=stats)
    app.debug("+ " + shlex.join(args))
    _exec(args, app.environ)


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
