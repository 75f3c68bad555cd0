"""Will it fit: weights, KV cache, workspace and CUDA context per precision against free GPU memory.

Pure arithmetic on a `ModelSpec` (modelinfo.py); the formulas and their sources:

weights (bitsandbytes only replaces the nn.Linear layers inside the decoder blocks; embeddings,
lm_head (counted once when tied), norms and biases stay in the 16-bit compute dtype; transformers
docs/source/en/quantization/bitsandbytes.md and `get_keys_to_not_convert`):
  fp32      4 B/param;  fp16, bf16  2 B/param
  int8      1 B per quantized weight + one fp32 scale per output row (`Int8Params.SCB`, from
            `int8_vectorwise_quant`) + 2 B per other param
  nf4       0.5 B per quantized weight + one fp32 absmax per 64-weight block (`quantize_4bit`
            default blocksize 64) + the 16-entry fp32 code per layer + 2 B per other param
  nf4-dq    as nf4, but the absmax is itself quantized to 8 bit in blocks of 256 with one fp32
            absmax per block and one fp32 offset per layer, plus its 256-entry fp32 code
            (`compress_statistics=True`, i.e. `bnb_4bit_use_double_quant=True`)
  all       + the rotary embedding's two fp32 inv_freq buffers (head_dim/2 each)
KV cache    2 (K, V) x layers x kv_heads x head_dim x bytes x context x batch, bytes = 2 for a
            16-bit cache, 4 for an fp32 model (vLLM kv_cache_interface.py, Ollama GraphSize).
workspace   (inferred; no source states it for transformers) transformers' generate runs the whole
            prompt through one forward (no chunked prefill) and frees each layer's tensors before
            the next, so the peak is one decoder layer's prefill tensors:
              batch x context x (4 x hidden + (heads + 2 x kv_heads) x head_dim + 3 x intermediate) x bytes
            (residual stream and norms, q/k/v, gate/up/act of the MLP; SDPA's fused kernels keep no
            context x context score matrix) plus two fp32 copies of the last position's logits
            (generate passes `logits_to_keep=1`, then softmax): 2 x batch x vocab x 4.
CUDA context 457 MiB, what Ollama reserves per CUDA GPU for context structures
            (`cudaMinimumMemory`, discover/gpu.go v0.11.0; `MinimumMemory()` in ml/device.go).
            PyTorch measured 287 MB with lazy module loading (pytorch/pytorch#86509), so it covers
            torch's context too.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from provisioner.errors import UsageError
from provisioner.model.info import ModelSpec
from provisioner.report import Check, Status
from provisioner.units import GiB, gib

if TYPE_CHECKING:
    from provisioner.system.gpu import DriverInfo

MiB = 1 << 20
CUDA_CONTEXT_BYTES = 457 * MiB
NF4_BLOCK = 64
DQ_BLOCK = 256
#: Every precision `fit` reports, in table order.
QUANTS = ("fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq")
#: Ollama's default context on GPUs under 23 GiB (server/routes.go), the laptop case.
DEFAULT_CONTEXT = 4096
#: What `--quant` accepts; nf4 also reports its double-quant variant.
QUANT_CHOICES = ("auto", "fp16", "bf16", "int8", "nf4")


@dataclass(frozen=True)
class WeightBytes:
    """Resident weight bytes, split the way `get_memory_footprint()` does and does not count them."""

    dense: int       # unquantized parameters (all of them at fp32/fp16/bf16)
    packed: int      # quantized Linear weights (int8 / packed 4-bit); get_memory_footprint counts these
    constants: int   # quantization state (absmax, scales, codes): real memory, not parameters

    @property
    def total(self) -> int:
        return self.dense + self.packed + self.constants


@dataclass(frozen=True)
class FitOption:
    quant: str
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int          # workspace + CUDA context
    total_bytes: int
    fits: bool | None            # None: no free-memory figure to compare with
    max_context: int | None      # longest context that fits (<= max_position); None without a figure
    activation_bytes: int = 0
    cuda_context_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"quant": self.quant, "weights_bytes": self.weights_bytes, "kv_cache_bytes": self.kv_cache_bytes,
                "overhead_bytes": self.overhead_bytes, "total_bytes": self.total_bytes, "fits": self.fits,
                "max_context": self.max_context}


@dataclass(frozen=True)
class FitReport:
    model: str
    params: int
    gpu_free_bytes: int | None
    options: tuple[FitOption, ...]
    recommended: FitOption | None
    context: int
    batch: int
    advice: str | None = None    # when nothing fits: the shortfall and what would fit
    spec: ModelSpec | None = field(default=None, compare=False)

    def to_document(self) -> dict[str, Any]:
        """The `--json` document: model, params, how they were counted (params_source: "safetensors
        header", "config arithmetic" or "built-in table", and params_source_note: where the headers
        were read or why they were not used), gpu_free_bytes, options, recommended."""
        rec = None
        if self.recommended is not None:
            rec = {"quant": self.recommended.quant, "max_context": self.recommended.max_context}
        return {"model": self.model, "params": self.params,
                "params_source": self.spec.params_source if self.spec else None,
                "params_source_note": self.spec.source_note if self.spec else None,
                "gpu_free_bytes": self.gpu_free_bytes,
                "options": [o.to_dict() for o in self.options], "recommended": rec}


def _elem_bytes(quant: str) -> int:
    """Bytes of a compute-dtype element: fp32 models compute (and cache) in fp32, the rest in 16 bit."""
    return 4 if quant == "fp32" else 2


def weight_bytes(spec: ModelSpec, quant: str) -> WeightBytes:
    if quant not in QUANTS:
        raise UsageError(f"unknown precision '{quant}'", hint="use one of: " + ", ".join(QUANTS))
    buffers = 2 * (spec.head_dim // 2) * 4
    if quant in ("fp32", "fp16", "bf16"):
        return WeightBytes(dense=spec.params * _elem_bytes(quant) + buffers, packed=0, constants=0)
    q, tensors = spec.quantizable_params, max(spec.quantizable_tensors, 1)
    dense = spec.other_params * 2 + buffers
    if quant == "int8":
        return WeightBytes(dense=dense, packed=q, constants=spec.quantizable_rows * 4)
    blocks = math.ceil(q / NF4_BLOCK)
    code = tensors * 16 * 4
    if quant == "nf4":
        return WeightBytes(dense=dense, packed=math.ceil(q / 2), constants=blocks * 4 + code)
    per_tensor = blocks / tensors
    nested = tensors * math.ceil(per_tensor / DQ_BLOCK)
    constants = blocks * 1 + nested * 4 + tensors * (4 + DQ_BLOCK * 4) + code
    return WeightBytes(dense=dense, packed=math.ceil(q / 2), constants=constants)


def kv_bytes_per_token(spec: ModelSpec, elem_bytes: int = 2) -> int:
    """2 (K and V) x layers x kv_heads x head_dim x bytes: grouped-query attention counts right."""
    return 2 * spec.layers * spec.kv_heads * spec.head_dim * elem_bytes


def activation_bytes_per_token(spec: ModelSpec, elem_bytes: int = 2) -> int:
    """One decoder layer's prefill tensors per prompt token (see the module docstring)."""
    width = 4 * spec.hidden + (spec.heads + 2 * spec.kv_heads) * spec.head_dim + 3 * spec.intermediate
    return width * elem_bytes


