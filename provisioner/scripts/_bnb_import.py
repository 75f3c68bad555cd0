"""Import bitsandbytes without paying for torch.compile at import time (run by the target env's python).

bitsandbytes 0.46+ wraps several of its default kernels in `torch.compile(...)` as it is imported
(`_try_torch_compile` in bitsandbytes/backends/default/ops.py). Building those wrappers imports
torch._dynamo and torch._inductor: 1.7 s of a 1.75 s `import bitsandbytes` on the 2-core CI kind
(`python -X importtime`), more than importing torch itself. Compiling only ever happens at a
wrapper's first call, and bitsandbytes falls back to the plain function on any compile error,
whether torch.compile raises when the wrapper is built or when it is called. So handing it a
wrapper that calls the real torch.compile on first use changes no result; it only moves the
torch._dynamo import to the first call of a compiled kernel (none, for 4-bit inference on the
CPU backend or with the CUDA library). Standard library only at module level, like its siblings.
"""
from __future__ import annotations

import functools
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


def import_bitsandbytes(torch: Any) -> Any:
    """`import bitsandbytes` with torch.compile deferred while its modules load; restored after."""
    real = torch.compile
    torch.compile = _deferred(real)
    try:
        import bitsandbytes
    finally:
        torch.compile = real
    return bitsandbytes
