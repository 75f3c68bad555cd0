"""Report a Python environment's torch / bitsandbytes stack as one JSON object (run by that env's python).

Standalone: it imports nothing from provisioner and only the stdlib at the top, because it runs
in the environment under test, which need not have provisioner (or even torch) installed; its one
sibling, _bnb_import, imports bitsandbytes without building torch.compile wrappers at import time and
without loading torch._dynamo at its first 4-bit op (see there).
Each section is guarded, so a broken torch is reported instead of hiding everything else.
Usage: python probe_env.py [--metadata-only]   (smoke_chat.py --probe-out runs main() in its process)
"""
from __future__ import annotations

import io
import json
import logging
import os
import platform
import sys
import time
import traceback
import warnings
from typing import Any

PROBE_VERSION = 1
PACKAGES = ("torch", "torchvision", "torchaudio", "transformers", "accelerate", "bitsandbytes",
            "safetensors", "tokenizers", "huggingface-hub", "numpy", "triton")
#: 4-bit check size: big enough for several 64-value NF4 blocks per row, small enough to be instant.
MATMUL_SHAPE = (8, 256, 128)    # batch, in_features, out_features
#: NF4 on Gaussian weights gives a relative error near 0.1; a broken kernel gives ~1 or NaN.
MATMUL_MAX_REL_ERROR = 0.25


def _error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text[:2000]


def _tail(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])[-3000:]


def _version(name: str) -> str | None:
    """A distribution's version from its metadata (None: not installed, or no metadata to read)."""
    try:
        from importlib import metadata
        return metadata.version(name)
    except Exception:  # not installed; Python < 3.8 has no importlib.metadata
        return None


def packages() -> dict[str, Any]:
    """Versions from distribution metadata: works when the package itself cannot be imported."""
    return {name: _version(name) for name in PACKAGES}


#: The stack whose declared requirements are reported: a requirement they declare and the env breaks
#: (tokenizers for transformers, sympy for torch._dynamo) fails the user's load, not this probe.
REQUIRERS = ("torch", "transformers", "accelerate", "bitsandbytes")


def requirements() -> dict[str, Any]:
    """Each stack package's Requires-Dist lines, and the installed version (or None) of every
    distribution they name. Judged by provision (env.requirements), which has `packaging`."""
    import re
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return {}
    declared: dict[str, Any] = {}
    installed: dict[str, Any] = {}
    for name in REQUIRERS:
        try:
            lines = list(metadata.requires(name) or [])
        except Exception:
            continue                                   # not installed: env.packages says so
        # a line only for an extra nobody asked for here is left out (transformers has hundreds)
        declared[name] = [line for line in lines if not re.search(r"\bextra\s*==", line)]
        for line in declared[name]:
            found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
            if found and found.group(1) not in installed:
                installed[found.group(1)] = _version(found.group(1))
    return {"declared": declared, "installed": installed}


def python_info() -> dict[str, Any]:
    return {"version": platform.python_version(), "executable": sys.executable,
            "prefix": sys.prefix, "implementation": platform.python_implementation(),
            "machine": platform.machine(), "platform": sys.platform, "system": platform.system()}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage()[:2000])
        except Exception:
            pass


def torch_info() -> tuple[dict[str, Any], Any]:
    out: dict[str, Any] = {"imported": False, "error": None, "warnings": []}
    t0 = time.monotonic()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch
        out["warnings"] += [str(w.message)[:2000] for w in caught]
    except BaseException as e:  # ImportError, OSError from a missing .so, even SystemExit
        out["error"] = _error(e)
        out["traceback"] = _tail(e)
        out["import_seconds"] = round(time.monotonic() - t0, 3)
        return out, None
    out["import_seconds"] = round(time.monotonic() - t0, 3)
    out["imported"] = True
    out["version"] = getattr(torch, "__version__", None)
    version = getattr(torch, "version", None)
    out["cuda"] = getattr(version, "cuda", None)
    out["hip"] = getattr(version, "hip", None)
    out["build"] = "rocm" if out["hip"] else ("cuda" if out["cuda"] else "cpu")
    try:
        out["cudnn"] = torch.backends.cudnn.version() if out["cuda"] else None
    except Exception as e:
        out["cudnn"] = None
        out["cudnn_error"] = _error(e)
    t1 = time.monotonic()
    try:
        # Initialising CUDA is where "driver too old" and friends surface, as warnings.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["cuda_available"] = bool(torch.cuda.is_available())
            out["device_count"] = int(torch.cuda.device_count()) if out["cuda_available"] else 0
        out["warnings"] += [str(w.message)[:2000] for w in caught]
    except Exception as e:
        out["cuda_available"] = False
        out["device_count"] = 0
        out["cuda_error"] = _error(e)
    out["cuda_init_seconds"] = round(time.monotonic() - t1, 3)
    try:
        out["arch_list"] = list(torch.cuda.get_arch_list())
    except Exception as e:
        out["arch_list"] = []
        out["arch_list_error"] = _error(e)
    devices = []
    for i in range(out.get("device_count") or 0):
        dev: dict[str, Any] = {"index": i}
        try:
            dev["name"] = torch.cuda.get_device_name(i)
            dev["capability"] = list(torch.cuda.get_device_capability(i))
            free, total = torch.cuda.mem_get_info(i)
            dev["memory_free"], dev["memory_total"] = int(free), int(total)
        except Exception as e:
            dev["error"] = _error(e)
        devices.append(dev)
    out["devices"] = devices
    if out.get("cuda_available"):
        try:
            # A real kernel launch: "no kernel image is available" only shows up here.
            x = torch.ones(4, device="cuda")
            out["kernel_ok"] = float((x * 2).sum().item()) == 8.0
        except Exception as e:
            out["kernel_ok"] = False
            out["kernel_error"] = _error(e)
    return out, torch


