"""An OpenAI-compatible HTTP server for one chat model, run by the target environment's python (`provision serve`).

    python serve.py MODEL [--quant nf4|int8|none] [--dtype ...] [--host 127.0.0.1] [--port 8000]
        [--max-new-tokens 512] [--max-waiting 8] [--context N] [--greedy] [--thinking]
        [--trust-remote-code]

The API key, when one is required, comes in $PROVISION_SERVE_API_KEY (an argument would show in `ps`).

    POST /v1/chat/completions   OpenAI chat completions: JSON, or server-sent events with "stream": true
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok", "generations": {active, waiting, completed, stopped, ...}}

FastAPI on uvicorn (what Gradio brings too). Generation is _engine's: one at a time in arrival order, a
bounded wait queue (503 with Retry-After beyond it), and a client that disconnects stops its reply.
Loading is the smoke chat's (_loader), so what `provision verify --smoke-chat` checked is what is served.
"""
# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (`request: Request`)
# at runtime, and Request is imported inside app() so that this file loads where FastAPI is missing.
import argparse
import asyncio
import hmac
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _engine  # noqa: E402 - our siblings, found through the line above
import _loader  # noqa: E402

API_KEY_VAR = "PROVISION_SERVE_API_KEY"
ROLES = ("system", "user", "assistant")
#: How often a waiting or streaming request checks that its client is still connected.
DISCONNECT_POLL_S = 0.25


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="serve.py", description=__doc__.splitlines()[0])
    _loader.add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (the one taken is printed)")
    p.add_argument("--max-new-tokens", type=int, default=512,
                   help="the largest max_tokens a request may ask for, and the default")
    p.add_argument("--max-waiting", type=int, default=8,
                   help="requests that may wait behind the running one; more get 503")
    p.add_argument("--context", type=int, default=None,
                   help="longest prompt + reply in tokens (default: the model's max_position_embeddings; "
                        "more only for a model whose rope scaling allows it)")
    p.add_argument("--greedy", action="store_true",
                   help="always greedy (default: greedy when a request says temperature 0, else the "
                        "walkthrough's temperature 0.6, top_p 0.9)")
    p.add_argument("--thinking", action="store_true",
                   help="let templates that can think (Qwen3) think; a request may say so itself "
                        "with chat_template_kwargs")
    return p.parse_args(argv)


class RequestError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        self.headers = headers or {}


