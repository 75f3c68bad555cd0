"""Load a chat model the walkthrough's way, stream one reply, and measure it (shared by every script that loads a model).

Runs inside the TARGET environment's interpreter, never inside provision: only the standard library is
imported at module level; torch, transformers and bitsandbytes are imported by the functions. The scripts
next to this file import it by name (a script's own folder is first on sys.path).
"""
from __future__ import annotations

import copy
import importlib.metadata
import logging
import os
import platform
import queue
import resource
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

QUANTS = ("nf4", "int8", "none")
DTYPES = ("auto", "float16", "bfloat16", "float32")
# The walkthrough's sampling settings, used when sampling is asked for.
SAMPLE_TEMPERATURE = 0.6
SAMPLE_TOP_P = 0.9
PACKAGES = ("torch", "transformers", "accelerate", "bitsandbytes", "safetensors", "tokenizers")
# Loggers whose warnings we keep out of the streamed reply and report instead.
LOGGERS = ("transformers", "bitsandbytes", "accelerate", "torch")
MAX_LISTED = 20


class ModelNotFound(Exception):
    """The model argument names a local folder that does not exist or is not a model folder."""


class NoChatTemplate(Exception):
    """The tokenizer has no chat template: a base model, not a chat (Instruct) model."""


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def looks_local(model: str) -> bool:
    """A path rather than a hub id: hub ids are `name` or `owner/name`, never absolute or dotted."""
    return (model.startswith(("/", "./", "../", "~")) or model in (".", "..")
            or model.count("/") > 1 or os.path.isdir(model))


def check_local(model: str) -> str:
    """The local folder for `model` (expanded), or raise ModelNotFound with the reason."""
    path = os.path.expanduser(model)
    if not os.path.exists(path):
        raise ModelNotFound(f"model folder {model} does not exist")
    if not os.path.isdir(path):
        raise ModelNotFound(f"{model} is a file, not a model folder")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelNotFound(f"{model} has no config.json: not a transformers model folder")
    return path


@dataclass
class Notes:
    """Warnings and library log records seen while loading and generating (deduplicated, in order)."""

    seen: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        text = text.strip()
        if text and text not in self.seen:
            self.seen.append(text)


class _NoteHandler(logging.Handler):
    def __init__(self, notes: Notes) -> None:
        super().__init__(logging.WARNING)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.add(f"{record.name}: {record.getMessage()}")


@contextmanager
def capture_notes(notes: Notes) -> Iterator[None]:
    """Route library warnings into `notes` so they neither interleave with the reply nor get lost."""
    handler = _NoteHandler(notes)
    saved = []
    for name in LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.propagate, list(log.handlers)))
        log.handlers = [handler]
        log.propagate = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            for w in caught:
                notes.add(f"{w.category.__name__}: {w.message}")
            for log, propagate, handlers in saved:
                log.handlers = handlers
                log.propagate = propagate


def quiet_transformers() -> None:
    """transformers installs its own stderr handler on import; ours (capture_notes) replaces it."""
    try:
        from transformers.utils import logging as tlog

        tlog.disable_default_handler()
    except Exception:  # noqa: BLE001 - older transformers: its handler just stays
        pass


def rss_peak_bytes() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    info: dict[str, Any]


def choose_dtypes(torch: Any, quant: str, dtype: str, on_gpu: bool) -> tuple[Any, Any]:
    """(dtype of the unquantized modules, bitsandbytes compute dtype).

    GPU: float16 as the walkthrough does (`bnb_4bit_compute_dtype=torch.float16`). CPU: float32, which
    every CPU computes natively (bfloat16 and float16 matmuls need AVX-512 BF16/FP16 or AMX to be fast;
    on an AVX2 machine SmolLM2-135M in nf4 decodes at about the same speed either way).
    """
    if dtype != "auto":
        chosen = getattr(torch, dtype)
    elif on_gpu:
        chosen = torch.float16
    else:
        chosen = torch.float32
    return chosen, chosen


