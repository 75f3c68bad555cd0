"""Mirror-safe, resumable model downloads through huggingface_hub, with a disk check before the first byte.

huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET once, when it is first
imported (huggingface_hub/constants.py), so the hub work runs in a child interpreter,
`python -m provisioner.model.download`, started through proc.run with exactly the environment this module
computed (endpoint set, xet off). The parent plans (file list, sizes, data hosts, disk space) and
renders; the child talks to the hub and writes a JSON result file.

Resuming: huggingface_hub 2.4 downloads into a per-process temporary file that it deletes when the
transfer fails (file_download.py `_download_to_tmp_and_move`), so an interrupted run starts over
(huggingface/huggingface_hub#4196). Weight files (LFS) therefore go through `http_get` into our own
`<blob>.incomplete` file, continued with `Range: bytes=N-` on the next run, checked against the
sha256 the hub publishes, then handed to `hf_hub_download`, which links it into the cache (or writes
its local-dir metadata) without downloading again. Small files go through `hf_hub_download` directly.

Xet is always off here (HF_HUB_DISABLE_XET=1): the hf_xet client ignores HF_ENDPOINT
(huggingface/xet-core#470) and restarts failed transfers from zero (huggingface_hub#3648); plain
HTTP through the endpoint is the data path we can check and resume.
"""
from __future__ import annotations

import difflib
import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioner import proc
from provisioner.errors import Interrupted, ProvisionError, UsageError
from provisioner.units import human_bytes

DEFAULT_ENDPOINT = "https://huggingface.co"
#: Known public mirrors of the hub API and file paths (`--mirror NAME`).
MIRRORS: dict[str, str] = {
    "hf-mirror": "https://hf-mirror.com",   # the mirror the walkthrough uses via HF_ENDPOINT
}
#: Hosts run by Hugging Face: a mirror that redirects file transfers there is not mirroring them.
HUB_DOMAINS = ("huggingface.co", "hf.co")
#: Long enough for tens of GB on a slow line; Ctrl-C stops it sooner and the next run resumes.
DOWNLOAD_TIMEOUT = 48 * 3600
API_TIMEOUT = 300

_COMMIT = re.compile(r"^[0-9a-f]{40}$")

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
        return _on_domains(urlsplit(self.url).hostname or "", HUB_DOMAINS)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def resolve_endpoint(*, endpoint: str | None = None, mirror: str | None = None,
                     environ: Mapping[str, str]) -> Endpoint:
    """--endpoint URL, then --mirror NAME, then HF_ENDPOINT, then the hub."""
    if endpoint and mirror:
        raise UsageError("--endpoint and --mirror both name the server", hint="pass only one of them")
    if mirror:
        if mirror not in MIRRORS:
            close = difflib.get_close_matches(mirror, list(MIRRORS), n=1)
            raise UsageError(f"unknown mirror '{mirror}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                             hint="known mirrors: " + ", ".join(f"{k} ({v})" for k, v in MIRRORS.items())
                             + "; any other: --endpoint URL")
        return Endpoint(MIRRORS[mirror], f"--mirror {mirror}")
    if endpoint:
        return Endpoint(_check_url(endpoint, "--endpoint"), "--endpoint")
    if environ.get("HF_ENDPOINT"):
        return Endpoint(_check_url(environ["HF_ENDPOINT"], "HF_ENDPOINT"), "HF_ENDPOINT")
    return Endpoint(DEFAULT_ENDPOINT, "default")


def _check_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{where} must be an http(s) URL (got '{url}')", hint="e.g. --endpoint https://hf-mirror.com")
    return url.rstrip("/")


def _on_domains(host: str, domains: Sequence[str]) -> bool:
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
    if _on_domains(host, HUB_DOMAINS):
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
    return cache / ("models--" + repo_id.replace("/", "--"))


def find_cached_snapshot(repo_id: str, *, revision: str | None, environ: Mapping[str, str]) -> Path | None:
    """The cached snapshot folder of repo_id at revision (default main) holding config.json, or None."""
    folder = repo_cache_folder(hf_cache_dir(environ), repo_id)
    rev = revision or "main"
    commit = rev if _COMMIT.match(rev) else None
    if commit is None:
        try:
            commit = (folder / "refs" / rev).read_text().strip()
        except OSError:
            return None
    snapshot = folder / "snapshots" / commit
    return snapshot if (snapshot / "config.json").is_file() else None


