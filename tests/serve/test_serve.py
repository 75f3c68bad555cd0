"""`provision serve`: a real server (FastAPI on uvicorn in the web test env) on 127.0.0.1, driven by the real
`openai` client and by raw HTTP; the tiny Qwen2 fixture answers with its known replies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

from tests.serve.running import QUESTION, REPLY, TINY, TINY_NAME, Running, started

openai = pytest.importorskip("openai", reason="the `openai` client is in the test extra (pip install -e .[test])")

KEY = "test-key-0123"
HELLO = [{"role": "user", "content": QUESTION}]
SING = [{"role": "user", "content": "Sing for me."}]   # the fixture's endless "la la la ..."


@pytest.fixture(scope="module")
def server(web_env_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The model's own context (512 tokens), replies up to 500 tokens, 3 may wait, an API key."""
    with started(["serve", str(TINY), "--env", str(web_env_python.parent.parent), "--port", "0", "--api-key", KEY,
                  "--max-new-tokens", "500", "--max-waiting", "3"], tmp_path_factory.mktemp("serve-home")) as running:
        yield running


@pytest.fixture(scope="module")
def long_server(web_env_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Room for the endless reply (a context beyond the model's own), one request may wait, no key."""
    with started(["serve", str(TINY), "--env", str(web_env_python.parent.parent), "--port", "0", "--context",
                  "1000000", "--max-new-tokens", "1000000", "--max-waiting", "1"],
                 tmp_path_factory.mktemp("serve-long-home")) as running:
        yield running


def client(server: Running, key: str = KEY) -> Any:
    # max_retries=0: a 503 must reach the test, not be retried by the client
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=300)


def test_plain_completion_is_the_known_reply(server: Running) -> None:
    done = client(server).chat.completions.create(model=TINY_NAME, messages=HELLO, temperature=0)
    assert done.choices[0].message.content == REPLY
    assert done.choices[0].finish_reason == "stop"
    assert done.model == TINY_NAME
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (32, 13)


def test_streamed_completion_arrives_in_pieces(server: Running) -> None:
    stream = client(server).chat.completions.create(model=TINY_NAME, messages=HELLO, temperature=0, stream=True,
                                                    stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == REPLY
    assert len(pieces) > 3           # streamed as generated, not sent in one piece
    assert finish == "stop" and usage is not None and usage.completion_tokens == 13


def test_models_lists_the_one_model(server: Running) -> None:
    assert [m.id for m in client(server).models.list()] == [TINY_NAME]


def test_the_api_key_is_required(server: Running) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(server, key="wrong-key").chat.completions.create(model=TINY_NAME, messages=HELLO)
    assert wrong.value.status_code == 401
    assert "API key" in str(wrong.value)
    status, doc = server.get("/v1/models")                       # no Authorization header at all
    assert status == 401 and doc["error"]["code"] == "invalid_api_key"
    assert server.health()["status"] == "ok"                     # /health stays open for monitors


def test_oversize_requests_get_400_with_the_reason(server: Running) -> None:
    api = client(server)
    with pytest.raises(openai.BadRequestError) as too_long:
        api.chat.completions.create(model=TINY_NAME, messages=[{"role": "user", "content": "la " * 600}])
    assert too_long.value.status_code == 400
    assert "does not fit the model's context of 512 tokens" in str(too_long.value)
    with pytest.raises(openai.BadRequestError) as fits_not:
        api.chat.completions.create(model=TINY_NAME, messages=HELLO, max_tokens=490)
    assert "the prompt (32 tokens) plus max_tokens 490 does not fit the model's context of 512 tokens" in str(
        fits_not.value)
    with pytest.raises(openai.BadRequestError) as over_limit:
        api.chat.completions.create(model=TINY_NAME, messages=HELLO, max_tokens=501)
    assert "max_tokens 501 is more than this server allows (500" in str(over_limit.value)
    # and the largest reply that fits is answered
    done = api.chat.completions.create(model=TINY_NAME, messages=HELLO, max_tokens=480, temperature=0)
    assert done.choices[0].message.content == REPLY


def test_bounded_load_none_lost(server: Running) -> None:
    """50 requests from 8 concurrent clients: each answered with the reply or refused with 503 and
    Retry-After; every accepted one generated exactly once; the server is healthy afterwards."""
    before = server.wait_until_idle()["generations"]
    api = client(server)

    def one(i: int) -> tuple[str, str]:
        try:
            done = api.chat.completions.create(model=TINY_NAME, messages=HELLO, temperature=0)
            return "ok", done.choices[0].message.content or ""
        except openai.APIStatusError as e:
            return f"http {e.status_code}", e.response.headers.get("retry-after", "")

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(50)]
        finished, pending = wait(futures, timeout=600)       # a hang guard, not a timing assertion
    assert not pending
    results = [f.result() for f in finished]
    answered = [text for kind, text in results if kind == "ok"]
    refused = [retry for kind, retry in results if kind == "http 503"]
    assert len(answered) + len(refused) == 50, results
    assert answered and set(answered) == {REPLY}
    assert all(retry.isdigit() and int(retry) >= 1 for retry in refused)
    after = server.wait_until_idle()
    assert after["status"] == "ok"
    gens = after["generations"]
    assert gens["completed"] - before["completed"] == len(answered)
    assert gens["failed"] == before["failed"] and gens["stopped"] == before["stopped"]
    assert client(server).chat.completions.create(model=TINY_NAME, messages=HELLO,
                                                  temperature=0).choices[0].message.content == REPLY


# Runs in its own process, so that it can be killed (SIGKILL: no goodbye on the connection) mid-stream.
STREAMING_CLIENT = r'''
import sys
from openai import OpenAI
api = OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0)
stream = api.chat.completions.create(model="tiny-qwen2", messages=[{"role": "user", "content": "Sing for me."}],
                                     stream=True, temperature=0, max_tokens=900000)
for chunk in stream:
    for choice in chunk.choices:
        sys.stdout.write(choice.delta.content or "")
        sys.stdout.flush()
'''


def test_client_killed_mid_stream_stops_its_generation(long_server: Running) -> None:
    before = long_server.wait_until_idle()["generations"]
    child = subprocess.Popen([sys.executable, "-c", STREAMING_CLIENT, long_server.url + "/v1"],
                             stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        assert child.stdout is not None
        seen = b""
        while seen.count(b"la") < 20:
            data = os.read(child.stdout.fileno(), 4096)
            assert data, f"the client ended early: {seen!r}"
            seen += data
        assert long_server.health()["generations"]["active"] == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    after = long_server.wait_until_idle()["generations"]
    assert after["stopped"] == before["stopped"] + 1          # ended by its flag, not run to the end
    assert after["completed"] == before["completed"]
    assert after["generated_tokens"] - before["generated_tokens"] < 900000
    # the model is free again at once
    done = client(long_server).chat.completions.create(model=TINY_NAME, messages=HELLO, temperature=0)
    assert done.choices[0].message.content == REPLY


def test_full_queue_is_503_with_retry_after_and_order_is_kept(long_server: Running) -> None:
    """One reply running, one waiting (--max-waiting 1): a third request is refused at once; when the
    running one's client leaves, the waiting one is answered."""
    long_server.wait_until_idle()
    api = client(long_server)
    stream = api.chat.completions.create(model=TINY_NAME, messages=SING, stream=True, temperature=0,
                                         max_tokens=900000)
    next(c for c in stream if c.choices and c.choices[0].delta.content)
    assert long_server.health()["generations"]["active"] == 1     # the first reply is running
    queued: dict[str, Any] = {}

    def wait_in_line() -> None:
        try:
            queued["reply"] = api.chat.completions.create(model=TINY_NAME, messages=HELLO,
                                                          temperature=0).choices[0].message.content
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            queued["error"] = e

    waiter = threading.Thread(target=wait_in_line)
    waiter.start()
    try:
        deadline = time.monotonic() + 120
        while long_server.health()["generations"]["waiting"] < 1:   # a hang guard, not a timing assertion
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(openai.APIStatusError) as busy:
            api.chat.completions.create(model=TINY_NAME, messages=HELLO, temperature=0)
        assert busy.value.status_code == 503
        assert busy.value.response.headers["retry-after"].isdigit()
        assert "requests are already waiting" in str(busy.value)
    finally:
        stream.close()                       # the running reply's client leaves: its generation stops
        waiter.join(300)
    assert queued == {"reply": REPLY}
    assert long_server.wait_until_idle()["status"] == "ok"