def load(model_id: str, *, quant: str = "nf4", dtype: str = "auto", trust_remote_code: bool = False,
         device_map: str = "auto", notes: Notes | None = None) -> Loaded:
    """Load tokenizer and model as the walkthrough does; `info` gets the timings, placement, memory."""
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}; use one of {', '.join(QUANTS)}")
    notes = notes if notes is not None else Notes()
    info: dict[str, Any] = {"model": model_id, "quant": quant, "versions": versions()}
    source = check_local(model_id) if looks_local(model_id) else model_id
    t0 = time.perf_counter()
    with capture_notes(notes):
        import torch
        import transformers  # noqa: F401 - imported here so its handler can be replaced first

        quiet_transformers()
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        if quant in ("nf4", "int8"):
            preload_bitsandbytes(torch)
    info["import_s"] = time.perf_counter() - t0
    on_gpu = bool(torch.cuda.is_available())
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = on_gpu
    info["gpu"] = gpu_facts(torch) if on_gpu else None
    dt, compute = choose_dtypes(torch, quant, dtype, on_gpu)
    kwargs: dict[str, Any] = {"device_map": device_map, "dtype": dt}
    if quant == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    elif quant == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    info["dtype"] = str(dt).removeprefix("torch.")
    info["compute_dtype"] = str(compute).removeprefix("torch.") if quant == "nf4" else info["dtype"]
    if on_gpu:
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)
    info["rss_before_load_bytes"] = rss_peak_bytes()
    t1 = time.perf_counter()
    with capture_notes(notes):
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        model.eval()
    info["load_s"] = time.perf_counter() - t1
    info["device"] = str(first_device(model))
    info["placement"] = placement(model, on_gpu)
    info["footprint_bytes"] = int(model.get_memory_footprint())
    info["architecture"] = type(model).__name__
    if on_gpu:
        info["cuda_allocated_after_load_bytes"] = sum(
            torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))
    return Loaded(model=model, tokenizer=tok, info=info)


def preload_bitsandbytes(torch: Any) -> None:
    """Import bitsandbytes before transformers does, without its import-time torch.compile wrappers
    (see _bnb_import: about 0.7 s on a 2-core CPU, and no change in what runs). A failing import is
    left for from_pretrained to raise, with transformers' own message."""
    try:
        from _bnb_import import import_bitsandbytes

        import_bitsandbytes(torch)
    except Exception:  # noqa: BLE001 - reported by the load itself
        pass


def gpu_facts(torch: Any) -> dict[str, Any]:
    free, total = torch.cuda.mem_get_info(0)
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "total_bytes": int(total), "free_before_load_bytes": int(free),
            "capability": f"{major}.{minor}"}


def first_device(model: Any) -> Any:
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return "meta"


def _device_name(value: object) -> str:
    # accelerate writes GPU indices as ints ("0") and offload targets as "cpu"/"disk".
    if isinstance(value, int):
        return f"cuda:{value}"
    text = str(value)
    return f"cuda:{text}" if text.isdigit() else text


def placement(model: Any, on_gpu: bool) -> dict[str, Any]:
    """Where every module with weights lives: counts and bytes per device, and what left the GPU."""
    device_map = {k: _device_name(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}
    keys = sorted(device_map, key=len, reverse=True)
    modules: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    offloaded: list[str] = []
    seen: set[int] = set()  # tied weights (embeddings and LM head) are one tensor: count it once
    for name, module in model.named_modules():
        tensors = [t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))
                   if id(t) not in seen]
        seen.update(id(t) for t in tensors)
        if not tensors:
            continue
        where = next((device_map[k] for k in keys
                      if k == "" or name == k or name.startswith(k + ".")), None)
        if where is None:
            where = str(tensors[0].device)
        modules[where] += 1
        nbytes[where] += sum(t.numel() * t.element_size() for t in tensors)
        if on_gpu and not where.startswith("cuda"):
            offloaded.append(name)
    shown = dict(list(device_map.items())[:MAX_LISTED])
    return {"modules_by_device": dict(modules), "bytes_by_device": dict(nbytes),
            "offloaded": offloaded[:MAX_LISTED], "n_offloaded": len(offloaded),
            "n_modules": sum(modules.values()),
            "device_map": shown, "device_map_entries": len(device_map)}


class _Clock:
    """A StoppingCriteria that timestamps every generated token and stops when `stop` is set."""

    def __init__(self, stop: threading.Event | None) -> None:
        self.stop = stop
        self.times: list[float] = []

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.times.append(time.perf_counter())
        flag = self.stop is not None and self.stop.is_set()
        return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)


def generation_kwargs(model: Any, tok: Any, *, max_new_tokens: int, sample: bool) -> dict[str, Any]:
    # Start from the model's own generation config (eos ids, repetition penalty) and override only
    # the decoding mode; greedy clears the sampling knobs so transformers does not warn about them.
    gc = copy.deepcopy(model.generation_config)
    gc.max_new_tokens = max_new_tokens
    if sample:
        gc.do_sample = True
        gc.temperature = SAMPLE_TEMPERATURE
        gc.top_p = SAMPLE_TOP_P
    else:
        gc.do_sample = False
        gc.temperature = None
        gc.top_p = None
        gc.top_k = None
        gc.min_p = None
    if gc.pad_token_id is None:
        gc.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {"generation_config": gc}