def _partial_path(target: Path, repo_id: str, f: RepoFile, local_dir: bool) -> Path:
    """The persistent partial file of an LFS file (the name huggingface_hub < 1.0 used in the cache)."""
    assert f.sha256
    if local_dir:
        return target / ".cache" / "huggingface" / "download" / f"{f.path}.{f.sha256}.incomplete"
    return repo_cache_folder(target, repo_id) / "blobs" / f"{f.sha256}.incomplete"


def _is_present(target: Path, repo_id: str, commit: str, f: RepoFile, local_dir: bool) -> bool:
    if not local_dir:
        return (repo_cache_folder(target, repo_id) / "snapshots" / commit / f.path).is_file()
    path = target / f.path
    meta = target / ".cache" / "huggingface" / "download" / f"{f.path}.metadata"
    try:
        lines = meta.read_text().splitlines()
    except OSError:
        return False
    return path.is_file() and path.stat().st_size == f.size and len(lines) >= 2 and lines[1].strip() == f.etag


def _check_writable(target: Path) -> None:
    """Refuse before the first byte when the target folder cannot be created or written."""
    where = "--local-dir or HF_HUB_CACHE"
    for p in (target, *target.parents):
        if p.is_dir():
            if not os.access(p, os.W_OK | os.X_OK):
                raise ProvisionError(f"cannot write into {p} (to make {target}): permission denied",
                                     hint=f"download into a folder you can write ({where})")
            return
        if p.exists() or p.is_symlink():
            raise ProvisionError(f"cannot make {target}: {p} is not a folder",
                                 hint=f"choose another folder ({where})")


def _disk_free(path: Path) -> int:
    """Free bytes on the filesystem that will hold `path` (its nearest existing ancestor)."""
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return shutil.disk_usage("/").free


# --------------------------------------------------------------------------------------------
# plan / apply


@dataclass(frozen=True)
class DownloadPlan:
    repo_id: str
    revision: str
    commit: str
    endpoint: Endpoint
    target: Path                  # --local-dir, or the Hugging Face cache
    local_dir: bool
    files: tuple[RepoFile, ...]   # selected files still to fetch
    present: tuple[RepoFile, ...]  # selected files already complete
    skipped: tuple[RepoFile, ...]  # not needed for a transformers load
    resumed_bytes: int            # already on disk in partial files
    need_bytes: int               # still to transfer
    free_bytes: int
    gated: bool = False
    warnings: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def path(self) -> Path:
        """Where the model folder will be: what from_pretrained (or `model fit`) takes."""
        if self.local_dir:
            return self.target
        return repo_cache_folder(self.target, self.repo_id) / "snapshots" / self.commit

    def describe(self) -> str:
        where = f"{self.target} (--local-dir)" if self.local_dir else f"{self.target} (Hugging Face cache)"
        lines = [f"Download {self.repo_id} @ {self.revision} (commit {self.commit[:12]}) from {self.endpoint.url}"
                 f" ({self.endpoint.source}, HTTP, xet off)",
                 f"  into {where}",
                 f"  {len(self.files)} file(s), {human_bytes(self.need_bytes)} to fetch"
                 + (f" ({human_bytes(self.resumed_bytes)} already on disk, resumed)" if self.resumed_bytes else "")
                 + f"; {human_bytes(self.free_bytes)} free there"]
        if self.present:
            lines.append(f"  {len(self.present)} file(s) already complete: " + ", ".join(f.path for f in self.present))
        for f in self.files:
            host = f" via {f.data_host}" if f.data_host and f.data_host != self.endpoint.host else ""
            lines.append(f"  + {f.path}  {human_bytes(f.size)}{host}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s) a transformers load does not need "
                         "(--include-all fetches them): " + ", ".join(f.path for f in self.skipped))
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    files: int
    bytes: int