def _logits_bytes(spec: ModelSpec, batch: int) -> int:
    return 2 * batch * spec.vocab * 4


def estimate(spec: ModelSpec, quant: str, *, context: int, batch: int = 1,
             gpu_free_bytes: int | None = None) -> FitOption:
    """One precision's memory need for `context` tokens x `batch` sequences (and its verdict)."""
    if context < 1 or batch < 1:
        raise UsageError(f"context and batch must be at least 1 (got {context} and {batch})",
                         hint="pass --context N and --batch N with N >= 1")
    elem = _elem_bytes(quant)
    weights = weight_bytes(spec, quant).total
    kv = kv_bytes_per_token(spec, elem) * context * batch
    act = activation_bytes_per_token(spec, elem) * context * batch + _logits_bytes(spec, batch)
    overhead = act + CUDA_CONTEXT_BYTES
    total = weights + kv + overhead
    fits = None if gpu_free_bytes is None else total <= gpu_free_bytes
    return FitOption(quant=quant, weights_bytes=weights, kv_cache_bytes=kv, overhead_bytes=overhead,
                     total_bytes=total, fits=fits,
                     max_context=None if gpu_free_bytes is None else max_context(spec, quant, batch=batch,
                                                                                 gpu_free_bytes=gpu_free_bytes),
                     activation_bytes=act, cuda_context_bytes=CUDA_CONTEXT_BYTES)