#: Qwen3's chat template thinks (a long <think> block before the answer) unless told
#: `enable_thinking=False`; templates that do not use the variable ignore it (Qwen2.5).
NO_THINKING: Mapping[str, Any] = {"enable_thinking": False}


def encode(tok: Any, messages: Sequence[Mapping[str, str]], template: Mapping[str, Any] | None = None) -> Any:
    """The chat template applied to `messages`; `template` holds its variables (NO_THINKING by default)."""
    if not getattr(tok, "chat_template", None):
        raise NoChatTemplate("the tokenizer has no chat template (a base model, not a chat model)")
    return tok.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                   return_dict=True, **(NO_THINKING if template is None else template))


def block_sigint_here() -> None:
    """Keep SIGINT off the calling thread and every thread it starts (they inherit the mask)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


class Worker:
    """One long-lived thread that does all the torch work of a session, with SIGINT blocked.

    A Ctrl-C goes to any one thread of the process that does not block it. torch's and tokenizers'
    thread pools are started by the thread that first computes and inherit its signal mask; doing
    all the work here keeps them blocked, so the signal always reaches the main thread, which only
    waits (in short steps) and so can act on it at once. One thread for the whole session also
    keeps one OpenMP team: a fresh thread per reply measured about 20% slower on a 2-core CPU.
    """

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any],
                                     dict[str, Any]]] = queue.Queue()
        # A daemon: a Ctrl-C during a long load must be able to end the process at once.
        self.thread = threading.Thread(target=self._loop, name="torch-worker", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        block_sigint_here()
        while True:
            fn, args, kwargs, done = self.jobs.get()
            try:
                done["value"] = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                done["error"] = e
            done["event"].set()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        done: dict[str, Any] = {"event": threading.Event()}
        self.jobs.put((fn, args, kwargs, done))
        while not done["event"].wait(0.2):
            pass  # short waits: a signal that lands just before a wait is acted on within 0.2 s
        if "error" in done:
            raise done["error"]
        return done.get("value")


def _streamer(tok: Any, on_text: Callable[[str], None]) -> Any:
    """transformers' TextStreamer (word-boundary decoding), handing finished text to `on_text`.

    It runs inside generate's own loop: no queue and no extra thread per reply.
    """
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):  # type: ignore[misc]
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return CallbackStreamer(tok, skip_prompt=True, skip_special_tokens=True)


def generate(loaded: Loaded, messages: Sequence[Mapping[str, str]], *, max_new_tokens: int = 64,
             sample: bool = False, on_text: Callable[[str], None] | None = None,
             stop: threading.Event | None = None, notes: Notes | None = None,
             template: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Stream one reply for `messages`; returns the reply (new tokens only) and its timings.

    `template` holds the chat template's variables (default: no thinking block).

    `stop` (set from a SIGINT handler in the REPL) ends the reply after the current token.
    """
    from transformers import StoppingCriteriaList

    model, tok = loaded.model, loaded.tokenizer
    notes = notes if notes is not None else Notes()
    clock = _Clock(stop)
    t0 = time.perf_counter()
    enc = encode(tok, messages, template)
    enc = {k: v.to(first_device(model)) for k, v in enc.items()}
    prompt_len = int(enc["input_ids"].shape[1])
    kwargs = dict(enc, stopping_criteria=StoppingCriteriaList([clock]),
                  **generation_kwargs(model, tok, max_new_tokens=max_new_tokens, sample=sample))
    if on_text is not None:
        kwargs["streamer"] = _streamer(tok, on_text)
    with capture_notes(notes):
        out = model.generate(**kwargs)
    t_end = time.perf_counter()
    new = out[0, prompt_len:]
    n_new = int(new.shape[0])
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
    if stop is not None and stop.is_set():
        reason = "interrupted"
    elif n_new and int(new[-1]) in eos_ids:
        reason = "eos"
    elif n_new >= max_new_tokens:
        reason = "max_new_tokens"
    else:
        reason = "stopped"
    times = clock.times
    gen_s = t_end - t0
    decode_s = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "reply": tok.decode(new, skip_special_tokens=True),
        "n_prompt_tokens": prompt_len,
        "n_new_tokens": n_new,
        "stop_reason": reason,
        "ttft_s": times[0] - t0 if times else None,
        "generate_s": gen_s,
        "tokens_per_s": n_new / gen_s if gen_s > 0 else None,
        "decode_tokens_per_s": (len(times) - 1) / decode_s if decode_s > 0 else None,
    }