def worker_env(environ: Mapping[str, str], endpoint: Endpoint) -> dict[str, str]:
    """The child's environment: the endpoint pinned, xet off, and this provisioner importable."""
    env = dict(environ)
    env["HF_ENDPOINT"] = endpoint.url
    env["HF_HUB_DISABLE_XET"] = "1"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, environ.get("PYTHONPATH", "")) if p)
    return env


def _offline(environ: Mapping[str, str]) -> str | None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def plan_download(model: str, *, revision: str | None = None, local_dir: Path | None = None,
                  endpoint: str | None = None, mirror: str | None = None, include_all: bool = False,
                  environ: Mapping[str, str], disk_free: Callable[[Path], int] = _disk_free) -> DownloadPlan:
    """List the repo through the endpoint, pick the files, HEAD the weights, and check disk space.

    Nothing is written. `disk_free` is injectable because a real full disk cannot be made in a test.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        raise UsageError(f"'{model}' is not a hub repository id",
                         hint="pass org/name, e.g. Qwen/Qwen2.5-7B-Instruct")
    ep = resolve_endpoint(endpoint=endpoint, mirror=mirror, environ=environ)
    offline = _offline(environ)
    if offline:
        raise ProvisionError(f"{offline}={environ[offline]} is set, so downloads are switched off",
                             hint=f"unset {offline} for this command (e.g. `env -u {offline} provision model download ...`)")
    env = worker_env(environ, ep)
    rev = revision or "main"
    doc = _run_worker({"op": "plan", "repo": model, "revision": rev, "include_all": include_all},
                      env=env, endpoint=ep, repo=model, revision=rev, live=False, timeout=API_TIMEOUT)
    commit = doc["commit"]
    files = [RepoFile(**f) for f in doc["files"]]
    skipped = [RepoFile(**f) for f in doc["skipped"]]
    target = (local_dir.expanduser().absolute() if local_dir is not None else hf_cache_dir(environ))
    is_local = local_dir is not None
    todo, present, warnings = [], [], []
    resumed = need = 0
    for f in files:
        if _is_present(target, model, commit, f, is_local):
            present.append(f)
            continue
        todo.append(f)
        part = 0
        if f.sha256:
            partial = _partial_path(target, model, f, is_local)
            part = partial.stat().st_size if partial.is_file() else 0
            part = part if part <= f.size else 0
        resumed += part
        need += f.size - part
        if f.data_host:
            verdict = data_host_verdict(ep, "http://" + f.data_host)
            if verdict == "hub":
                raise ProvisionError(
                    f"{ep.url} hands {f.path} to {f.data_host}: the bytes would come from Hugging Face, "
                    "not from the mirror",
                    hint="use a mirror that serves files itself, or download from the hub directly "
                         "(drop --endpoint/--mirror and HF_ENDPOINT) where it is reachable")
            if verdict == "foreign":
                warnings.append(f"{f.path} is served by {f.data_host}, not by {ep.host}")
    _check_writable(target)
    free = disk_free(target)
    if need > free:
        raise ProvisionError(
            f"not enough disk space for {model}: {human_bytes(need)} to download into {target}, {human_bytes(free)} free",
            hint=f"free {human_bytes(need - free)} there, or download elsewhere: --local-dir DIR on a bigger disk "
                 "(or set HF_HUB_CACHE)")
    return DownloadPlan(repo_id=model, revision=rev, commit=commit, endpoint=ep, target=target, local_dir=is_local,
                        files=tuple(todo), present=tuple(present), skipped=tuple(skipped), resumed_bytes=resumed,
                        need_bytes=need, free_bytes=free, gated=bool(doc.get("gated")), warnings=tuple(warnings),
                        env=env)


def apply(plan: DownloadPlan) -> DownloadResult:
    """Fetch the plan's files (progress bars on stderr); Ctrl-C keeps partial files for the next run."""
    if plan.files:
        request = {"op": "fetch", "repo": plan.repo_id, "revision": plan.revision, "commit": plan.commit,
                   "target": str(plan.target), "local_dir": plan.local_dir,
                   "files": [f.__dict__ for f in plan.files]}
        _run_worker(request, env=plan.env, endpoint=plan.endpoint, repo=plan.repo_id, revision=plan.revision,
                    live=True, timeout=DOWNLOAD_TIMEOUT)
    return DownloadResult(path=plan.path, files=len(plan.files) + len(plan.present), bytes=plan.need_bytes)