def max_context(spec: ModelSpec, quant: str, *, batch: int, gpu_free_bytes: int) -> int:
    """The longest context (<= max_position) whose total fits; 0 when not even one token does."""
    elem = _elem_bytes(quant)
    fixed = weight_bytes(spec, quant).total + CUDA_CONTEXT_BYTES + _logits_bytes(spec, batch)
    per_token = batch * (kv_bytes_per_token(spec, elem) + activation_bytes_per_token(spec, elem))
    room = gpu_free_bytes - fixed
    if room < per_token:
        return 0
    longest = room // per_token
    return int(min(longest, spec.max_position)) if spec.max_position > 0 else int(longest)


def _order(prefer_bf16: bool) -> tuple[str, ...]:
    sixteen = ("bf16", "fp16") if prefer_bf16 else ("fp16", "bf16")
    # Best quality first: 16-bit, then LLM.int8(), then NF4 (double quant last: smaller, slower).
    return (*sixteen, "int8", "nf4", "nf4-dq", "fp32")


def quants_for(choice: str) -> tuple[str, ...]:
    """`--quant` value -> the precisions to report."""
    if choice == "auto":
        return QUANTS
    if choice == "nf4":
        return ("nf4", "nf4-dq")
    if choice in QUANTS:
        return (choice,)
    raise UsageError(f"unknown precision '{choice}'", hint="use one of: " + ", ".join(QUANT_CHOICES))


def fit(spec: ModelSpec, *, gpu_free_bytes: int | None, context: int | None = None, batch: int = 1,
        quants: Sequence[str] = QUANTS, prefer_bf16: bool = False) -> FitReport:
    """Every requested precision, and the best one that fits with its longest context.

    `context` defaults to DEFAULT_CONTEXT, or the model's max_position when that is shorter.
    `prefer_bf16`: the GPU computes bf16 natively (compute capability 8.0+); otherwise fp16 is
    recommended first, as the walkthrough's `bnb_4bit_compute_dtype=torch.float16` does.
    """
    if context is None:
        context = min(DEFAULT_CONTEXT, spec.max_position) if spec.max_position > 0 else DEFAULT_CONTEXT
    if context > spec.max_position > 0:
        raise UsageError(f"--context {context} is longer than {spec.name}'s {spec.max_position} positions",
                         hint=f"use --context {spec.max_position} or less")
    options = tuple(estimate(spec, q, context=context, batch=batch, gpu_free_bytes=gpu_free_bytes)
                    for q in quants)
    by_quant = {o.quant: o for o in options}
    recommended = next((by_quant[q] for q in _order(prefer_bf16) if q in by_quant and by_quant[q].fits), None)
    advice = None
    if gpu_free_bytes is not None and recommended is None:
        advice = _advice(spec, options, gpu_free_bytes=gpu_free_bytes, context=context, batch=batch,
                         prefer_bf16=prefer_bf16)
    return FitReport(model=spec.name, params=spec.params, gpu_free_bytes=gpu_free_bytes, options=options,
                     recommended=recommended, context=context, batch=batch, advice=advice, spec=spec)


def _advice(spec: ModelSpec, options: Sequence[FitOption], *, gpu_free_bytes: int, context: int, batch: int,
            prefer_bf16: bool) -> str:
    by_quant = {o.quant: o for o in options}
    for q in _order(prefer_bf16):
        o = by_quant.get(q)
        if o is not None and o.max_context:
            return f"{q} fits with up to {o.max_context} tokens of context (--context {o.max_context})"
    smallest = min(options, key=lambda o: o.total_bytes)
    short = smallest.total_bytes - gpu_free_bytes
    text = (f"even {smallest.quant} needs {gib(smallest.total_bytes)} at {context} tokens, "
            f"{gib(short)} more than the {gib(gpu_free_bytes)} free")
    from provisioner.model import info as modelinfo

    smaller = []
    for entry in modelinfo.table():
        if entry.spec.params >= spec.params:
            continue
        o = estimate(entry.spec, "nf4", context=min(context, entry.spec.max_position), batch=batch,
                     gpu_free_bytes=gpu_free_bytes)
        if o.fits:
            smaller.append((entry.spec.params, entry.name))
    if smaller:
        best = sorted(smaller)[-1][1]
        text += f"; {best} fits in nf4 (provision model fit {best})"
    return text