def memory(loaded: Loaded) -> dict[str, Any]:
    """Peak memory: the CUDA allocator's peak on a GPU, the process's peak RSS on the CPU."""
    import torch

    info = loaded.info
    found: dict[str, Any] = {"footprint_bytes": info.get("footprint_bytes"),
                             "rss_before_load_bytes": info.get("rss_before_load_bytes"),
                             "peak_rss_bytes": rss_peak_bytes()}
    if info.get("cuda_available"):
        n = torch.cuda.device_count()
        found["kind"] = "cuda_max_allocated"
        found["peak_bytes"] = sum(torch.cuda.max_memory_allocated(i) for i in range(n))
        found["cuda_max_reserved_bytes"] = sum(torch.cuda.max_memory_reserved(i) for i in range(n))
        found["cuda_allocated_after_load_bytes"] = info.get("cuda_allocated_after_load_bytes")
    else:
        found["kind"] = "peak_rss"
        found["peak_bytes"] = found["peak_rss_bytes"]
    return found


def is_oom(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "CUDA out of memory" in str(exc) or (
        isinstance(exc, MemoryError))


def error_fields(exc: BaseException, stage: str) -> dict[str, Any]:
    """What a failure reports: the message, the type, the last traceback lines, and OOM-ness."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"error": str(exc).strip() or type(exc).__name__, "error_type": type(exc).__name__,
            "traceback": "\n".join(tb.rstrip().splitlines()[-25:]), "oom": is_oom(exc),
            "stage": stage}


def write_text(stream: Any) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def add_model_arguments(parser: Any) -> None:
    """MODEL, --quant, --dtype and --trust-remote-code: the arguments of every script that loads a model."""
    parser.add_argument("model")
    parser.add_argument("--quant", choices=QUANTS, default="nf4")
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--trust-remote-code", action="store_true")


def first_line(exc: BaseException) -> str:
    """An exception's first line: what one `error:` line has room for."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def precision(info: Mapping[str, Any]) -> str:
    """"nf4 (4-bit, float32 compute)", "int8", "float16": how the weights are held."""
    quant = info.get("quant")
    if quant == "nf4":
        return f"nf4 (4-bit, {info.get('compute_dtype')} compute)"
    if quant == "int8":
        return "int8 (8-bit)"
    return str(info.get("dtype"))


def device(info: Mapping[str, Any]) -> str:
    """"cuda:0 (NVIDIA H200)", "cpu": where the model was placed."""
    gpu = info.get("gpu") or {}
    name = gpu.get("name") if isinstance(gpu, Mapping) else None
    return f"{info.get('device')} ({name})" if name else str(info.get("device"))


def explain_missing(exc: ModuleNotFoundError, hint: str) -> None:
    """The error and hint for a package this environment lacks."""
    eprint(f"error: this environment ({sys.prefix}) lacks {exc.name}")
    eprint(f"hint: {hint}")


def load_or_explain(model: str, *, quant: str, dtype: str, trust_remote_code: bool, what: str | None = None,
                    worker: Worker | None = None, verbose: bool = True) -> Loaded | None:
    """The start of the terminal chat, the web chat and the server: load as the smoke chat does (on
    `worker` when given); on failure print one error and a hint and return None. `what` names the
    front end that installs its own packages; `verbose` prints the loading and loaded lines."""
    if trust_remote_code:
        eprint("warning: --trust-remote-code runs Python code that comes with the model")
    if verbose:
        eprint(f"loading {model} ({quant}) ...")
    call = worker.call if worker is not None else (lambda fn, *a, **k: fn(*a, **k))
    try:
        loaded: Loaded = call(load, model, quant=quant, dtype=dtype, trust_remote_code=trust_remote_code)
    except ModelNotFound as e:
        eprint(f"error: {e}")
        eprint("hint: pass a folder holding config.json and the weights, or a hub id "
               "(provision model download ID --local-dir DIR)")
        return None
    except ModuleNotFoundError as e:
        explain_missing(e, "pass the chat environment with --env, or build one: provision env create"
                           + (f"; {what} installs what it needs itself" if what else ""))
        return None
    except Exception as e:  # noqa: BLE001 - one line for the user; `provision verify --smoke-chat` diagnoses
        eprint(f"error: loading {model} failed: {type(e).__name__}: {first_line(e)}")
        eprint(f"hint: `provision verify --smoke-chat --model {model} --env {sys.prefix}` says why")
        return None
    if verbose:
        info = loaded.info
        eprint(f"loaded in {info['load_s']:.1f} s on {device(info)} "
               f"({human(info.get('footprint_bytes'))} of weights, {precision(info)})")
    return loaded


def exit_on_ctrl_c(run: Callable[[Any], int], args: Any) -> int:
    """`run(args)`, a script's body; Ctrl-C outside a reply (while loading, between turns) leaves quietly
    with 130, as shells expect."""
    try:
        return run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
