"""scripts/_bnb_import.py: bitsandbytes' import-time torch.compile wrappers are built at their first call.

A stand-in torch and bitsandbytes, because what is checked is the order of calls (the real pair only
shows it as seconds): a package that calls torch.compile while it is imported, as bitsandbytes'
`_try_torch_compile` does, and a torch.compile that records when it is called.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "provisioner" / "scripts" / "_bnb_import.py"

FAKE_BNB = '''
import torch

def _try_torch_compile(func=None, **kw):          # as bitsandbytes/backends/default/ops.py has it
    def decorator(fn):
        try:
            compiled = torch.compile(fn, **kw)
            def wrapper(*a, **k):
                try:
                    return compiled(*a, **k)
                except Exception:
                    return fn(*a, **k)
            return wrapper
        except Exception:
            return fn
    return decorator if func is None else decorator(func)

@_try_torch_compile(dynamic=False)
def double(x):
    return 2 * x

@_try_torch_compile
def triple(x):
    return 3 * x

@torch._disable_dynamo                              # as torch.library wraps a registered kernel
def kernel(x):
    return x + 1

@torch._disable_dynamo(recursive=False)
def other_kernel(x):
    return x - 1
'''


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[str], Any]]:
    calls: list[str] = []

    def compile(model: Any = None, **kwargs: Any) -> Any:
        calls.append(f"compile {model.__name__} {kwargs}")
        if kwargs.get("broken"):
            raise RuntimeError("torch.compile is not supported here")

        def compiled(*args: Any) -> Any:
            calls.append(f"compiled {model.__name__}")
            return model(*args)

        return compiled

    def disable_dynamo(fn: Any = None, recursive: bool = True) -> Any:   # torch._disable_dynamo's shape
        if fn is None:
            return lambda f: disable_dynamo(f, recursive)

        def inner(*args: Any) -> Any:
            calls.append(f"dynamo-disabled {fn.__name__} recursive={recursive}")
            return fn(*args)

        return inner

    torch = types.ModuleType("torch")
    torch.compile = compile  # type: ignore[attr-defined]
    torch._disable_dynamo = disable_dynamo  # type: ignore[attr-defined]
    (tmp_path / "bitsandbytes.py").write_text(FAKE_BNB)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    spec = importlib.util.spec_from_file_location("_bnb_import", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield torch, calls, module
    sys.modules.pop("bitsandbytes", None)


def test_the_real_compile_runs_at_the_first_call_not_at_import(fake: tuple[Any, list[str], Any]) -> None:
    torch, calls, module = fake
    real = torch.compile
    bnb = module.import_bitsandbytes(torch)
    assert calls == []                                   # the import built no compiled function
    assert torch.compile is real                         # and torch.compile is torch's again
    assert bnb.double(4) == 8 and bnb.double(5) == 10
    assert calls == ["compile double {'dynamic': False}", "compiled double", "compiled double"]
    assert bnb.triple(2) == 6 and calls[-2:] == ["compile triple {}", "compiled triple"]


def test_kernels_skip_the_dynamo_wrapper_only_while_dynamo_is_not_loaded(
        fake: tuple[Any, list[str], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    torch, calls, module = fake
    real = torch._disable_dynamo
    monkeypatch.delitem(sys.modules, "torch._dynamo", raising=False)
    bnb = module.import_bitsandbytes(torch)
    assert torch._disable_dynamo is real                 # torch's own again after the import
    assert bnb.kernel(1) == 2 and bnb.other_kernel(1) == 0
    assert calls == []                                   # called directly: nothing imported dynamo
    monkeypatch.setitem(sys.modules, "torch._dynamo", types.ModuleType("torch._dynamo"))
    assert bnb.kernel(1) == 2 and bnb.other_kernel(1) == 0
    assert calls == ["dynamo-disabled kernel recursive=True", "dynamo-disabled other_kernel recursive=False"]


def test_a_compile_error_still_falls_back_to_the_plain_function(fake: tuple[Any, list[str], Any],
                                                              tmp_path: Path) -> None:
    torch, calls, module = fake
    (tmp_path / "bitsandbytes.py").write_text(FAKE_BNB.replace("dynamic=False", "broken=True"))
    bnb = module.import_bitsandbytes(torch)
    assert bnb.double(4) == 8                            # bitsandbytes' own fallback, at the call
    assert calls == ["compile double {'broken': True}"]


def test_torch_compile_is_restored_when_the_import_fails(fake: tuple[Any, list[str], Any],
                                                         tmp_path: Path) -> None:
    torch, _, module = fake
    real, disable = torch.compile, torch._disable_dynamo
    (tmp_path / "bitsandbytes.py").write_text("raise OSError('libbitsandbytes_cuda.so: cannot open')\n")
    with pytest.raises(OSError, match="cannot open"):
        module.import_bitsandbytes(torch)
    assert torch.compile is real and torch._disable_dynamo is disable


REAL_CHECK = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from _bnb_import import import_bitsandbytes

real_disable = torch._disable_dynamo
bnb = import_bitsandbytes(torch)
import bitsandbytes.functional as F

out = {"disable_restored": torch._disable_dynamo is real_disable}
gen = torch.Generator().manual_seed(0)
weight, x = torch.randn(64, 128, generator=gen), torch.randn(4, 128, generator=gen)
q, state = F.quantize_4bit(weight, quant_type="nf4")
before = bnb.matmul_4bit(x, q.t(), quant_state=state)
out["dynamo_after_op"] = "torch._dynamo" in sys.modules

# once torch._dynamo is loaded, the op runs under torch's own dynamo-disable wrapper: it is called
# from a function compiled by the real torch.compile (eager backend: no C compiler needed) and
# gives the same numbers
import torch._dynamo
compiled = torch.compile(lambda a: bnb.matmul_4bit(a, q.t(), quant_state=state), backend="eager")
after = compiled(x)
out["same"] = bool(torch.equal(before, after))
out["rel_error"] = float((before - x @ weight.t()).norm() / (x @ weight.t()).norm())
print(json.dumps(out))
'''


@pytest.mark.slow
def test_real_bitsandbytes_ops_run_without_loading_dynamo_and_under_it_once_loaded(
        chat_env_python: Path) -> None:
    """The real torch 2.13 + bitsandbytes: the first 4-bit op no longer imports torch._dynamo (about
    1 s on the CI kind), and the same op inside a torch.compile'd function still works after it."""
    import json
    import subprocess

    done = subprocess.run([str(chat_env_python), "-c", REAL_CHECK, str(SCRIPT.parent)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["disable_restored"] is True
    assert out["dynamo_after_op"] is False
    assert out["same"] is True
    assert 0 < out["rel_error"] < 0.25
