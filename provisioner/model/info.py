"""What a model is made of: parameter counts and attention shapes from a folder, the Qwen table, or the hub."""
from __future__ import annotations

import difflib
import json
import math
import re
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from provisioner import yamldata

from provisioner.errors import ProvisionError, UsageError

TABLE_PATH = Path(__file__).parent.parent / "data" / "qwen-models.yaml"

#: safetensors dtype names -> torch names (https://huggingface.co/docs/safetensors, "Format").
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                      "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}

#: A tensor inside a numbered decoder block (`model.layers.3.mlp.up_proj.weight`); its 2-D weights
#: are the nn.Linear layers bitsandbytes replaces (transformers `replace_with_bnb_linear`).
_BLOCK_TENSOR = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.\d+\.")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_QUANTIZED = "the checkpoint is quantized (quantization_config), so its headers hold packed weights"
#: A safetensors header larger than this is not a header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of a decoder-only transformer, enough for the memory arithmetic in fit.py."""

    name: str
    source: str                  # "safetensors" (exact, from headers) | "config" (config.json) | "table"
    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool
    dtype: str                   # checkpoint dtype, e.g. "bfloat16"
    quantizable_params: int      # nn.Linear weights inside the decoder layers: what bitsandbytes quantizes
    other_params: int            # embeddings, lm_head (once if tied), norms, biases: stay 16-bit
    max_position: int
    quantizable_tensors: int = 0  # how many such Linear weights (per-tensor quantization constants)
    quantizable_rows: int = 0     # their summed output features (int8 keeps one fp32 scale per row)
    path: str | None = None       # the local folder, when there is one
    source_note: str | None = None  # where the counts were read, or why the headers could not be used

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def params_source(self) -> str:
        """How the parameters were counted, in the words `model fit` prints and its JSON carries."""
        return PARAMS_SOURCES[self.source]


#: ModelSpec.source -> how the parameter count was obtained.
PARAMS_SOURCES = {"safetensors": "safetensors header", "config": "config arithmetic", "table": "built-in table"}


# --------------------------------------------------------------------------------------------
# config.json arithmetic


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    # Multimodal checkpoints nest the language model's settings (Qwen2-VL style `text_config`).
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) and "hidden_size" in inner else config


def _need(config: Mapping[str, Any], key: str, where: str) -> int:
    value = config.get(key)
    # bool is an int subclass: `true` in config.json is not a count
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ProvisionError(f"{where}: config.json has no usable `{key}` (found {value!r})",
                             hint="pass a folder or hub id of a decoder-only transformers model")
    return value


def _optional(config: Mapping[str, Any], key: str, where: str, default: int) -> int:
    """An optional count: absent (or null/0) gives `default`; anything else must be a positive int."""
    if not config.get(key):
        return default
    return _need(config, key, where)


@dataclass(frozen=True)
class _Arch:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_position: int
    tie_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    dtype: str