def text_of(content: Any, index: int) -> str:
    """A message's text: a string, or the OpenAI list of parts of which only text parts are taken."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(400, f"messages[{index}].content: only text parts are supported",
                                   param=f"messages[{index}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(400, f"messages[{index}].content must be a string or a list of text parts",
                       param=f"messages[{index}].content")


def read_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages must be a non-empty list of {role, content}", param="messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RequestError(400, f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role == "developer":   # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise RequestError(400, f"messages[{i}].role {role!r} is not supported (use one of "
                                    f"{', '.join(ROLES)})", param=f"messages[{i}].role")
        messages.append({"role": str(role), "content": text_of(m.get("content"), i)})
    return messages


def positive_int(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(400, f"{name} must be a positive integer", param=name)
        return value
    return None


class Server:
    """The request handling, apart from the HTTP wiring in app()."""

    def __init__(self, engine: _engine.Engine, args: argparse.Namespace, model_id: str) -> None:
        self.engine = engine
        self.args = args
        self.model_id = model_id
        self.created = int(time.time())
        self.context = args.context or engine.context
        self.api_key = os.environ.get(API_KEY_VAR) or None

    def authorize(self, authorization: str | None) -> None:
        if self.api_key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise RequestError(401, "a valid API key is required (Authorization: Bearer KEY)",
                               code="invalid_api_key")

    def plan(self, body: Any) -> tuple[_engine.Job, int, bool, bool]:
        """(job without callbacks, prompt tokens, stream?, include usage in the stream?) or RequestError."""
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        messages = read_messages(body)
        n = body.get("n", 1)
        if n not in (1, None):
            raise RequestError(400, "n must be 1: one reply per request", param="n")
        if body.get("stop"):
            raise RequestError(400, "stop sequences are not supported; the reply ends at the model's own end",
                               param="stop")
        template = dict(_loader.NO_THINKING)
        if self.args.thinking:
            template["enable_thinking"] = True
        extra = body.get("chat_template_kwargs")
        if extra is not None:
            if not isinstance(extra, dict):
                raise RequestError(400, "chat_template_kwargs must be an object", param="chat_template_kwargs")
            template.update(extra)
        limit = self.args.max_new_tokens
        asked = positive_int(body, "max_completion_tokens", "max_tokens")
        if asked is not None and asked > limit:
            raise RequestError(400, f"max_tokens {asked} is more than this server allows ({limit}; "
                                    f"provision serve --max-new-tokens)", param="max_tokens",
                               code="max_tokens_exceeded")
        try:
            prompt = self.engine.prompt_tokens(messages, template)
        except Exception as e:  # noqa: BLE001 - a template that refuses these messages
            raise RequestError(400, f"the chat template refused the messages: {e}", param="messages") from None
        max_new = asked or limit
        if self.context is not None:
            room = self.context - prompt
            if room < 1 or (asked is not None and asked > room):
                wanted = f" plus max_tokens {asked}" if asked is not None else ""
                raise RequestError(400, f"the prompt ({prompt} tokens){wanted} does not fit the model's "
                                        f"context of {self.context} tokens", param="messages",
                                   code="context_length_exceeded")
            max_new = min(max_new, room)
        temperature = body.get("temperature")
        sample = not self.args.greedy and temperature not in (0, 0.0)
        job = _engine.Job(messages=messages, max_new_tokens=max_new, sample=sample,
                          on_text=lambda _t: None, on_done=lambda _r, _e: None, template=template)
        options = body.get("stream_options") or {}
        usage = bool(isinstance(options, dict) and options.get("include_usage"))
        return job, prompt, bool(body.get("stream")), usage

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_id, "context": self.context,
                "max_new_tokens": self.args.max_new_tokens, "generations": self.engine.counters()}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": self.created,
                                            "owned_by": "provision"}]}


def finish_reason(result: dict[str, Any]) -> str:
    return "length" if result["stop_reason"] == "max_new_tokens" else "stop"


def usage_of(prompt: int, result: dict[str, Any]) -> dict[str, int]:
    n = int(result["n_new_tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}


def failure(error: BaseException) -> dict[str, Any]:
    """The OpenAI error body for a generation that raised, in a plain reply or a stream."""
    kind = "out_of_memory" if _loader.is_oom(error) else "server_error"
    return {"error": {"message": f"generating the reply failed: {type(error).__name__}: {error}", "type": kind,
                      "param": None, "code": None}}


def app(server: Server) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    api = FastAPI(title="provision serve", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(RequestError)  # type: ignore[untyped-decorator, unused-ignore]
    async def refused(_request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(e.body, status_code=e.status, headers=e.headers)

    @api.get("/health")  # type: ignore[untyped-decorator, unused-ignore]
    async def health() -> dict[str, Any]:
        return server.health()

    @api.get("/v1/models")  # type: ignore[untyped-decorator, unused-ignore]
    async def models(request: Request) -> dict[str, Any]:
        server.authorize(request.headers.get("authorization"))
        return server.models()

    @api.post("/v1/chat/completions")  # type: ignore[untyped-decorator, unused-ignore]
    async def completions(request: Request) -> Any:
        server.authorize(request.headers.get("authorization"))
        try:
            body = await request.json()
        except ValueError:
            raise RequestError(400, "the request body is not valid JSON") from None
        job, prompt, stream, usage = server.plan(body)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, (kind, value))
            except RuntimeError:   # the loop is closed: the server is shutting down
                job.stop.set()

        job.on_text = lambda text: put("text", text)
        job.on_done = lambda result, error: put("done", (result, error))
        try:
            server.engine.submit(job)
        except _engine.Busy as e:
            raise RequestError(503, str(e), kind="server_busy", code="queue_full",
                               headers={"Retry-After": str(e.retry_after)}) from None
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if stream:
            return StreamingResponse(sse(server, request, job, pieces, rid, created, prompt, usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(pieces.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return None
                    continue
                if kind == "done":
                    break
        finally:
            job.stop.set()   # a no-op once done; stops the reply when the client left or the server stops
        result, error = value
        if error is not None:
            return JSONResponse(failure(error), status_code=500)
        return {"id": rid, "object": "chat.completion", "created": created, "model": server.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result["reply"]},
                             "finish_reason": finish_reason(result)}],
                "usage": usage_of(prompt, result)}

    return api


async def sse(server: Server, request: Any, job: _engine.Job, pieces: asyncio.Queue[tuple[str, Any]],
              rid: str, created: int, prompt: int, usage: bool) -> AsyncIterator[str]:
    """The reply as OpenAI `chat.completion.chunk` events; leaving early (the client went away, and
    Starlette cancels this generator, or a poll finds it gone) stops the generation."""

    def event(doc: dict[str, Any]) -> str:
        return f"data: {json.dumps(doc, ensure_ascii=False)}\n\n"

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        """A chat.completion.chunk with one choice, or with none (the usage chunk) when `delta` is None."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return event({"id": rid, "object": "chat.completion.chunk", "created": created, "model": server.model_id,
                      "choices": choices, **extra})

    try:
        yield chunk({"role": "assistant", "content": ""})
        checked = time.monotonic()
        while True:
            try:
                kind, value = await asyncio.wait_for(pieces.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                kind, value = "", None
            if time.monotonic() - checked >= DISCONNECT_POLL_S:
                checked = time.monotonic()
                if await request.is_disconnected():
                    return
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "done":
                result, error = value
                if error is not None:
                    yield event(failure(error))
                    return
                yield chunk({}, finish_reason(result))
                if usage:
                    yield chunk(None, usage=usage_of(prompt, result))
                yield "data: [DONE]\n\n"
                return
    finally:
        job.stop.set()


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts so that port 0 can be told to the user."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def main(argv: list[str]) -> int:
    return int(_loader.exit_on_ctrl_c(run, parse(argv)))


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401 - checked before the slow load
        import uvicorn
    except ModuleNotFoundError as e:
        _loader.explain_missing(e, "`provision serve` installs the server stack into it (fastapi, uvicorn)")
        return 1
    try:
        sock = listen(args.host, args.port)
    except OSError as e:
        _loader.eprint(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}")
        _loader.eprint("hint: pass another --port (0 takes any free one)")
        return 1
    loaded = _loader.load_or_explain(args.model, quant=args.quant, dtype=args.dtype,
                                     trust_remote_code=args.trust_remote_code, what="`provision serve`")
    if loaded is None:
        return 1
    engine = _engine.Engine(loaded, max_waiting=args.max_waiting)
    if args.context and engine.context and args.context > engine.context:
        _loader.eprint(f"warning: --context {args.context} is more than the model's own "
                       f"{engine.context} tokens (max_position_embeddings); replies past it may be poor")
    server = Server(engine, args, _engine.display_name(args.model))
    config = uvicorn.Config(app(server), log_level="warning", timeout_graceful_shutdown=5,
                            timeout_keep_alive=5)
    base = url(sock, args.host)
    _loader.eprint(f"serving {server.model_id} at {base}/v1 (OpenAI-compatible; context {server.context} "
                   f"tokens, replies up to {args.max_new_tokens}, {args.max_waiting} may wait)"
                   + ("; an API key is required" if server.api_key else ""))
    _loader.eprint(f"try: curl {base}/v1/chat/completions -H 'Content-Type: application/json' "
                   f"-d '{{\"model\": \"{server.model_id}\", \"messages\": [{{\"role\": \"user\", "
                   f"\"content\": \"Hello!\"}}]}}'" + (" -H \"Authorization: Bearer $KEY\"" if server.api_key else ""))
    _loader.eprint("Ctrl-C stops the server")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
