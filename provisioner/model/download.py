"""Mirror-safe, resumable model downloads through huggingface_hub, with a disk check before the first byte.

huggingface_hub reads its settings once, when it is first imported, so the hub work runs in a child
interpreter, `python -m provisioner.model.hub_worker`, started through proc.run with exactly the
environment this module computed (endpoint set, xet off, the library's own progress bars off). The
parent (this module) plans (file list, sizes, data hosts, disk space), renders and explains failures;
the child talks to the hub, writes a JSON result file, reports each file's progress as JSON lines on its
stdout (handed to apply's `on_progress`, which the CLI draws), and keeps partial weight files so the
next run resumes them (see hub_worker).

Xet is always off here (HF_HUB_DISABLE_XET=1): the hf_xet client ignores HF_ENDPOINT
(huggingface/xet-core#470) and restarts failed transfers from zero (huggingface_hub#3648); plain
HTTP through the endpoint is the data path we can check and resume.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from provisioner import proc
from provisioner.model import hub
from provisioner.errors import Interrupted, ProvisionError, UsageError
from provisioner.model.hub import Endpoint as Endpoint  # `X as X`: the CLI, `model info` and the tests use them as download.X
from provisioner.model.hub import RepoFile as RepoFile
from provisioner.model.hub import data_host_verdict as data_host_verdict
from provisioner.model.hub import hf_cache_dir as hf_cache_dir
from provisioner.model.hub import partial_path, repo_cache_folder
from provisioner.model.hub import select_files as select_files
from provisioner.units import human_bytes

DEFAULT_ENDPOINT = "https://huggingface.co"
#: Known public mirrors of the hub API and file paths (`--mirror NAME`).
MIRRORS: dict[str, str] = {
    "hf-mirror": "https://hf-mirror.com",   # the mirror the walkthrough uses via HF_ENDPOINT
}
#: Long enough for tens of GB on a slow line; Ctrl-C stops it sooner and the next run resumes.
DOWNLOAD_TIMEOUT = 48 * 3600
API_TIMEOUT = 300
#: What apply() reports a transfer through, as often as the worker sends it (about 10 times a second
#: per file): `on_progress(file, bytes_done, bytes_total)`; `done == total` once the file is in place.
Progress = Callable[[str, int, Optional[int]], None]


# --------------------------------------------------------------------------------------------
# endpoint, target folder


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
        """Where the model folder will be: what from_pretrained (or `model fit`) takes.

        The cache's documented `models--org--name/snapshots/<commit>` folder; after a download,
        DownloadResult.path is the folder huggingface_hub itself returned.
        """
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
    """The child's environment: the endpoint pinned, xet and tqdm bars off, and this provisioner importable."""
    env = dict(environ)
    env["HF_ENDPOINT"] = endpoint.url
    env["HF_HUB_DISABLE_XET"] = "1"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"     # the parent draws progress from the worker's events
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
    ep = _checked_endpoint(model, endpoint=endpoint, mirror=mirror, environ=environ)
    env = worker_env(environ, ep)
    rev = revision or "main"
    target = (local_dir.expanduser().absolute() if local_dir is not None else hf_cache_dir(environ))
    is_local = local_dir is not None
    _check_writable(target)
    doc = _run_worker({"op": "plan", "repo": model, "revision": rev, "include_all": include_all,
                       "target": str(target), "local_dir": is_local},
                      env=env, endpoint=ep, repo=model, revision=rev, timeout=API_TIMEOUT)
    commit = doc["commit"]
    todo: list[RepoFile] = []
    present: list[RepoFile] = []
    for f in (RepoFile(**listed) for listed in doc["files"]):
        (present if f.path in doc["present"] else todo).append(f)
    resumed = sum(_resumable_bytes(target, model, f, is_local) for f in todo)
    need = sum(f.size for f in todo) - resumed
    warnings = [w for w in (_data_host_warning(ep, f) for f in todo) if w]
    free = disk_free(target)
    _check_space(model, target, need, free)
    return DownloadPlan(repo_id=model, revision=rev, commit=commit, endpoint=ep, target=target, local_dir=is_local,
                        files=tuple(todo), present=tuple(present),
                        skipped=tuple(RepoFile(**f) for f in doc["skipped"]), resumed_bytes=resumed,
                        need_bytes=need, free_bytes=free, gated=bool(doc.get("gated")), warnings=tuple(warnings),
                        env=env)


def check_repo_id(repo_id: str) -> str:
    """The id, or one usage error with the hub's rule (before the hub client could raise its own)."""
    problem = hub.repo_id_problem(repo_id)
    if problem:
        raise UsageError(f"'{repo_id}' is not a hub repository id: {problem}",
                         hint=f"a hub id is {hub.REPO_ID_RULE}, e.g. Qwen/Qwen2.5-7B-Instruct")
    return repo_id


def _checked_endpoint(model: str, *, endpoint: str | None, mirror: str | None,
                      environ: Mapping[str, str]) -> Endpoint:
    """The endpoint to plan against, after the checks that need no network."""
    check_repo_id(model)
    ep = resolve_endpoint(endpoint=endpoint, mirror=mirror, environ=environ)
    offline = _offline(environ)
    if offline:
        raise ProvisionError(f"{offline}={environ[offline]} is set, so downloads are switched off",
                             hint=f"unset {offline} for this command (e.g. `env -u {offline} provision model download ...`)")
    return ep


def _resumable_bytes(target: Path, repo_id: str, f: RepoFile, local_dir: bool) -> int:
    """Bytes of `f` already in its partial file; 0 for a small file or a partial longer than the file."""
    if not f.sha256:
        return 0
    partial = partial_path(target, repo_id, f, local_dir)
    part = partial.stat().st_size if partial.is_file() else 0
    return part if part <= f.size else 0


