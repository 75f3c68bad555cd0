"""What the download planner and the hub worker both know: a repo's files, the endpoint, the cache layout.

Kept apart from both so that the worker (a child interpreter) imports no more than this and the standard
library before huggingface_hub, and the planner never imports the worker.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

#: Hosts run by Hugging Face: a mirror that redirects file transfers there is not mirroring them.
HUB_DOMAINS = ("huggingface.co", "hf.co")

COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")

# --------------------------------------------------------------------------------------------
# which files a transformers load needs

#: Root files `from_pretrained` reads for a causal LM and its tokenizer (transformers
#: tokenization_utils_base / configuration_utils / generation): small, always taken.
LOAD_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
              "tokenizer.model", "*.tiktoken", "chat_template.jinja", "chat_template.json",
              "preprocessor_config.json", "processor_config.json", "*.py")
#: Formats transformers' PyTorch path does not load: other runtimes' copies of the same weights.
DUPLICATE_FORMATS = ("*.gguf", "*.onnx", "*.onnx_data", "*.msgpack", "*.h5", "*.ot", "*.tflite", "*.mlmodel",
                     "*.pth", "*.pt", "*.ckpt", "*.nemo")


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None = None     # LFS files: the content's sha256 (also their ETag)
    blob_id: str | None = None    # git blob id (ETag of non-LFS files)
    data_host: str | None = None  # where the endpoint sends the bytes (LFS files, after the plan's HEAD)

    @property
    def etag(self) -> str | None:
        return self.sha256 or self.blob_id


def select_files(files: Sequence[RepoFile], *, include_all: bool = False) -> tuple[list[RepoFile], list[RepoFile]]:
    """(files a transformers load needs, files skipped): safetensors over .bin, no other formats.

    Root files only (from_pretrained reads the repo root); the weights are every root
    `*.safetensors` with its index, or the `pytorch_model*.bin` files when there is no safetensors.
    Mistral-style `consolidated*.safetensors` duplicates are skipped when HF-format shards exist.
    """
    if include_all:
        return list(files), []
    root = [f for f in files if "/" not in f.path]
    safetensors = [f for f in root if f.path.endswith(".safetensors")]
    hf_shards = [f for f in safetensors if not f.path.startswith("consolidated")]
    weights = {f.path for f in (hf_shards or safetensors)}
    if weights:
        weights |= {f.path for f in root if f.path == "model.safetensors.index.json"}
    else:
        weights = {f.path for f in root if re.fullmatch(r"pytorch_model(-\d+-of-\d+)?\.bin", f.path)
                   or f.path == "pytorch_model.bin.index.json"}
    keep: list[RepoFile] = []
    skip: list[RepoFile] = []
    for f in files:
        wanted = f.path in weights or (
            "/" not in f.path and any(fnmatch.fnmatch(f.path, p) for p in LOAD_FILES)
            and not any(fnmatch.fnmatch(f.path, p) for p in DUPLICATE_FORMATS))
        (keep if wanted else skip).append(f)
    return keep, skip


# --------------------------------------------------------------------------------------------
# endpoint, cache locations


@dataclass(frozen=True)
class Endpoint:
    url: str
    source: str                   # "--endpoint", "--mirror hf-mirror", "HF_ENDPOINT", "default"

    @property
    def is_hub(self) -> bool:
        return on_domains(urlsplit(self.url).hostname or "", HUB_DOMAINS)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def on_domains(host: str, domains: Sequence[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def data_host_verdict(endpoint: Endpoint, location: str) -> str:
    """"ok" when the bytes come from the endpoint (or its own subdomains; the hub's CDN for the hub),
    "hub" when a mirror hands them to Hugging Face's hosts (the mirror is bypassed), else "foreign"."""
    host = urlsplit(location).hostname or ""
    ep = endpoint.host
    if host == ep:
        return "ok"
    labels = ep.split(".")
    if len(labels) >= 2 and not ep.replace(".", "").isdigit() and host.endswith("." + ".".join(labels[-2:])):
        return "ok"
    if on_domains(host, HUB_DOMAINS):
        return "ok" if endpoint.is_hub else "hub"
    return "foreign"


def hf_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps its cache for this environment (constants.py precedence)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(var):
            return Path(environ[var]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    xdg = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", str(Path.home()))) / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def repo_cache_folder(cache: Path, repo_id: str) -> Path:
    """The repo's folder in the cache, by the documented name (huggingface_hub docs, "Manage cache").

    Used for where things will be (the snapshot a plan names, our own partial files, the blob a
    fetched weight file becomes); whether a file is there is asked of huggingface_hub.
    """
    return cache / ("models--" + repo_id.replace("/", "--"))


def partial_path(target: Path, repo_id: str, f: RepoFile, local_dir: bool) -> Path:
    """The persistent partial file of an LFS file (the name huggingface_hub 1.x resumes in the cache).

    The planner reads its size to report the resumed bytes; the worker appends to it.
    """
    assert f.sha256
    if local_dir:
        return target / ".cache" / "huggingface" / "download" / f"{f.path}.{f.sha256}.incomplete"
    return repo_cache_folder(target, repo_id) / "blobs" / f"{f.sha256}.incomplete"


#: The hub's rule for repository ids (huggingface_hub.utils.validate_repo_id), checked here so that a
#: bad id is one usage error before any download starts, never the hub client's traceback.
REPO_ID_RULE = ("org/name, each part 1-96 letters, digits, '-', '_' or '.', not starting or ending with '-' or "
                "'.', without '--' or '..', and not ending in '.git'")
_REPO_PART = re.compile(r"[A-Za-z0-9_.-]+")


def repo_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` is not a valid hub repository id, or None when it is one."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        return "a hub id is org/name, with one '/'"
    for part in parts:
        if len(part) > 96:
            return f"'{part[:12]}...' is {len(part)} characters long (96 at most)"
        if not _REPO_PART.fullmatch(part):
            return f"'{part}' holds a character other than letters, digits, '-', '_' and '.'"
        if part[0] in "-." or part[-1] in "-.":
            return f"'{part}' starts or ends with '-' or '.'"
    if "--" in repo_id or ".." in repo_id:
        return "'--' and '..' are not allowed"
    if repo_id.endswith(".git"):
        return "it ends in '.git'"
    return None

