"""A chat page in the browser (Gradio), run by the target environment's python (`provision chat --web`).

    python web_chat.py MODEL [--quant nf4|int8|none] [--dtype ...] [--host 127.0.0.1] [--port 7860]
        [--max-new-tokens N] [--system TEXT] [--greedy] [--thinking] [--trust-remote-code]

Replies stream in as they are generated; the conversation is kept for the next turn; Stop ends the reply
being generated and keeps what was said; Clear history starts over. The page shows the model, its
precision, the device and the last reply's tokens/s. Loading is the smoke chat's (_loader) and generation
_engine's (one reply at a time, the StoppingCriteria flag for Stop). Never shared through Gradio's
tunnel: the page is served from this machine only, on --host.
"""
# No `from __future__ import annotations`: Gradio reads the handlers' annotations (`request: gr.Request`)
# at runtime, and gradio is imported inside build() so that this file loads where Gradio is missing.
import argparse
import os
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _engine  # noqa: E402 - our siblings, found through the line above
import _loader  # noqa: E402

#: Seconds between two updates of the page while a reply streams (each update re-sends the chat).
REFRESH_S = 0.05
#: What the system fonts are; the page must not fetch fonts (or anything) from another host.
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO = ["ui-monospace", "monospace"]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="web_chat.py", description=__doc__.splitlines()[0])
    _loader.add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860, help="0: any free port (the one taken is printed)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--system", default=None)
    p.add_argument("--greedy", action="store_true",
                   help="greedy decoding (default: the walkthrough's temperature 0.6, top_p 0.9)")
    p.add_argument("--thinking", action="store_true", help="let templates that can think (Qwen3) think")
    return p.parse_args(argv)


@dataclass
class Session:
    """One browser tab: its running job (for Stop) and an epoch that Clear history advances, so a reply
    still streaming into the old conversation stops drawing."""

    job: _engine.Job | None = None
    epoch: int = 0


@dataclass
class WebChat:
    engine: _engine.Engine
    args: argparse.Namespace
    name: str
    sessions: dict[str, Session] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def session(self, key: str | None) -> Session:
        with self.lock:
            return self.sessions.setdefault(key or "", Session())

    def messages(self, history: list[dict[str, Any]]) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.args.system}] if self.args.system else []
        return system + [{"role": str(m["role"]), "content": content_text(m.get("content"))}
                         for m in history if m.get("role") in ("user", "assistant")]

    def facts(self, last: dict[str, Any] | None = None, state: str = "") -> str:
        info = self.engine.loaded.info
        line = (f"**Model** `{self.name}` · **Precision** {_loader.precision(info)} · "
                f"**Device** {_loader.device(info)}")
        if last is not None:
            rate = last.get("tokens_per_s") or 0.0
            line += (f" · **Last reply** {last['n_new_tokens']} tokens, "
                     f"<span id='tokens-per-s'>{rate:.1f}</span> tokens/s")
        if state:
            line += f" · {state}"
        return line

    def respond(self, history: list[dict[str, Any]], key: str | None) -> Any:
        """Generator for Gradio: the chat with the reply growing, and the facts line."""
        session = self.session(key)
        epoch = session.epoch
        if not history or history[-1].get("role") != "user":
            yield history, self.facts(self.engine.last or None)
            return
        pieces: queue.Queue[tuple[str, Any]] = queue.Queue()
        job = _engine.Job(messages=self.messages(history), max_new_tokens=self.args.max_new_tokens,
                          sample=not self.args.greedy,
                          on_text=lambda text: pieces.put(("text", text)),
                          on_done=lambda result, error: pieces.put(("done", (result, error))),
                          template={"enable_thinking": True} if self.args.thinking else None)
        session.job = job
        try:
            self.engine.submit(job)
        except _engine.Busy as e:
            session.job = None
            raise _gradio().Error(str(e)) from None
        reply = ""
        shown = history + [{"role": "assistant", "content": ""}]
        last_draw = 0.0
        try:
            while True:
                kind, value = pieces.get()
                if session.epoch != epoch:   # Clear history was pressed: this conversation is gone
                    job.stop.set()
                    if kind == "done":
                        return
                    continue
                if kind == "text":
                    reply += value
                    now = time.monotonic()
                    if now - last_draw >= REFRESH_S:
                        last_draw = now
                        shown[-1] = {"role": "assistant", "content": reply}
                        yield shown, self.facts(self.engine.last or None, "generating ...")
                    continue
                result, error = value
                if error is not None:
                    raise _gradio().Error(f"generating the reply failed: {type(error).__name__}: {error}")
                # What was shown is what the model said, even when stopped: keep it for the next turn.
                shown[-1] = {"role": "assistant", "content": result["reply"]}
                state = {"interrupted": "stopped", "max_new_tokens": "cut at --max-new-tokens"}.get(
                    result["stop_reason"], "")
                yield shown, self.facts(result, state)
                return
        finally:
            job.stop.set()   # the page went away mid-reply (Gradio closed this generator): stop it too
            if session.job is job:
                session.job = None

    def stop(self, key: str | None) -> None:
        job = self.session(key).job
        if job is not None:
            job.stop.set()

    def clear(self, key: str | None) -> tuple[list[Any], str]:
        session = self.session(key)
        with self.lock:
            session.epoch += 1
        self.stop(key)
        return [], self.facts(self.engine.last or None, "history cleared")