def bnb_info(torch: Any) -> dict[str, Any]:
    capture = _Capture()
    logger = logging.getLogger("bitsandbytes")
    logger.addHandler(capture)
    try:
        return _bnb_info(torch, capture)
    finally:
        # the smoke chat may run next in this process: it collects bitsandbytes' log lines itself
        logger.removeHandler(capture)


def _bnb_info(torch: Any, capture: _Capture) -> dict[str, Any]:
    out: dict[str, Any] = {"imported": False, "error": None, "log": []}
    t0 = time.monotonic()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from _bnb_import import import_bitsandbytes

            bnb = import_bitsandbytes(torch)
        out["log"] += [str(w.message)[:2000] for w in caught]
    except BaseException as e:
        out["error"] = _error(e)
        out["traceback"] = _tail(e)
        out["log"] = _unique(out["log"] + capture.lines)
        out["import_seconds"] = round(time.monotonic() - t0, 3)
        return out
    out["import_seconds"] = round(time.monotonic() - t0, 3)
    out["imported"] = True
    out["version"] = getattr(bnb, "__version__", None)
    try:
        from bitsandbytes import cextension
        lib = getattr(cextension, "lib", None)
        out["backend"] = getattr(cextension, "BNB_BACKEND", None)
        # vars(), not getattr(): the library wrappers answer any missing attribute with a stub.
        attrs = vars(lib) if lib is not None and hasattr(lib, "__dict__") else {}
        dll = attrs.get("_lib")
        # ErrorHandlerMockBNBNativeLibrary (0.46+) stands in when the native library failed to load.
        mock_error = attrs.get("error_msg")
        if mock_error is None and type(lib).__name__.startswith("ErrorHandlerMock"):
            mock_error = "bitsandbytes native library not loaded"
        out["native"] = dll is not None and mock_error is None
        out["library"] = os.path.basename(getattr(dll, "_name", "") or "") or None
        out["compiled_with_cuda"] = getattr(type(lib), "compiled_with_cuda", False) is True
        if mock_error:
            out["native_error"] = str(mock_error)[:2000]
    except Exception as e:
        out["native"] = False
        out["native_error"] = _error(e)
    out["matmul"] = matmul_4bit(torch, bnb)
    out["log"] = _unique(out["log"] + capture.lines)
    return out


def _unique(lines: list[str]) -> list[str]:
    seen: list[str] = []
    for line in lines:
        if line not in seen:
            seen.append(line)
    return seen[:20]


def matmul_4bit(torch: Any, bnb: Any) -> dict[str, Any]:
    """Quantize a weight to NF4 and multiply on the device torch would use; compare with fp32."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict[str, Any] = {"device": device, "ok": False, "error": None}
    t0 = time.monotonic()
    try:
        import bitsandbytes.functional as F

        gen = torch.Generator().manual_seed(0)
        batch, n_in, n_out = MATMUL_SHAPE
        weight = torch.randn(n_out, n_in, generator=gen)
        x = torch.randn(batch, n_in, generator=gen)
        reference = x @ weight.t()
        dtype = torch.float16 if device == "cuda" else torch.float32
        qweight, state = F.quantize_4bit(weight.to(device=device, dtype=dtype), quant_type="nf4")
        result = bnb.matmul_4bit(x.to(device=device, dtype=dtype), qweight.t(), quant_state=state)
        if device == "cuda":
            torch.cuda.synchronize()
        result = result.float().cpu()
        rel = float((result - reference).norm() / reference.norm())
        out["rel_error"] = round(rel, 5) if rel == rel else None   # NaN -> None
        out["ok"] = rel == rel and rel < MATMUL_MAX_REL_ERROR
        if not out["ok"]:
            out["error"] = f"4-bit result differs from fp32 by {rel:.3f} (limit {MATMUL_MAX_REL_ERROR})"
    except BaseException as e:
        out["error"] = _error(e)
        out["traceback"] = _tail(e)
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


def main(argv: list[str]) -> dict[str, Any]:
    t0 = time.monotonic()
    report: dict[str, Any] = {"probe": PROBE_VERSION, "python": python_info(), "packages": packages(),
                              "requirements": requirements(),
                    "environ": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "BNB_CUDA_VERSION",
                                                           "LD_LIBRARY_PATH", "CUDA_HOME")
                                if k in os.environ}}
    if "--metadata-only" not in argv:
        torch = None
        try:
            report["torch"], torch = torch_info()
        except BaseException as e:
            report["torch"] = {"imported": False, "error": _error(e)}
        if torch is not None and report["packages"].get("bitsandbytes"):
            try:
                report["bitsandbytes"] = bnb_info(torch)
            except BaseException as e:
                report["bitsandbytes"] = {"imported": False, "error": _error(e)}
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report


if __name__ == "__main__":
    # Libraries print banners and warnings to fd 1; keep stdout for the one JSON document by
    # pointing fd 1 at stderr while probing, then writing to the saved original.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(2), "wb"), write_through=True)
    try:
        result = main(sys.argv[1:])
    finally:
        sys.stdout.flush()
    with os.fdopen(saved, "w") as real_stdout:
        real_stdout.write(json.dumps(result) + "\n")
    # Skip interpreter teardown: CUDA / bitsandbytes atexit hooks can hang or crash after the report.
    os._exit(0)
