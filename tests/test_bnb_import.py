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

    torch = types.ModuleType("torch")
    torch.compile = compile  # type: ignore[attr-defined]
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
    real = torch.compile
    (tmp_path / "bitsandbytes.py").write_text("raise OSError('libbitsandbytes_cuda.so: cannot open')\n")
    with pytest.raises(OSError, match="cannot open"):
        module.import_bitsandbytes(torch)
    assert torch.compile is real
