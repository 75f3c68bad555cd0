"""`provision serve` command (Click layer only): the chat model behind an OpenAI-compatible HTTP API."""
from __future__ import annotations

import click

from provisioner.cli.app import App, json_option, pass_app
from provisioner.cli.chat import model_options, resolve, run_front_end

DEFAULT_PORT = 8000


@click.command("serve")
@model_options
@click.option("--host", metavar="ADDRESS", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback is reachable from the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on (0 takes any free one; the address is printed).")
@click.option("--api-key", metavar="KEY", envvar="PROVISION_API_KEY", show_envvar=True,
              help="Answer only requests that send `Authorization: Bearer KEY` (401 otherwise).")
@click.option("--max-new-tokens", type=click.IntRange(1, 1 << 20), default=512, show_default=True,
              help="Largest max_tokens a request may ask for (400 above), and the default.")
@click.option("--max-waiting", type=click.IntRange(0, 10_000), default=8, show_default=True,
              help="Requests that may wait behind the one being answered; more get 503 and Retry-After.")
@click.option("--context", type=click.IntRange(1, 1 << 24), default=None,
              help="Longest prompt plus reply in tokens (default: the model's max_position_embeddings).")
@click.option("--greedy", is_flag=True,
              help="Always greedy decoding (default: greedy for temperature 0, else temperature 0.6, "
                   "top_p 0.9).")
@click.option("--thinking", is_flag=True,
              help="Let chat templates that can think (Qwen3) think; a request may also send "
                   "chat_template_kwargs.")
@click.option("--trust-remote-code", is_flag=True,
              help="Run Python code shipped with the model (off unless given).")
@click.option("-y", "--yes", is_flag=True, help="Install the server packages (FastAPI, uvicorn) without asking.")
@click.option("--dry-run", is_flag=True, help="Print what would be installed and run; do nothing.")
@json_option
@pass_app
def serve(app: App, model: str | None, env: str | None, quant: str | None, host: str, port: int,
          api_key: str | None, max_new_tokens: int, max_waiting: int, context: int | None, greedy: bool,
          thinking: bool, trust_remote_code: bool, yes: bool, dry_run: bool) -> None:
    """Serve MODEL over HTTP as an OpenAI-compatible API (/v1/chat/completions).

    Loads MODEL as the smoke chat does (with no MODEL, --env or --quant: what the last `provision up`
    set up) and answers POST /v1/chat/completions (plain and "stream": true), GET /v1/models and
    GET /health on http://127.0.0.1:8000. One reply is generated at a time, in arrival order.
    """
    if api_key is not None and not api_key.strip():
        from provisioner.errors import UsageError

        raise UsageError("--api-key is empty", hint="pass a non-empty key, or leave --api-key out")
    target, model, quant = resolve(app, model, env, quant)
    options: dict[str, str | int | bool | None] = {
        "quant": quant, "host": host, "port": port, "max_new_tokens": max_new_tokens,
        "max_waiting": max_waiting, "context": context, "greedy": greedy, "thinking": thinking,
        "trust_remote_code": trust_remote_code}
    run_front_end(app, "serve", target, model, options, yes=yes, dry_run=dry_run,
                  api_key=api_key.strip() if api_key else None)


COMMANDS: list[click.Command] = [serve]