def content_text(content: Any) -> str:
    """Gradio hands message content back as a list of parts ({"type": "text", "text": ...}); we send str."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(content_text(part) for part in content)
    return "" if content is None else str(content)


def _gradio() -> Any:
    import gradio

    return gradio


def build(chat: WebChat) -> Any:
    import gradio as gr

    def take(text: str, history: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
        text = (text or "").strip()
        if not text:
            return "", history
        return "", list(history or []) + [{"role": "user", "content": text}]

    def respond(history: list[dict[str, Any]], request: gr.Request) -> Any:
        yield from chat.respond(list(history or []), request.session_hash)

    def stop(request: gr.Request) -> None:
        chat.stop(request.session_hash)

    def clear(request: gr.Request) -> tuple[list[Any], str]:
        return chat.clear(request.session_hash)

    with gr.Blocks(title=f"{chat.name} · provision chat", analytics_enabled=False) as page:
        gr.Markdown(f"## {chat.name}")
        facts = gr.Markdown(chat.facts(), elem_id="facts")
        # No "share" button: that posts the conversation to Hugging Face.
        chatbot = gr.Chatbot(elem_id="chatbot", height=420, show_label=False, feedback_options=None,
                             buttons=["copy", "copy_all"])
        with gr.Row():
            box = gr.Textbox(placeholder="Message (Enter sends)", show_label=False, elem_id="prompt",
                             scale=1, autofocus=True)
            send = gr.Button("Send", variant="primary", elem_id="send", scale=0, min_width=90)
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop", scale=0, min_width=90)
            clear_button = gr.Button("Clear history", elem_id="clear", scale=0, min_width=160)
        for trigger in (box.submit, send.click):
            trigger(take, [box, chatbot], [box, chatbot], queue=False).then(
                respond, [chatbot], [chatbot, facts])
        stop_button.click(stop, None, None, queue=False)
        clear_button.click(clear, None, [chatbot, facts], queue=False)
        chatbot.clear(clear, None, [chatbot, facts], queue=False)   # the chat's own trash icon
    return page


def free_port(host: str) -> int:
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as s:
        s.bind(address)
        return int(s.getsockname()[1])


def main(argv: list[str]) -> int:
    return int(_loader.exit_on_ctrl_c(run, parse(argv)))


def run(args: argparse.Namespace) -> int:
    # Gradio would report usage to its makers and check for a newer version over the network.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        gr = _gradio()
    except ModuleNotFoundError as e:
        _loader.explain_missing(e, "`provision chat --web` installs Gradio into it")
        return 1
    loaded = _loader.load_or_explain(args.model, quant=args.quant, dtype=args.dtype,
                                     trust_remote_code=args.trust_remote_code, what="`provision chat --web`")
    if loaded is None:
        return 1
    chat = WebChat(_engine.Engine(loaded, max_waiting=4), args, _engine.display_name(args.model))
    page = build(chat)
    port = args.port or free_port(args.host)
    theme = gr.themes.Default(font=FONTS, font_mono=MONO)
    try:
        page.queue(default_concurrency_limit=1).launch(
            server_name=args.host, server_port=port, share=False, inbrowser=False, quiet=True,
            prevent_thread_lock=True, show_error=True, ssr_mode=False, theme=theme)
    except OSError as e:
        _loader.eprint(f"error: cannot serve on {args.host}:{port}: {e}")
        _loader.eprint("hint: pass another --port (0 takes any free one)")
        return 1
    shown = f"[{args.host}]" if ":" in args.host else args.host
    _loader.eprint(f"web chat with {chat.name} at http://{shown}:{port}/ (Ctrl-C stops it)")
    page.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