def fetch_file(repo_id: str, filename: str, *, revision: str | None, environ: Mapping[str, str]) -> Path:
    """One small file (config.json) through the HF cache; works offline when it is cached."""
    ep = resolve_endpoint(environ=environ)
    env = worker_env(environ, ep)
    rev = revision or "main"
    doc = _run_worker({"op": "file", "repo": repo_id, "revision": rev, "filename": filename,
                       "cache_dir": str(hf_cache_dir(environ))},
                      env=env, endpoint=ep, repo=repo_id, revision=rev, live=False, timeout=API_TIMEOUT,
                      mirror_option=False)
    return Path(doc["path"])


def _run_worker(request: dict[str, Any], *, env: Mapping[str, str], endpoint: Endpoint, repo: str, revision: str,
                live: bool, timeout: float, mirror_option: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="provision-hub-") as tmp:
        result = Path(tmp) / "result.json"
        request = {**request, "endpoint": endpoint.url, "result": str(result)}
        try:
            done = proc.run([sys.executable, "-m", "provisioner.model.download"], input=json.dumps(request), env=env,
                            timeout=timeout, check=False, capture=not live)
        except KeyboardInterrupt:
            raise Interrupted("download interrupted",
                              hint="run the same command again: it resumes from the bytes already on disk") from None
        try:
            doc: dict[str, Any] = json.loads(result.read_text())
        except (OSError, ValueError):
            detail = proc.tail(done.stderr or done.stdout)
            if done.returncode in (-2, 130):
                raise Interrupted("download interrupted",
                                  hint="run the same command again: it resumes from the bytes already on disk") from None
            raise ProvisionError(f"the hub helper exited {done.returncode} without a result"
                                 + (f"\n{detail}" if detail else ""),
                                 hint="rerun with PROVISION_DEBUG=1 and -v to see the command") from None
    if "error" in doc:
        raise _error(doc["error"], endpoint=endpoint, repo=repo, revision=revision, mirror_option=mirror_option)
    return doc


def _error(err: Mapping[str, Any], *, endpoint: Endpoint, repo: str, revision: str,
           mirror_option: bool = True) -> ProvisionError:
    kind, status, message = err.get("kind"), err.get("status"), str(err.get("message", "")).strip()
    page = f"{endpoint.url}/{repo}"
    login = "`hf auth login` (older huggingface_hub: `huggingface-cli login`) or export HF_TOKEN=hf_..."
    mirror_hint = ("where huggingface.co is blocked, use a mirror: "
                   + ("--mirror hf-mirror (or export HF_ENDPOINT=https://hf-mirror.com)" if mirror_option
                      else "export HF_ENDPOINT=https://hf-mirror.com"))
    if kind == "gated" and status == 403:
        return ProvisionError(f"{repo} is gated and your token has not been granted access ({endpoint.url} answered 403)",
                              hint=f"accept the licence at {page} with the account your token belongs to, then retry")
    if kind == "gated":
        return ProvisionError(f"{repo} is gated: {endpoint.url} answered {status or 401} because you are not logged in",
                              hint=f"accept the licence at {page}, then log in: {login}")
    if kind == "repo_not_found":
        return ProvisionError(f"repository {repo} not found on {endpoint.url} (HTTP {status})",
                              hint="check the id (org/name); a private repo also needs a token: " + login)
    if kind == "revision_not_found":
        return ProvisionError(f"revision '{revision}' not found in {repo}",
                              hint="pass a branch, tag or full commit hash that exists (default: main)")
    if kind == "entry_not_found":
        return ProvisionError(f"{repo}: {message or 'file not found'}",
                              hint="the file is not in that revision; check --revision")
    if kind == "offline":
        return ProvisionError(f"{repo} is not in the local cache and the hub is switched off (HF_HUB_OFFLINE)",
                              hint="unset HF_HUB_OFFLINE, or use a built-in model name or a local folder")
    if kind == "unreachable":
        return ProvisionError(f"cannot reach {endpoint.url} ({endpoint.source}): {message}",
                              hint=(f"check the network and proxy (HTTPS_PROXY); {mirror_hint}" if endpoint.is_hub
                                    else "check the URL and the network; known mirrors: "
                                    + ", ".join(f"--mirror {k} ({v})" for k, v in MIRRORS.items())
                                    + f"; the hub itself: {DEFAULT_ENDPOINT}"))
    if kind == "write":
        return ProvisionError(f"cannot write the files of {repo}: {message}",
                              hint="download into a folder you can write: --local-dir DIR (or set "
                                   "HF_HUB_CACHE); then run the same command again")
    if kind == "disk_full":
        return ProvisionError(f"the disk filled up while downloading {repo}: {message}",
                              hint="free some space and run the same command again: it resumes")
    if kind == "foreign_host":
        return ProvisionError(message, hint="use a mirror that serves files itself, or download from the hub "
                                            "directly (drop --endpoint/--mirror and HF_ENDPOINT)")
    if kind == "corrupt":
        return ProvisionError(message, hint="run the same command again: the damaged file was removed")
    return ProvisionError(f"{endpoint.url} answered HTTP {status} for {repo}: {message}",
                          hint="retry later" + (f"; {mirror_hint}" if endpoint.is_hub else
                                                f"; or try the hub itself: {DEFAULT_ENDPOINT}"))