@dataclass(frozen=True)
class GpuMemory:
    """Free memory to fit against, where it came from, and whether bf16 is native."""

    free_bytes: int | None
    source: str
    prefer_bf16: bool = False


#: No single accelerator holds more; a larger figure is a typo (or bytes given as GiB).
MAX_GPU_GIB = 16384


def gpu_memory(setting: str, *, environ: Mapping[str, str], info: DriverInfo | None = None) -> GpuMemory:
    """`--gpu-memory GiB` as given, or `auto`: the largest free memory NVML reports on one GPU.

    `info`: NVML facts the caller already has (`up` probed them in its first stage); else NVML is
    asked here. Without a GPU there is no verdict (free_bytes None): CPU RAM is not what the
    bitsandbytes GPU path needs, and pretending otherwise would recommend loads that then run on
    the CPU.
    """
    if setting != "auto":
        example = "e.g. --gpu-memory 7.5 for 7.5 GiB free, or --gpu-memory auto to ask NVML"
        try:
            value = float(setting)
        except ValueError:
            raise UsageError(f"--gpu-memory must be a number of GiB or 'auto' (got '{setting}')",
                             hint=example) from None
        if not math.isfinite(value):
            raise UsageError(f"--gpu-memory must be a finite number of GiB (got {setting})", hint=example)
        if not value > 0:
            raise UsageError(f"--gpu-memory must be positive (got {setting})", hint=example)
        if value > MAX_GPU_GIB:
            raise UsageError(f"--gpu-memory must be at most {MAX_GPU_GIB} GiB (got {setting})", hint=example)
        return GpuMemory(int(value * GiB), f"--gpu-memory {setting} GiB")
    if info is None:
        from provisioner.system import gpu

        info = gpu.probe(environ)
    gpus = [g for g in info.gpus if g.memory_free is not None]
    if info.status != "ok" or not gpus:
        why = info.error or ("NVML reported no GPU" if info.status == "ok" else info.status)
        return GpuMemory(None, f"no NVIDIA GPU found ({why})")
    # One GPU: the smoke test and chat load the model on a single device (device_map="auto" puts
    # what does not fit on the CPU, which is the failure this check exists to prevent).
    best = max(gpus, key=lambda g: g.memory_free or 0)
    free = int(best.memory_free or 0)
    name = best.name or f"GPU {best.index}"
    source = f"NVML: GPU {best.index} {name}, {gib(free)} free" + (
        f" of {gib(best.memory_total)}" if best.memory_total else "")
    return GpuMemory(free, source, prefer_bf16=bool(best.cc and best.cc >= (8, 0)))



def check_fit(report: FitReport, *, quant: str | None = None) -> Check:
    """The `model.fit` check: does `quant` (default: the recommendation) fit the free GPU memory?"""
    data: dict[str, object] = report.to_document()
    if report.gpu_free_bytes is None:
        return Check("model.fit", Status.SKIP, f"{report.model}: no free-GPU-memory figure to compare with",
                     data=data)
    option = report.recommended
    if quant is not None:
        option = next((o for o in report.options if o.quant == quant), None)
    if option is not None and option.fits:
        return Check("model.fit", Status.OK,
                     f"{report.model} in {option.quant}: needs {gib(option.total_bytes)} at {report.context} tokens, "
                     f"{gib(report.gpu_free_bytes)} free (up to {option.max_context} tokens fit)", data=data)
    wanted = quant or "any precision"
    fix = (f"provision model fit {report.model} --quant {report.recommended.quant}" if report.recommended
           else report.advice)
    need = f" needs {gib(option.total_bytes)}," if option is not None else ""
    return Check("model.fit", Status.FAIL,
                 f"{report.model} does not fit in {wanted}:{need} {gib(report.gpu_free_bytes)} free", fix=fix,
                 data=data)
