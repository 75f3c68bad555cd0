"""A Python environment as pasted: `pip list`/`freeze`/`show`, `conda list`, `collect_env`,
`python -m bitsandbytes`, `transformers env`, and the version lines of an issue template."""
from __future__ import annotations

import re
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


def parse(doc: Doc) -> PyEnv:
    out = PyEnv()
    lines = doc.clean_lines()
    in_gpus = False
    show_name: tuple[str, int] | None = None

    def read(fact: str, value: Any, n: int) -> None:
        out.readings.append(Reading(fact, value, doc.name, n, doc.text_of(n)))

    def package(raw: str, version: str, n: int) -> None:
        name = _name(raw)
        if name and name not in out.packages:
            out.packages[name] = version
            read(f"packages.{name}", version, n)

    for n, line in lines:
        m = CE_TORCH.match(line)
        if m:
            out.torch_version = out.torch_version or m[1]
            read("torch.version", m[1], n)
            package("torch", m[1], n)
            continue
        m = CE_BUILD.match(line)
        if m:
            value = m[1].strip()
            if re.match(r"\d+\.\d+", value):
                out.torch_cuda = re.match(r"\d+\.\d+", value)[0]  # type: ignore[index]
                read("torch.cuda", out.torch_cuda, n)
            elif value.startswith(("None", "Could not")):
                out.torch_cpu = True   # collect_env prints torch.version.cuda; None is a CPU build
                read("torch.cuda", None, n)
            continue
        m = CE_AVAILABLE.match(line)
        if m:
            out.cuda_available = m[1].lower() in ("true", "yes")
            read("torch.cuda_available", out.cuda_available, n)
            continue
        m = CE_RUNTIME.match(line)
        if m:
            out.toolkit = m[1]
            read("toolkit.version", m[1], n)
            continue
        m = CE_DRIVER.match(line)
        if m:
            out.driver_version = m[1]
            read("driver.version", m[1], n)
            continue
        m = CE_PYTHON.match(line)
        if m:
            out.python = m[1]
            continue
        head = CE_GPU_HEAD.match(line)
        if head or in_gpus:
            rest = head[1] if head else line
            g = CE_GPU.match(rest) if rest else None
            if g:
                out.gpus.append(g[2])
                read(f"gpu.{g[1]}", {"name": g[2]}, n)
                in_gpus = True
                continue
            in_gpus = bool(head and not rest)
            if head:
                continue
        m = SHOW_NAME.match(line)
        if m:
            show_name = (m[1], n)
            continue
        m = SHOW_VERSION.match(line)
        if m and show_name is not None:
            package(show_name[0], m[1], n)
            show_name = None
            continue
        m = LABELLED.match(line)
        if m:
            raw = "torch" if m[1].lower() == "pytorch" else m[1]
            package(raw, m[2], n)
            if m[3]:
                out.cuda_available = m[3] == "True"
            continue
        m = CONDA_ROW.match(line)
        if m and _name(m[1]):
            name = _name(m[1])
            build = m[3] or ""
            package(m[1], m[2], n)
            if name == "torch":
                c = re.search(r"cuda(\d+)\.(\d+)", build)
                if c:
                    out.torch_cuda = out.torch_cuda or f"{c[1]}.{c[2]}"
                    read("torch.cuda", out.torch_cuda, n)
                elif "cpu" in build:
                    out.torch_cpu = True
                    read("torch.cuda", None, n)
            continue
        m = PIP_LIST.match(line)
        if m:
            package(m[1], m[2], n)
            continue
        for f in FREEZE.finditer(line):
            package(f[1], f[2], n)

    flat = doc.flat
    for m in EGG.finditer(flat):
        package(m[1], m[2], doc.line_of(m.start()))
    b = BNB_TORCH_CUDA.search(flat)
    if b and out.torch_cuda is None:
        digits = b[1] or b[2]
        out.torch_cuda = f"{int(digits[:-1])}.{int(digits[-1])}"
        read("torch.cuda", out.torch_cuda, doc.line_of(b.start()))
    torch = out.packages.get("torch")
    if torch and out.torch_version is None:
        out.torch_version = torch
        read("torch.version", torch, next((r.line for r in out.readings if r.fact == "packages.torch"), 1))
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
            read("torch.cuda_available", out.cuda_available, doc.line_of(a.start()))
    return out
