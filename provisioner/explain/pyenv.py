"""A Python environment as pasted: `pip list`/`freeze`/`show`, `conda list`, `collect_env`,
`python -m bitsandbytes`, `transformers env`, and the version lines of an issue template."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from provisioner.explain.reading import Reading
from provisioner.explain.text import Doc

#: The distributions whose versions decide a verdict (conda's `pytorch` is torch).
PACKAGES = ("torch", "torchvision", "torchaudio", "transformers", "accelerate", "bitsandbytes",
            "flash-attn", "vllm", "xformers", "triton", "auto-gptq", "autoawq")
_ALIASES = {"pytorch": "torch", "flash_attn": "flash-attn", "auto_gptq": "auto-gptq"}
_V = r"(\d+(?:\.\d+){1,3}(?:(?:\.?(?:post|dev|rc|a|b)\d*)|\+[\w.]+)*)"

PIP_LIST = re.compile(r"^\[?(?:pip3?\]\s*)?([A-Za-z][\w.-]*)\s+" + _V + r"(?:\s+\S.*)?$")
FREEZE = re.compile(r"(?:^|\s|\])([A-Za-z][\w.-]*)\s*==\s*" + _V)
SHOW_NAME = re.compile(r"^Name:\s*([A-Za-z][\w.-]*)\s*$")
SHOW_VERSION = re.compile(r"^Version:\s*" + _V + r"\s*$")
CONDA_ROW = re.compile(r"^(?:\[conda\]\s*)?([A-Za-z][\w.-]*)\s+" + _V + r"\s+(\S+)(?:\s+(\S+))?\s*$")
LABELLED = re.compile(r"^[-*\s]*(PyTorch|torch|transformers|accelerate|bitsandbytes)"
                      r"(?:\s+version)?(?:\s*\(GPU\?\))?\s*[:=]{1,2}\s*v?" + _V + r"(?:\s*\((True|False)\))?",
                      re.IGNORECASE)

CE_TORCH = re.compile(r"^PyTorch version:\s*" + _V)
CE_BUILD = re.compile(r"^CUDA used to build PyTorch:\s*(\S+(?: \S+)?)")
CE_AVAILABLE = re.compile(r"^Is CUDA available:\s*(True|False|Yes|No)", re.IGNORECASE)
CE_RUNTIME = re.compile(r"^CUDA runtime version:\s*(\d+\.\d+)(?:\.\d+)?")
CE_DRIVER = re.compile(r"^Nvidia driver version:\s*(\d+(?:\.\d+)+)", re.IGNORECASE)
CE_PYTHON = re.compile(r"^Python version:\s*(\d+\.\d+(?:\.\d+)?)")
CE_GPU = re.compile(r"(?:^GPU models and configuration:\s*)?GPU (\d+):\s*(.+?)\s*(?:\(UUID:.*)?$")
CE_GPU_HEAD = re.compile(r"^GPU models and configuration:\s*(.*)$")
BNB_TORCH_CUDA = re.compile(r"CUDA_VERSION=(\d{2,3})\b|cuda_version_string='(\d{2,3})'")
EGG = re.compile(r"[/\\](torch|bitsandbytes|transformers|accelerate)-(\d+\.\d+(?:\.\d+)?(?:\.?dev\d+)?)"
                 r"(?:[-+][\w.]*)?-py\d")
AVAILABLE_CALL = re.compile(r"is_available\(\)\s*(?:->|=|:|\n|\s)\s*(True|False)\b")


@dataclass
class PyEnv:
    packages: dict[str, str] = field(default_factory=dict)
    torch_version: str | None = None
    torch_cuda: str | None = None
    torch_cpu: bool = False
    cuda_available: bool | None = None
    python: str | None = None
    driver_version: str | None = None
    toolkit: str | None = None
    gpus: list[str] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)

    @property
    def seen(self) -> bool:
        return bool(self.packages or self.torch_version or self.torch_cuda or self.torch_cpu
                    or self.cuda_available is not None)


def _name(raw: str) -> str | None:
    n = raw.lower().replace("_", "-")
    n = _ALIASES.get(raw.lower(), _ALIASES.get(n, n))
    return n if n in PACKAGES else None


def _cuda_of_local(version: str) -> tuple[str | None, bool]:
    """('12.1', False) for 2.1.0+cu121, (None, True) for +cpu, (None, False) without a label."""
    m = re.search(r"\+cu(\d{2,3})\b", version)
    if m:
        digits = m[1]
        return f"{int(digits[:-1])}.{int(digits[-1])}", False
    return None, "+cpu" in version


@dataclass
class _State:
    """What `parse` carries from line to line: the result, and the open GPU block / `pip show` name."""

    doc: Doc
    out: PyEnv = field(default_factory=PyEnv)
    in_gpus: bool = False                          # inside collect_env's "GPU models and configuration"
    show_name: tuple[str, int] | None = None       # the last `pip show` Name: awaiting its Version:

    def read(self, fact: str, value: Any, n: int) -> None:
        self.out.readings.append(Reading(fact, value, self.doc.name, n, self.doc.text_of(n)))

    def package(self, raw: str, version: str, n: int) -> None:
        """Record a distribution's version; the first one a paste shows wins."""
        name = _name(raw)
        if name and name not in self.out.packages:
            self.out.packages[name] = version
            self.read(f"packages.{name}", version, n)


# Line handlers: each takes (state, line number, cleaned line) and returns True when the line is
# consumed; `parse` tries them in the order of _HANDLERS and stops at the first that consumes it.

def _ce_torch(st: _State, n: int, line: str) -> bool:
    m = CE_TORCH.match(line)
    if not m:
        return False
    st.out.torch_version = st.out.torch_version or m[1]
    st.read("torch.version", m[1], n)
    st.package("torch", m[1], n)
    return True


