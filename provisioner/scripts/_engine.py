"""One loaded model and one generation thread, shared by the web chat (web_chat.py) and the HTTP server (serve.py).

Requests run one at a time, in arrival order (one model on one GPU generates one reply at a time); at
most `max_waiting` wait behind the running one, and a request beyond that is refused at once (Busy), so
a burst cannot pile up unbounded work. Every request carries its own stop flag, which is the
StoppingCriteria flag of `_loader.generate`: setting it (the web page's Stop button, an HTTP client
that went away) ends a running reply after the current token, or drops a queued one before it starts.

Runs inside the TARGET environment's interpreter: standard library only at module level, like _loader.
"""
from __future__ import annotations

import collections
import copy
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import _loader


class Busy(Exception):
    """The queue is full: refuse the request now rather than make it wait without bound."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} requests are already waiting for the model; try again in "
                         f"{retry_after} s")
        self.retry_after = retry_after


class Stopped(Exception):
    """The request was stopped before its generation started (its client left while it waited)."""


@dataclass
class Job:
    """One reply to generate. `on_text` gets each piece of text as it is decoded, `on_done` the result
    (or the exception); both are called on the generation thread."""

    messages: list[dict[str, str]]
    max_new_tokens: int
    sample: bool
    on_text: Callable[[str], None]
    on_done: Callable[[dict[str, Any] | None, BaseException | None], None]
    template: Mapping[str, Any] | None = None   # the chat template's variables; None: _loader.NO_THINKING
    stop: threading.Event = field(default_factory=threading.Event)


class Engine:
    """The model, its FIFO of jobs and the one thread that runs them; counters for /health."""

    def __init__(self, loaded: _loader.Loaded, *, max_waiting: int) -> None:
        self.loaded = loaded
        self.max_waiting = max_waiting
        self.notes = _loader.Notes()
        self.lock = threading.Lock()
        self.waiting = 0          # accepted, not started
        self.active = 0           # generating now (0 or 1)
        self.completed = 0        # generations that ran to their end (eos or max_new_tokens)
        self.stopped = 0          # stopped by their flag, running or still queued
        self.failed = 0
        self.generated_tokens = 0
        self.recent_s: collections.deque[float] = collections.deque(maxlen=16)
        self.last: dict[str, Any] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._ready = threading.Condition(self.lock)
        # A copy for counting prompt tokens on other threads: a fast tokenizer is not safe to use
        # from two threads at once, and the generation thread decodes with the original all the time.
        self.counter = copy.deepcopy(loaded.tokenizer)
        self._count_lock = threading.Lock()
        self.context = context_length(loaded)
        self.thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self.thread.start()

    def prompt_tokens(self, messages: list[dict[str, str]], template: Mapping[str, Any] | None = None) -> int:
        """How many tokens the prompt of `messages` takes: encoded as generate encodes it."""
        with self._count_lock:   # the counting copy is shared by the callers' threads
            return int(_loader.encode(self.counter, messages, template)["input_ids"].shape[1])

    def submit(self, job: Job) -> None:
        """Queue `job` behind the others, or raise Busy when `max_waiting` are waiting already."""
        with self.lock:
            if self.waiting >= self.max_waiting and (self.active or self.waiting):
                raise Busy(self.waiting, self._retry_after())
            self.waiting += 1
            self._queue.append(job)
            self._ready.notify()

    def _retry_after(self) -> int:
        # The time the queue ahead takes to drain, from the recent replies; at least one second.
        per = sum(self.recent_s) / len(self.recent_s) if self.recent_s else 1.0
        return max(1, math.ceil(per * (self.waiting + self.active)))

    def _next(self) -> Job:
        with self.lock:
            while not self._queue:
                self._ready.wait()
            job = self._queue.popleft()
            self.waiting -= 1
            if not job.stop.is_set():
                self.active += 1
            return job

    def _loop(self) -> None:
        _loader.block_sigint_here()  # Ctrl-C belongs to the server's main thread
        while True:
            job = self._next()
            if job.stop.is_set():
                with self.lock:
                    self.stopped += 1
                job.on_done(None, Stopped("stopped before it started"))
                continue
            result: dict[str, Any] | None = None
            error: BaseException | None = None
            t0 = time.perf_counter()
            try:
                result = _loader.generate(self.loaded, job.messages, max_new_tokens=job.max_new_tokens,
                                          sample=job.sample, on_text=job.on_text, stop=job.stop,
                                          notes=self.notes, template=job.template)
            except Exception as e:  # noqa: BLE001 - handed to the request that asked for it
                error = e
            finally:
                with self.lock:
                    self.active -= 1
                    self.recent_s.append(time.perf_counter() - t0)
                    if error is not None:
                        self.failed += 1
                    elif result is not None and result["stop_reason"] == "interrupted":
                        self.stopped += 1
                    else:
                        self.completed += 1
                    if result is not None:
                        self.generated_tokens += int(result["n_new_tokens"])
                        self.last = result
            job.on_done(result, error)

    def counters(self) -> dict[str, int]:
        with self.lock:
            return {"active": self.active, "waiting": self.waiting, "max_waiting": self.max_waiting,
                    "completed": self.completed, "stopped": self.stopped, "failed": self.failed,
                    "generated_tokens": self.generated_tokens}


def context_length(loaded: _loader.Loaded) -> int | None:
    """The longest sequence the model takes (prompt plus reply), from its config."""
    config = getattr(loaded.model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def display_name(model: str) -> str:
    """The id clients see: a hub id as it is, a local folder by its name."""
    return os.path.basename(os.path.normpath(os.path.expanduser(model))) if _loader.looks_local(model) else model
