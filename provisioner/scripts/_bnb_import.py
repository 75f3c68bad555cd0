"""Import bitsandbytes without building torch.compile wrappers at import time (run by the target env's python).

bitsandbytes 0.46+ wraps several of its default kernels in `torch.compile(...)` as it is imported
(`_try_torch_compile` in bitsandbytes/backends/default/ops.py). Building those wrappers imports
torch._dynamo and torch._inductor: `import bitsandbytes` took 1.75 s on the 2-core CI kind
(`python -X importtime`), more than importing torch. torch._dynamo is imported anyway at the first
call of any bitsandbytes op (torch.library wraps a custom op's Python kernel in
torch._disable_dynamo, which imports it then), so that second stays, in the probe as in the user's
own 4-bit load; torch._inductor (about 0.7 s) is needed only when something is really compiled.
Compiling only ever happens at a wrapper's first call, and bitsandbytes falls back to the plain
function on any compile error, whether torch.compile raises when the wrapper is built or when it is
called. So a wrapper that calls the real torch.compile at its first use changes no result; where
nothing is compiled (4-bit inference with the CPU backend or the CUDA library) it saves the
inductor import. Standard library only at module level, like its siblings.
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
