"""Interactive chat, run by the target environment's python with the terminal attached (`provision chat`).

    python chat_repl.py MODEL [--quant nf4|int8|none] [--dtype ...] [--max-new-tokens N]
        [--system TEXT] [--trust-remote-code] [--greedy] [--stats]

A terminal on stdin: a multi-turn chat. The history is kept; `/reset` clears it, `/exit` (or Ctrl-D)
leaves, Ctrl-C stops the reply being generated and returns to the prompt. Anything else on stdin
(a pipe, a file): it is read whole as one prompt and the reply is printed. Loading is the smoke chat's
(`_loader`), so what `provision verify --smoke-chat` checked is what you talk to.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _loader  # noqa: E402 - our sibling, found through the line above

PROMPT = ">>> "
HELP = "/reset clears the history, /exit quits, Ctrl-C stops a reply"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chat_repl.py", description=__doc__.splitlines()[0])
    _loader.add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--system", default=None)
    p.add_argument("--greedy", action="store_true",
                   help="greedy decoding (default: the walkthrough's temperature 0.6, top_p 0.9)")
    p.add_argument("--stats", action="store_true", help="print tokens/s after each reply")
    return p.parse_args(argv)


class Chat:
    """The conversation: system message, history, and one streamed reply at a time."""

    def __init__(self, loaded: _loader.Loaded, args: argparse.Namespace,
                 worker: _loader.Worker) -> None:
        self.loaded = loaded
        self.worker = worker
        self.args = args
        self.history: list[dict[str, str]] = []
        self.stop = threading.Event()
        self.notes = _loader.Notes()

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.args.system}] if self.args.system else []
        return system + self.history

    def reset(self) -> None:
        self.history.clear()

    def reply(self, prompt: str, out: Any) -> dict[str, Any]:
        """Stream the reply to `prompt` into `out`; Ctrl-C (SIGINT) ends it early, not the chat."""
        self.history.append({"role": "user", "content": prompt})
        self.stop.clear()
        previous = signal.signal(signal.SIGINT, lambda _sig, _frame: self.stop.set())
        try:
            gen: dict[str, Any] = self.worker.call(_loader.generate, self.loaded, self.messages(),
                                   max_new_tokens=self.args.max_new_tokens,
                                   sample=not self.args.greedy, on_text=_loader.write_text(out),
                                   stop=self.stop, notes=self.notes)
        except BaseException:
            self.history.pop()
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
        # What was shown is what the model said, even when cut short: keep it for the next turn.
        self.history.append({"role": "assistant", "content": gen["reply"]})
        return gen


def stats_line(gen: dict[str, Any]) -> str:
    rate = gen.get("tokens_per_s") or 0.0
    ttft = gen.get("ttft_s") or 0.0
    return f"[{gen['n_new_tokens']} tokens, first after {ttft:.2f} s, {rate:.1f} tokens/s]"


def interactive(chat: Chat) -> int:
    try:
        import readline  # noqa: F401 - line editing and history for input(), where available
    except ImportError:
        pass
    _loader.eprint(HELP)
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            # As in Python's own REPL: Ctrl-C at the prompt drops the line, it does not quit.
            print()
            _loader.eprint("(/exit or Ctrl-D quits)")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return 0
        if text == "/reset":
            chat.reset()
            _loader.eprint("(history cleared)")
            continue
        if text in ("/help", "/?"):
            _loader.eprint(HELP)
            continue
        if text.startswith("/"):
            _loader.eprint(f"unknown command {text.split()[0]}; {HELP}")
            continue
        gen = chat.reply(text, sys.stdout)
        print(flush=True)
        if gen["stop_reason"] == "interrupted":
            _loader.eprint("[stopped]")
        elif gen["stop_reason"] == "max_new_tokens":
            _loader.eprint(f"[cut at --max-new-tokens {chat.args.max_new_tokens}]")
        if chat.args.stats:
            _loader.eprint(stats_line(gen))


def one_shot(chat: Chat, prompt: str) -> int:
    gen = chat.reply(prompt, sys.stdout)
    print(flush=True)
    if chat.args.stats:
        _loader.eprint(stats_line(gen))
    return 0


def main(argv: list[str]) -> int:
    return int(_loader.exit_on_ctrl_c(run, parse(argv)))


def run(args: argparse.Namespace) -> int:
    tty = sys.stdin.isatty()
    prompt = ""
    if not tty:
        # Read the whole prompt before the slow load, so an empty pipe fails at once.
        prompt = sys.stdin.read().strip()
        if not prompt:
            _loader.eprint("error: no prompt on stdin (pipe one in, or run in a terminal to chat)")
            return 2
    # Loaded on the worker, so that torch's threads start with SIGINT blocked (see _loader.Worker).
    worker = _loader.Worker()
    loaded = _loader.load_or_explain(args.model, quant=args.quant, dtype=args.dtype,
                                     trust_remote_code=args.trust_remote_code, worker=worker, verbose=tty)
    if loaded is None:
        return 1
    chat = Chat(loaded, args, worker)
    try:
        return interactive(chat) if tty else one_shot(chat, prompt)
    except _loader.NoChatTemplate as e:
        _loader.eprint(f"error: {e}")
        _loader.eprint("hint: use the chat variant of the model (...-Instruct, ...-Chat)")
        return 1
    except Exception as e:  # noqa: BLE001 - one line for the user, as for a failed load
        _loader.eprint(f"error: generating a reply failed: {type(e).__name__}: {_loader.first_line(e)}")
        if _loader.is_oom(e):
            _loader.eprint(f"hint: out of memory: see what fits with `provision model fit {args.model}`, "
                           f"or pass a smaller --max-new-tokens or --quant nf4")
        else:
            _loader.eprint(f"hint: `provision verify --smoke-chat --model {args.model} --env {sys.prefix}` "
                           f"says why")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