def _data_host_warning(ep: Endpoint, f: RepoFile) -> str | None:
    """Refuse a mirror that hands the bytes to Hugging Face (it would not be used); warn of other hosts."""
    if not f.data_host:
        return None
    verdict = data_host_verdict(ep, "http://" + f.data_host)
    if verdict == "hub":
        raise ProvisionError(
            f"{ep.url} hands {f.path} to {f.data_host}: the bytes would come from Hugging Face, "
            "not from the mirror",
            hint="use a mirror that serves files itself, or download from the hub directly "
                 "(drop --endpoint/--mirror and HF_ENDPOINT) where it is reachable")
    if verdict == "foreign":
        return f"{f.path} is served by {f.data_host}, not by {ep.host}"
    return None


def _check_space(model: str, target: Path, need: int, free: int) -> None:
    if need > free:
        raise ProvisionError(
            f"not enough disk space for {model}: {human_bytes(need)} to download into {target}, {human_bytes(free)} free",
            hint=f"free {human_bytes(need - free)} there, or download elsewhere: --local-dir DIR on a bigger disk "
                 "(or set HF_HUB_CACHE)")


def apply(plan: DownloadPlan, on_progress: Progress | None = None) -> DownloadResult:
    """Fetch the plan's files, reporting each one's bytes to `on_progress`; Ctrl-C keeps partial files
    for the next run."""
    path = plan.path
    if plan.files:
        request = {"op": "fetch", "repo": plan.repo_id, "revision": plan.revision, "commit": plan.commit,
                   "target": str(plan.target), "local_dir": plan.local_dir,
                   "files": [f.__dict__ for f in plan.files]}
        doc = _run_worker(request, env=plan.env, endpoint=plan.endpoint, repo=plan.repo_id, revision=plan.revision,
                          timeout=DOWNLOAD_TIMEOUT, on_progress=on_progress)
        path = Path(doc["path"])
    return DownloadResult(path=path, files=len(plan.files) + len(plan.present), bytes=plan.need_bytes)


# --------------------------------------------------------------------------------------------
# what `model fit` asks of the hub


def find_cached_snapshot(repo_id: str, *, revision: str | None, environ: Mapping[str, str]) -> Path | None:
    """The cached snapshot folder of repo_id at revision (default main) holding config.json, or None.

    huggingface_hub's `try_to_load_from_cache` answers (no network). The worker is only started when
    the cache has a folder for the repo at all (its documented `models--org--name` name), so a
    built-in name that was never downloaded costs no child process.
    """
    cache = hf_cache_dir(environ)
    if not repo_cache_folder(cache, repo_id).is_dir():
        return None
    ep = Endpoint(DEFAULT_ENDPOINT, "default")     # a cache question: no endpoint is asked (or checked)
    rev = revision or "main"
    doc = _run_worker({"op": "cached", "repo": repo_id, "revision": rev, "cache_dir": str(cache)},
                      env=worker_env(environ, ep), endpoint=ep, repo=repo_id, revision=rev,
                      timeout=API_TIMEOUT, mirror_option=False)
    return Path(doc["snapshot"]) if doc["snapshot"] else None


@dataclass(frozen=True)
class HubModel:
    """What the hub says about a model without its weights."""

    config_path: Path                                  # config.json, through the HF cache
    tensors: tuple[tuple[str, str, tuple[int, ...]], ...] | None  # (name, safetensors dtype, shape)
    tensors_problem: str | None                        # why `tensors` is None
    where: str                                         # the endpoint the headers were read from


def fetch_model(repo_id: str, *, revision: str | None, environ: Mapping[str, str]) -> HubModel:
    """config.json and the safetensors headers (`HfApi.get_safetensors_metadata`: Range requests,
    no weights). config.json works offline when it is cached; the headers need the endpoint."""
    ep = resolve_endpoint(environ=environ)
    rev = revision or "main"
    doc = _run_worker({"op": "model", "repo": repo_id, "revision": rev, "cache_dir": str(hf_cache_dir(environ))},
                      env=worker_env(environ, ep), endpoint=ep, repo=repo_id, revision=rev,
                      timeout=API_TIMEOUT, mirror_option=False)
    tensors = doc["tensors"]
    return HubModel(Path(doc["config"]),
                    None if tensors is None else tuple((str(n), str(d), tuple(int(x) for x in shape))
                                                       for n, d, shape in tensors),
                    doc["tensors_problem"], ep.url)


def _events(on_progress: Progress | None) -> Callable[[str], None]:
    """The worker's stdout, line by line: each progress event `{"file", "done", "total"}` to `on_progress`."""
    def line(text: str) -> None:
        try:
            event = json.loads(text)
            name, done, total = str(event["file"]), int(event["done"]), event["total"]
            total = None if total is None else int(total)
        except (ValueError, TypeError, KeyError):
            return                        # not an event (the worker sends nothing else there)
        if on_progress is not None:
            on_progress(name, done, total)
    return line


def _run_worker(request: dict[str, Any], *, env: Mapping[str, str], endpoint: Endpoint, repo: str, revision: str,
                timeout: float, mirror_option: bool = True, on_progress: Progress | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="provision-hub-") as tmp:
        result = Path(tmp) / "result.json"
        request = {**request, "endpoint": endpoint.url, "result": str(result)}
        try:
            # stdout carries only progress events (read as they come); stderr is kept for the error tail.
            done = proc.run([sys.executable, "-m", "provisioner.model.hub_worker"], input=json.dumps(request), env=env,
                            timeout=timeout, check=False, on_line=_events(on_progress))
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