def _arch_from_config(config: Mapping[str, Any], where: str) -> _Arch:
    if not isinstance(config, Mapping):
        raise ProvisionError(f"{where}: config.json is not a JSON object",
                             hint="pass a folder or hub id of a decoder-only transformers model")
    cfg = _text_config(config)
    if cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts"):
        raise ProvisionError(f"{where}: mixture-of-experts models are not covered by the config.json arithmetic",
                             hint="download the model and pass its folder: the safetensors headers give exact counts")
    hidden = _need(cfg, "hidden_size", where)
    heads = _need(cfg, "num_attention_heads", where)
    model_type = str(cfg.get("model_type", ""))
    # Qwen2 always puts a bias on q/k/v and none on o (modeling_qwen2.py); Llama-style models
    # (Qwen3, Llama, Mistral) follow `attention_bias` for all four projections.
    qwen2 = model_type in ("qwen2", "qwen2_vl", "qwen2_5_vl", "qwen2_text", "qwen2_5_vl_text")
    bias = bool(cfg.get("attention_bias", False))
    head_dim = _optional(cfg, "head_dim", where, hidden // heads)
    return _Arch(
        layers=_need(cfg, "num_hidden_layers", where),
        hidden=hidden,
        heads=heads,
        kv_heads=_optional(cfg, "num_key_value_heads", where, heads),
        head_dim=head_dim,
        intermediate=_need(cfg, "intermediate_size", where),
        vocab=_need(cfg, "vocab_size", where),
        max_position=_optional(cfg, "max_position_embeddings", where, 0),
        tie_embeddings=bool(config.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
        qkv_bias=True if qwen2 else bias,
        o_bias=False if qwen2 else bias,
        qk_norm=model_type.startswith("qwen3"),
        dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or config.get("dtype")
                  or config.get("torch_dtype") or "bfloat16"),
    )


def _spec_from_arch(name: str, source: str, a: _Arch, path: str | None = None,
                    note: str | None = None) -> ModelSpec:
    """Counts per compat-data §4.3: q,k,v,o + gated MLP per layer, 2 RMSNorms, embeddings, lm_head."""
    q_out, kv_out = a.heads * a.head_dim, a.kv_heads * a.head_dim
    linear = [(q_out, a.hidden), (kv_out, a.hidden), (kv_out, a.hidden), (a.hidden, q_out),
              (a.intermediate, a.hidden), (a.intermediate, a.hidden), (a.hidden, a.intermediate)]
    per_layer_linear = sum(o * i for o, i in linear)
    per_layer_other = 2 * a.hidden                                   # input + post-attention RMSNorm
    per_layer_other += (q_out + 2 * kv_out) if a.qkv_bias else 0
    per_layer_other += a.hidden if a.o_bias else 0
    per_layer_other += 2 * a.head_dim if a.qk_norm else 0            # Qwen3 q_norm, k_norm
    embed = a.vocab * a.hidden
    other = embed + a.hidden + (0 if a.tie_embeddings else embed) + a.layers * per_layer_other
    quantizable = a.layers * per_layer_linear
    return ModelSpec(
        name=name, source=source, params=quantizable + other,
        layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, head_dim=a.head_dim,
        intermediate=a.intermediate, vocab=a.vocab, tie_embeddings=a.tie_embeddings, dtype=a.dtype,
        quantizable_params=quantizable, other_params=other, max_position=a.max_position,
        quantizable_tensors=a.layers * len(linear), quantizable_rows=a.layers * sum(o for o, _ in linear),
        path=path, source_note=note,
    )


def spec_from_config(config: Mapping[str, Any], *, name: str, path: str | None = None,
                     note: str | None = None) -> ModelSpec:
    """A ModelSpec computed from config.json alone (source "config")."""
    return _spec_from_arch(name, "config", _arch_from_config(config, name), path, note)


# --------------------------------------------------------------------------------------------
# safetensors headers


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor name -> {"dtype", "shape", "data_offsets"}: 8-byte little-endian length, then JSON."""
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than 8 bytes")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER:
                raise ValueError(f"header length {length} is not plausible")
            header: dict[str, dict[str, Any]] = json.loads(f.read(length))
    except (OSError, ValueError) as e:   # json.JSONDecodeError is a ValueError
        raise ProvisionError(f"{path}: not a readable safetensors file ({e})",
                             hint="re-download it: `provision model download MODEL --local-dir DIR`") from e
    hint = "re-download it: `provision model download MODEL --local-dir DIR`"
    if not isinstance(header, dict):
        raise ProvisionError(f"{path}: not a readable safetensors file (the header is not a JSON object)",
                             hint=hint)
    header.pop("__metadata__", None)
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProvisionError(f"{path}: not a readable safetensors file (tensor '{name}' has no valid "
                                 "shape)", hint=hint)
    return header


def _safetensors_files(folder: Path, *, strict: bool = True) -> list[Path] | None:
    """The checkpoint's safetensors files; with strict=False, None instead of an error when the
    index is unreadable or names missing shards (a partly downloaded snapshot)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted({str(name) for name in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if not strict:
                return None
            raise ProvisionError(f"{index}: unreadable shard index ({e})",
                                 hint="re-download the model: `provision model download` fetches the index "
                                      "again") from e
        files = [folder / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing and not strict:
            return None
        if missing:
            raise ProvisionError(f"{folder}: shards named in {index.name} are missing: {', '.join(missing)}",
                                 hint="finish the download: `provision model download` resumes it")
        return files
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("consolidated"))


def _spec_from_tensors(name: str, a: _Arch, tensors: Iterable[tuple[str, str, Sequence[int]]],
                       path: str | None, note: str | None = None) -> ModelSpec:
    params = quantizable = n_linear = rows = 0
    by_dtype: Counter[str] = Counter()
    for tname, dtype, shape in tensors:
        n = math.prod(shape)
        params += n
        by_dtype[dtype] += n
        if len(shape) == 2 and tname.endswith(".weight") and _BLOCK_TENSOR.search(tname):
            quantizable += n
            n_linear += 1
            rows += shape[0]
    dtype = SAFETENSORS_DTYPES.get(by_dtype.most_common(1)[0][0], a.dtype) if by_dtype else a.dtype
    return ModelSpec(
        name=name, source="safetensors", params=params,
        layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, head_dim=a.head_dim,
        intermediate=a.intermediate, vocab=a.vocab, tie_embeddings=a.tie_embeddings, dtype=dtype,
        quantizable_params=quantizable, other_params=params - quantizable, max_position=a.max_position,
        quantizable_tensors=n_linear, quantizable_rows=rows, path=path, source_note=note,
    )


def spec_from_folder(folder: Path, *, name: str | None = None) -> ModelSpec:
    """Exact counts from the safetensors headers; config.json arithmetic when there are none."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ProvisionError(f"{folder}: no config.json, so this is not a transformers model folder",
                             hint="pass the folder that holds config.json and the *.safetensors files")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ProvisionError(f"{config_path}: not valid JSON ({e})",
                             hint="re-download the model: `provision model download MODEL --local-dir DIR`") from e
    label = name or str(folder)
    arch = _arch_from_config(config, label)
    files = _safetensors_files(folder) or []
    # A checkpoint that is already quantized (bnb, GPTQ, AWQ) stores packed integers: the headers
    # would undercount, so fall back to the architecture in config.json.
    if config.get("quantization_config"):
        return _spec_from_arch(label, "config", arch, str(folder), note=_QUANTIZED)
    if not files:
        return _spec_from_arch(label, "config", arch, str(folder), note="no *.safetensors files in the folder")
    tensors = []
    for f in files:
        for tname, info in read_safetensors_header(f).items():
            tensors.append((tname, str(info.get("dtype", "")), [int(d) for d in info.get("shape", [])]))
    return _spec_from_tensors(label, arch, tensors, str(folder))


# --------------------------------------------------------------------------------------------
# the built-in table


@dataclass(frozen=True)
class TableEntry:
    name: str
    aliases: tuple[str, ...]
    params: int                  # the published total, as the source gives it
    spec: ModelSpec


def _normalize(name: str) -> str:
    name = name.strip().lower()
    return name[len("qwen/"):] if name.startswith("qwen/") else name


@lru_cache(maxsize=1)
def table() -> tuple[TableEntry, ...]:
    """The Qwen models in data/qwen-models.yaml, with specs computed from their config values."""
    doc = yamldata.load(TABLE_PATH.read_text())
    families = doc["families"]
    entries = []
    for row in doc["models"]:
        fam = families[row["family"]]
        arch = _Arch(
            layers=row["layers"], hidden=row["hidden"], heads=row["heads"], kv_heads=row["kv_heads"],
            head_dim=row.get("head_dim") or row["hidden"] // row["heads"], intermediate=row["intermediate"],
            vocab=row["vocab"], max_position=row["max_position"], tie_embeddings=row["tie_embeddings"],
            qkv_bias=fam["qkv_bias"], o_bias=False, qk_norm=fam["qk_norm"], dtype=row.get("dtype", "bfloat16"),
        )
        entries.append(TableEntry(row["name"], tuple(row.get("aliases", ())), row["params"],
                                  _spec_from_arch(row["name"], "table", arch)))
    return tuple(entries)


def find_in_table(name: str) -> ModelSpec | None:
    """The table's spec for "Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b-instruct" or an alias; else None."""
    wanted = _normalize(name)
    for entry in table():
        if wanted in {_normalize(n) for n in (entry.name, *entry.aliases)}:
            return entry.spec
    return None


def table_names() -> list[str]:
    return [e.name for e in table()]


def suggest(name: str) -> str | None:
    """The closest table name to a misspelt one (difflib), or None."""
    names = {_normalize(n): e.name for e in table() for n in (e.name, *e.aliases)}
    close = difflib.get_close_matches(_normalize(name), list(names), n=1, cutoff=0.6)
    return names[close[0]] if close else None


# --------------------------------------------------------------------------------------------
# resolve


def resolve(model: str, *, environ: Mapping[str, str], revision: str | None = None) -> ModelSpec:
    """MODEL as a local folder, a downloaded hub repo, a table name, or a hub id (read from the hub).

    Order: an existing folder; a hub id already downloaded into the Hugging Face cache (exact counts,
    offline); the built-in Qwen table (offline); the hub's config.json and safetensors headers
    (network, honours HF_ENDPOINT; config.json arithmetic when the headers cannot be read).
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        return spec_from_folder(folder)
    if model.startswith((".", "/", "~")) or model.endswith("/"):
        raise UsageError(f"model folder {model} does not exist",
                         hint="pass an existing folder holding config.json, a hub id or a built-in name")

    from provisioner.model import download
    from provisioner.model.hub import repo_id_problem

    if _HUB_ID.match(model) and repo_id_problem(model) is None:
        snapshot = download.find_cached_snapshot(model, revision=revision, environ=environ)
        # A snapshot holding only config.json (an earlier `model fit` cached it) has no counts to read.
        if snapshot is not None and _safetensors_files(snapshot, strict=False):
            return spec_from_folder(snapshot, name=model)
    spec = find_in_table(model)
    if spec is not None:
        return spec
    guess = suggest(model)
    if not _HUB_ID.match(model):
        raise UsageError(
            f"unknown model '{model}'" + (f" (did you mean '{guess}'?)" if guess else ""),
            hint="pass a folder with config.json, a hub id (org/name), or one of the built-in names: "
                 + ", ".join(table_names()))
    download.check_repo_id(model)
    try:
        found = download.fetch_model(model, revision=revision, environ=environ)
    except ProvisionError as e:
        raise ProvisionError(
            f"cannot read the config of {model}: {e.message}",
            hint=(f"did you mean the built-in '{guess}'? " if guess else "")
            + "built-in names (see `provision model fit --help`) and local folders work offline; "
            + (e.hint or "")) from e
    try:
        config = json.loads(found.config_path.read_text())
    except (OSError, ValueError) as e:
        raise ProvisionError(f"{model}: config.json from the hub is not valid JSON ({e})",
                             hint="check --revision and the endpoint (HF_ENDPOINT): a mirror may have "
                                  "served an error page") from e
    return spec_from_hub(model, config, found.tensors, problem=found.tensors_problem, where=found.where)


def spec_from_hub(name: str, config: Mapping[str, Any],
                  tensors: Iterable[tuple[str, str, Sequence[int]]] | None, *, problem: str | None,
                  where: str) -> ModelSpec:
    """Exact counts from the safetensors headers the hub served; config.json arithmetic when there
    are none (`problem` says why) or the checkpoint is quantized (packed weights undercount)."""
    arch = _arch_from_config(config, name)
    if config.get("quantization_config"):
        problem = _QUANTIZED
    elif tensors is not None:
        return _spec_from_tensors(name, arch, tensors, None, note=f"read from {where}")
    return _spec_from_arch(name, "config", arch, note=problem)