# --------------------------------------------------------------------------------------------
# the child side: `python -m provisioner.model.download` (huggingface_hub imported here only)


class _HostError(Exception):
    pass


class _IntegrityError(Exception):
    pass


def _classify(e: BaseException) -> dict[str, Any] | None:
    """A known failure as {"kind", "status", "message"}; None for anything else (a bug: re-raised)."""
    from huggingface_hub import errors as hf

    def first_line(x: BaseException) -> str:
        text = str(x).strip()
        return text.splitlines()[0] if text else type(x).__name__

    chain: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and x not in chain:
        chain.append(x)
        x = x.__cause__ or x.__context__
    for x in chain:
        status = getattr(getattr(x, "response", None), "status_code", None)
        if isinstance(x, hf.GatedRepoError):
            return {"kind": "gated", "status": status, "message": first_line(x)}
        if isinstance(x, hf.RepositoryNotFoundError):
            return {"kind": "repo_not_found", "status": status, "message": first_line(x)}
        if isinstance(x, hf.RevisionNotFoundError):
            return {"kind": "revision_not_found", "status": status, "message": first_line(x)}
        if isinstance(x, hf.EntryNotFoundError) and not isinstance(x, hf.LocalEntryNotFoundError):
            return {"kind": "entry_not_found", "status": status, "message": first_line(x)}
        if isinstance(x, hf.OfflineModeIsEnabled):
            return {"kind": "offline", "status": None, "message": first_line(x)}
        if isinstance(x, _HostError):
            return {"kind": "foreign_host", "status": None, "message": str(x)}
        if isinstance(x, _IntegrityError):
            return {"kind": "corrupt", "status": None, "message": str(x)}
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return {"kind": "disk_full", "status": None, "message": first_line(x)}
        if isinstance(x, OSError) and x.filename is not None:
            # a filesystem error names its file (network errors do not): the target is not writable
            return {"kind": "write", "status": None, "message": first_line(x)}
        names = {c.__name__ for c in type(x).__mro__}
        if names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "ProxyError",
                    "RemoteProtocolError", "ConnectionError", "Timeout"} and status is None:
            return {"kind": "unreachable", "status": None, "message": first_line(x)}
        if isinstance(x, hf.HfHubHTTPError):
            return {"kind": "http", "status": status, "message": first_line(x)}
    for x in chain:
        if isinstance(x, hf.LocalEntryNotFoundError):
            kind = "offline" if "outgoing traffic has been disabled" in str(x) else "unreachable"
            return {"kind": kind, "status": None, "message": first_line(x)}
    return None


def _head(repo: str, path: str, commit: str, endpoint: str) -> Any:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    return get_hf_file_metadata(hf_hub_url(repo, path, revision=commit, endpoint=endpoint), endpoint=endpoint)


