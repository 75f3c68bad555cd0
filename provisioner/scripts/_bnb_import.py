"""Import bitsandbytes without building torch.compile wrappers or loading torch._dynamo (run by the target env's python).

bitsandbytes 0.46+ wraps several of its default kernels in `torch.compile(...)` as it is imported
(`_try_torch_compile` in bitsandbytes/backends/default/ops.py). Building those wrappers imports
torch._dynamo and torch._inductor: `import bitsandbytes` took 1.75 s on the 2-core CI kind
(`python -X importtime`), more than importing torch. Compiling only ever happens at a wrapper's first
call, and bitsandbytes falls back to the plain function on any compile error, whether torch.compile
raises when the wrapper is built or when it is called. So a wrapper that calls the real torch.compile
at its first use changes no result; where nothing is compiled (4-bit inference with the CPU backend
or the CUDA library) it saves the torch._inductor import.

The other second: torch.library wraps each Python kernel a package registers in
`torch._disable_dynamo`, whose wrapper imports torch._dynamo at the kernel's first call (0.95 s here,
so the probe's one 4-bit matmul cost more than importing torch). What that wrapper adds is "do not
trace into this function", which only means something while dynamo is tracing, and nothing traces
before torch._dynamo is loaded. So while bitsandbytes registers its kernels, the wrapper used is one
that calls the kernel directly while torch._dynamo is not in sys.modules and hands over to torch's
own wrapper once it is (transformers imports it as it loads a model, so a chat runs the kernels
exactly as the user's own script does). verify's probe no longer exercises the import of
torch._dynamo; `verify --smoke-chat` does, through transformers. Standard library only at module
level, like its siblings.
"""
from __future__ import annotations

import functools
import sys
from typing import Any


def _deferred(real: Any) -> Any:
    """A torch.compile that builds the real compiled function at its first call."""
    def compile_later(model: Any = None, **kwargs: Any) -> Any:
        if model is None:                      # used as @torch.compile(dynamic=False)
            return lambda fn: compile_later(fn, **kwargs)
        compiled: list[Any] = []

        @functools.wraps(model)
        def call(*args: Any, **kw: Any) -> Any:
            if not compiled:
                compiled.append(real(model, **kwargs))
            return compiled[0](*args, **kw)

        return call

    return compile_later


def _dynamo_when_loaded(real: Any) -> Any:
    """A torch._disable_dynamo whose wrapper calls the function itself while torch._dynamo is not loaded."""
    def disable(fn: Any = None, recursive: bool = True) -> Any:
        if fn is None:                         # used as @torch._disable_dynamo(recursive=False)
            return functools.partial(disable, recursive=recursive)
        # called as torch calls it (`@torch._disable_dynamo`, or with recursive=False)
        guarded = real(fn) if recursive else real(fn, recursive=False)

        @functools.wraps(fn)
        def call(*args: Any, **kw: Any) -> Any:
            if "torch._dynamo" in sys.modules:
                return guarded(*args, **kw)
            return fn(*args, **kw)

        return call

    return disable


def import_bitsandbytes(torch: Any) -> Any:
    """`import bitsandbytes` with torch.compile deferred and torch._disable_dynamo made lazy while its
    modules load; both restored after."""
    real_compile = torch.compile
    real_disable = getattr(torch, "_disable_dynamo", None)
    torch.compile = _deferred(real_compile)
    if real_disable is not None:
        torch._disable_dynamo = _dynamo_when_loaded(real_disable)
    try:
        import bitsandbytes
    finally:
        torch.compile = real_compile
        if real_disable is not None:
            torch._disable_dynamo = real_disable
    return bitsandbytes