def _ce_build(st: _State, n: int, line: str) -> bool:
    m = CE_BUILD.match(line)
    if not m:
        return False
    value = m[1].strip()
    version = re.match(r"\d+\.\d+", value)
    if version:
        st.out.torch_cuda = version[0]
        st.read("torch.cuda", st.out.torch_cuda, n)
    elif value.startswith(("None", "Could not")):
        st.out.torch_cpu = True   # collect_env prints torch.version.cuda; None is a CPU build
        st.read("torch.cuda", None, n)
    return True


def _ce_available(st: _State, n: int, line: str) -> bool:
    m = CE_AVAILABLE.match(line)
    if not m:
        return False
    st.out.cuda_available = m[1].lower() in ("true", "yes")
    st.read("torch.cuda_available", st.out.cuda_available, n)
    return True


def _ce_runtime(st: _State, n: int, line: str) -> bool:
    m = CE_RUNTIME.match(line)
    if not m:
        return False
    st.out.toolkit = m[1]
    st.read("toolkit.version", m[1], n)
    return True


def _ce_driver(st: _State, n: int, line: str) -> bool:
    m = CE_DRIVER.match(line)
    if not m:
        return False
    st.out.driver_version = m[1]
    st.read("driver.version", m[1], n)
    return True


def _ce_python(st: _State, n: int, line: str) -> bool:
    m = CE_PYTHON.match(line)
    if not m:
        return False
    st.out.python = m[1]
    return True


def _ce_gpus(st: _State, n: int, line: str) -> bool:
    """collect_env's GPU block: the heading (with GPU 0 on it or not) and the `GPU N: name` lines after it."""
    head = CE_GPU_HEAD.match(line)
    if not (head or st.in_gpus):
        return False
    rest = head[1] if head else line
    g = CE_GPU.match(rest) if rest else None
    if g:
        st.out.gpus.append(g[2])
        st.read(f"gpu.{g[1]}", {"name": g[2]}, n)
        st.in_gpus = True
        return True
    st.in_gpus = bool(head and not rest)      # a bare heading: the GPUs follow on the next lines
    return bool(head)


def _show_name(st: _State, n: int, line: str) -> bool:
    m = SHOW_NAME.match(line)
    if not m:
        return False
    st.show_name = (m[1], n)
    return True


def _show_version(st: _State, n: int, line: str) -> bool:
    m = SHOW_VERSION.match(line)
    if not (m and st.show_name is not None):
        return False
    st.package(st.show_name[0], m[1], n)
    st.show_name = None
    return True


def _labelled(st: _State, n: int, line: str) -> bool:
    m = LABELLED.match(line)
    if not m:
        return False
    raw = "torch" if m[1].lower() == "pytorch" else m[1]
    st.package(raw, m[2], n)
    if m[3]:
        st.out.cuda_available = m[3] == "True"
    return True


def _conda_row(st: _State, n: int, line: str) -> bool:
    m = CONDA_ROW.match(line)
    name = _name(m[1]) if m else None
    if not (m and name):
        return False
    build = m[3] or ""
    st.package(m[1], m[2], n)
    if name == "torch":
        c = re.search(r"cuda(\d+)\.(\d+)", build)
        if c:
            st.out.torch_cuda = st.out.torch_cuda or f"{c[1]}.{c[2]}"
            st.read("torch.cuda", st.out.torch_cuda, n)
        elif "cpu" in build:
            st.out.torch_cpu = True
            st.read("torch.cuda", None, n)
    return True


def _pip_list(st: _State, n: int, line: str) -> bool:
    m = PIP_LIST.match(line)
    if not m:
        return False
    st.package(m[1], m[2], n)
    return True


def _freeze(st: _State, n: int, line: str) -> bool:
    for f in FREEZE.finditer(line):
        st.package(f[1], f[2], n)
    return True


_HANDLERS: tuple[Callable[[_State, int, str], bool], ...] = (
    _ce_torch, _ce_build, _ce_available, _ce_runtime, _ce_driver, _ce_python, _ce_gpus,
    _show_name, _show_version, _labelled, _conda_row, _pip_list, _freeze)


def _read_flat(st: _State) -> None:
    """What only the flat text shows: egg paths, bitsandbytes' CUDA_VERSION, and torch from its package."""
    doc, out = st.doc, st.out
    flat = doc.flat
    for m in EGG.finditer(flat):
        st.package(m[1], m[2], doc.line_of(m.start()))
    b = BNB_TORCH_CUDA.search(flat)
    if b and out.torch_cuda is None:
        digits = b[1] or b[2]
        out.torch_cuda = f"{int(digits[:-1])}.{int(digits[-1])}"
        st.read("torch.cuda", out.torch_cuda, doc.line_of(b.start()))
    torch = out.packages.get("torch")
    if torch and out.torch_version is None:
        out.torch_version = torch
        st.read("torch.version", torch, next((r.line for r in out.readings if r.fact == "packages.torch"), 1))
    if out.torch_version:
        cuda, cpu = _cuda_of_local(out.torch_version)
        if cuda and out.torch_cuda is None:
            out.torch_cuda = cuda
        if cpu:
            out.torch_cpu = True
    if out.cuda_available is None:
        a = AVAILABLE_CALL.search(flat)
        if a:
            out.cuda_available = a[1] == "True"
            st.read("torch.cuda_available", out.cuda_available, doc.line_of(a.start()))


def parse(doc: Doc) -> PyEnv:
    st = _State(doc)
    for n, line in doc.clean_lines():
        for handler in _HANDLERS:
            if handler(st, n, line):
                break
    _read_flat(st)
    return st.out