def _op_plan(req: Mapping[str, Any]) -> dict[str, Any]:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=req["endpoint"]).model_info(req["repo"], revision=req["revision"], files_metadata=True)
    listed = [RepoFile(path=s.rfilename, size=int(s.size or (s.lfs.size if s.lfs else 0) or 0),
                       sha256=s.lfs.sha256 if s.lfs else None, blob_id=s.blob_id) for s in info.siblings or []]
    keep, skip = select_files(listed, include_all=bool(req.get("include_all")))
    files = []
    for f in keep:
        if f.sha256:
            # The data path: where this endpoint really sends the bytes (checked before any download).
            meta = _head(req["repo"], f.path, info.sha or req["revision"], req["endpoint"])
            host = urlsplit(meta.location).hostname
            f = RepoFile(f.path, int(meta.size or f.size), f.sha256, f.blob_id, host)
        files.append(f.__dict__)
    return {"commit": info.sha, "gated": bool(info.gated), "files": files, "skipped": [f.__dict__ for f in skip]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_lfs(req: Mapping[str, Any], f: RepoFile, target: Path, local: bool) -> None:
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    repo, endpoint = req["repo"], req["endpoint"]
    ep = Endpoint(endpoint, "request")
    meta = _head(repo, f.path, req["commit"], endpoint)
    if data_host_verdict(ep, meta.location) == "hub":
        raise _HostError(f"{endpoint} hands {f.path} to {urlsplit(meta.location).hostname}: the bytes would come "
                         "from Hugging Face, not from the mirror")
    partial = _partial_path(target, repo, f, local)
    partial.parent.mkdir(parents=True, exist_ok=True)
    size = int(meta.size or f.size)
    if partial.is_file() and partial.stat().st_size > size:
        partial.unlink()          # a stale partial longer than the file would get 416 forever (hub#2197)
    headers = build_hf_headers()
    if urlsplit(meta.location).hostname != ep.host:
        headers.pop("authorization", None)   # never send the token to a CDN (as file_download does)
    with partial.open("ab") as fh:
        http_get(meta.location, fh, resume_size=fh.tell(), headers=headers, expected_size=size,
                 displayed_filename=f.path)
    if f.sha256 and _sha256(partial) != f.sha256:
        partial.unlink()
        raise _IntegrityError(f"{f.path}: the downloaded bytes do not match the sha256 the hub lists")
    if local:
        dest = target / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
    else:
        dest = repo_cache_folder(target, repo) / "blobs" / f.sha256  # type: ignore[operator]
    os.replace(partial, dest)


def _op_fetch(req: Mapping[str, Any]) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    repo, commit, endpoint = req["repo"], req["commit"], req["endpoint"]
    target, local = Path(req["target"]), bool(req["local_dir"])
    where: dict[str, Any] = {"local_dir": str(target)} if local else {"cache_dir": str(target)}
    # Weights first, so the small files (config.json) last mark a complete folder.
    files = sorted((RepoFile(**f) for f in req["files"]), key=lambda f: f.sha256 is None)
    for f in files:
        if f.sha256:
            _fetch_lfs(req, f, target, local)
        # For a fetched weight file this only links it (cache) or records its etag (local dir).
        hf_hub_download(repo, f.path, revision=commit, endpoint=endpoint, **where)
    if not local and not _COMMIT.match(req["revision"]):
        refs = repo_cache_folder(target, repo) / "refs" / req["revision"]
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(commit)
    return {"path": str(target if local else repo_cache_folder(target, repo) / "snapshots" / commit)}


def _op_file(req: Mapping[str, Any]) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(req["repo"], req["filename"], revision=req["revision"], endpoint=req["endpoint"],
                           cache_dir=req["cache_dir"])
    return {"path": str(path)}


_OPS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {"plan": _op_plan, "fetch": _op_fetch,
                                                                    "file": _op_file}


def _worker_main() -> int:
    req = json.loads(sys.stdin.read())
    result = Path(req["result"])
    try:
        doc = _OPS[req["op"]](req)
        code = 0
    except Exception as e:
        found = _classify(e)
        if found is None:
            raise
        doc, code = {"error": found}, 1
    result.write_text(json.dumps(doc))
    return code


if __name__ == "__main__":
    try:
        sys.exit(_worker_main())
    except KeyboardInterrupt:
        # Ctrl-C reaches the whole process group; the parent reports it. Partial files stay.
        sys.exit(130)
