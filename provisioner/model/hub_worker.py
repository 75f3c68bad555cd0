"""The hub worker: `python -m provisioner.model.hub_worker`, the one place huggingface_hub is imported.

huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET once, when it is first imported
(huggingface_hub/constants.py), so it runs in a child interpreter started by provisioner.model.download with
exactly the environment the parent computed. It reads one JSON request on stdin and writes a JSON result
file; a known failure is `{"error": {"kind", "status", "message"}}` for the parent to explain. While it
fetches, its stdout carries progress events, one JSON line `{"file", "done", "total"}` each, for the
parent to draw (huggingface_hub's own tqdm bars are off: HF_HUB_DISABLE_PROGRESS_BARS=1, set by the parent).

Only the package's public API is used (supported: huggingface_hub >=1.0,<3, see setup.cfg): cache
questions go to `try_to_load_from_cache` and `hf_hub_download(dry_run=True)`, exact parameter counts
to `HfApi.get_safetensors_metadata`, and the resumable transfer to the library's own HTTP client
(`get_session`, `build_hf_headers`, `hf_raise_for_status`).

Resuming: huggingface_hub 2.x downloads into a per-process temporary file that it deletes when the
transfer fails (file_download.py `_download_to_tmp_and_move`), so an interrupted run starts over
(huggingface/huggingface_hub#4196; 1.x still resumed its `<blob>.incomplete`). Weight files (LFS)
therefore go into our own `<blob>.incomplete` file (the name 1.x uses, so either side resumes the
other's bytes), continued with `Range: bytes=N-` on the next run, checked against the sha256 the hub
publishes, then handed to `hf_hub_download`, which links it into the cache (or writes its local-dir
metadata) without downloading again. Small files go through `hf_hub_download` directly.
"""
from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from provisioner.fsio import sha256_file
from provisioner.model.hub import (COMMIT_HASH, Endpoint, RepoFile, data_host_verdict, partial_path,
                                   repo_cache_folder, select_files)


class _Progress:
    """Progress events for the parent, one JSON line each on a channel nothing else writes to (see
    _worker_main): at most one per file every INTERVAL seconds, plus the final one, so that a fast
    line does not flood the pipe. Only the final event says `done == total`: the file is in place."""

    INTERVAL = 0.1

    def __init__(self) -> None:
        self.out: TextIO | None = None
        self._sent: dict[str, float] = {}

    def __call__(self, name: str, done: int, total: int, *, final: bool = False) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        if not final and (done >= total or now - self._sent.get(name, float("-inf")) < self.INTERVAL):
            return
        self._sent[name] = now
        self.out.write(json.dumps({"file": name, "done": done, "total": total}) + "\n")
        self.out.flush()


_progress = _Progress()


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


def _is_present(req: Mapping[str, Any], commit: str, f: RepoFile) -> bool:
    """Is `f` of `commit` already complete in the target? Asked of the library, never of its files."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    target = Path(req["target"])
    if not req["local_dir"]:
        return isinstance(try_to_load_from_cache(req["repo"], f.path, cache_dir=target, revision=commit), str)
    if not (target / f.path).is_file():
        return False      # nothing to ask (and a dry run would create the file's folders)
    info = hf_hub_download(req["repo"], f.path, revision=commit, endpoint=req["endpoint"], local_dir=target,
                           dry_run=True)
    return not info.will_download


def _op_plan(req: Mapping[str, Any]) -> dict[str, Any]:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=req["endpoint"]).model_info(req["repo"], revision=req["revision"], files_metadata=True)
    commit = info.sha or req["revision"]
    listed = [RepoFile(path=s.rfilename, size=int(s.size or (s.lfs.size if s.lfs else 0) or 0),
                       sha256=s.lfs.sha256 if s.lfs else None, blob_id=s.blob_id) for s in info.siblings or []]
    keep, skip = select_files(listed, include_all=bool(req.get("include_all")))
    files, present = [], []
    for f in keep:
        if _is_present(req, commit, f):
            present.append(f.path)
        elif f.sha256:
            # The data path: where this endpoint really sends the bytes (checked before any download).
            meta = _head(req["repo"], f.path, commit, req["endpoint"])
            host = urlsplit(meta.location).hostname
            f = RepoFile(f.path, int(meta.size or f.size), f.sha256, f.blob_id, host)
        files.append(f.__dict__)
    return {"commit": info.sha, "gated": bool(info.gated), "files": files, "present": present,
            "skipped": [f.__dict__ for f in skip]}


#: Transient failures in a row (no byte received in between) before a transfer gives up, as
#: huggingface_hub's own http_get allows.
RETRIES = 5


def _transient(e: BaseException) -> bool:
    # httpx (hub 1.x) and httpx2 (hub 2.x) both raise TransportError subclasses for dropped
    # connections and timeouts; matched by name so that either client works.
    return any(c.__name__ == "TransportError" for c in type(e).__mro__)


def _append_range(url: str, partial: Path, size: int, headers: Mapping[str, str], label: str) -> None:
    """Append `url`'s bytes to `partial` from its current length up to `size` (`Range: bytes=N-`).

    Every received byte is written at once (unbuffered), so whatever reached the disk is what the
    next run resumes from, even after SIGKILL. A dropped connection is resumed in place.
    """
    from huggingface_hub import constants, get_session, hf_raise_for_status

    failures = 0
    with partial.open("ab", buffering=0) as fh:
        _progress(label, fh.tell(), size)
        while fh.tell() < size:
            start = fh.tell()
            ask = {**headers, "Range": f"bytes={start}-"} if start else dict(headers)
            try:
                with get_session().stream("GET", url, headers=ask, follow_redirects=True,
                                          timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                    hf_raise_for_status(response)
                    if start and response.status_code != 206:   # the server ignored the range: start over
                        fh.seek(0)
                        fh.truncate()
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
                        _progress(label, fh.tell(), size)
                        failures = 0
                break         # the body ended: complete, or short (said below), never asked again
            except Exception as e:
                failures += 1
                if not _transient(e) or failures > RETRIES:
                    raise
                time.sleep(1)
        if fh.tell() != size:
            raise _IntegrityError(f"{label}: the server sent {fh.tell()} bytes, the hub lists {size}")


def _fetch_lfs(req: Mapping[str, Any], f: RepoFile, target: Path, local: bool) -> int:
    """Fetch (or resume) weight file `f` into its place; its size."""
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    repo, endpoint = req["repo"], req["endpoint"]
    ep = Endpoint(endpoint, "request")
    meta = _head(repo, f.path, req["commit"], endpoint)
    if data_host_verdict(ep, meta.location) == "hub":
        raise _HostError(f"{endpoint} hands {f.path} to {urlsplit(meta.location).hostname}: the bytes would come "
                         "from Hugging Face, not from the mirror")
    partial = partial_path(target, repo, f, local)
    partial.parent.mkdir(parents=True, exist_ok=True)
    size = int(meta.size or f.size)
    if partial.is_file() and partial.stat().st_size > size:
        partial.unlink()          # a stale partial longer than the file would get 416 forever (hub#2197)
    headers = build_hf_headers()
    if urlsplit(meta.location).hostname != ep.host:
        headers.pop("authorization", None)   # never send the token to a CDN (as file_download does)
    _append_range(meta.location, partial, size, headers, f.path)
    if f.sha256 and sha256_file(partial) != f.sha256:
        partial.unlink()
        raise _IntegrityError(f"{f.path}: the downloaded bytes do not match the sha256 the hub lists")
    if local:
        dest = target / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
    else:
        # The blob the cache would hold; hf_hub_download then only links it into the snapshot.
        dest = repo_cache_folder(target, repo) / "blobs" / f.sha256  # type: ignore[operator]
    os.replace(partial, dest)
    return size


def _op_fetch(req: Mapping[str, Any]) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    repo, commit, endpoint, revision = req["repo"], req["commit"], req["endpoint"], req["revision"]
    target, local = Path(req["target"]), bool(req["local_dir"])
    where: dict[str, Any] = {"local_dir": str(target)} if local else {"cache_dir": str(target)}
    # Weights first, so the small files (config.json) last mark a complete folder.
    files = sorted((RepoFile(**f) for f in req["files"]), key=lambda f: f.sha256 is None)
    folder = target
    for f in files:
        if f.sha256:
            size = _fetch_lfs(req, f, target, local)
        else:
            _progress(f.path, 0, f.size)      # a small file comes whole: its bar starts and ends
        # For a fetched weight file this only links it (cache) or records its etag (local dir).
        path = hf_hub_download(repo, f.path, revision=commit, endpoint=endpoint, **where)
        if not f.sha256:
            size = os.path.getsize(path)
        _progress(f.path, size, size, final=True)
        folder = Path(path).parents[f.path.count("/")]      # the snapshot (or local) folder
    if files and not local and not COMMIT_HASH.match(revision):
        # Record the branch (refs/<revision>) the library's way: asked by branch, it writes the ref and
        # returns the file already linked. Only while the branch still names the fetched commit.
        last = files[-1].path
        ahead = hf_hub_download(repo, last, revision=revision, endpoint=endpoint, dry_run=True, **where)
        if ahead.commit_hash == commit:
            hf_hub_download(repo, last, revision=revision, endpoint=endpoint, **where)
    return {"path": str(folder)}


def _op_cached(req: Mapping[str, Any]) -> dict[str, Any]:
    """The cached snapshot folder of `repo` at `revision` holding config.json, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(req["repo"], "config.json", cache_dir=req["cache_dir"], revision=req["revision"])
    return {"snapshot": str(Path(found).parent) if isinstance(found, str) else None}


def _op_model(req: Mapping[str, Any]) -> dict[str, Any]:
    """config.json (through the cache) and every tensor's dtype and shape from the safetensors headers.

    `get_safetensors_metadata` reads only the headers (HTTP Range requests), never the weights. When
    they cannot be read, `tensors` is None and `tensors_problem` says why (the parent falls back to
    config.json arithmetic); a failure to get config.json is an error.
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import errors as hf

    repo, revision, endpoint = req["repo"], req["revision"], req["endpoint"]
    config = hf_hub_download(repo, "config.json", revision=revision, endpoint=endpoint, cache_dir=req["cache_dir"])
    tensors: list[list[Any]] | None = None
    problem = None
    try:
        meta = HfApi(endpoint=endpoint).get_safetensors_metadata(repo, revision=revision)
        tensors = [[name, t.dtype, list(t.shape)] for file in meta.files_metadata.values()
                   for name, t in file.tensors.items()]
    except hf.NotASafetensorsRepoError:
        problem = "the repository has no model.safetensors or model.safetensors.index.json"
    except hf.SafetensorsParsingError as e:
        problem = f"a safetensors header could not be parsed ({str(e).strip().splitlines()[0]})"
    except Exception as e:
        found = _classify(e)
        if found is None:
            raise
        problem = ("the hub is switched off (HF_HUB_OFFLINE)" if found["kind"] == "offline"
                   else f"{found['message']}" + (f" (HTTP {found['status']})" if found["status"] else ""))
    return {"config": config, "tensors": tensors, "tensors_problem": problem}


_OPS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {"plan": _op_plan, "fetch": _op_fetch,
                                                                    "cached": _op_cached, "model": _op_model}


def _worker_main() -> int:
    # stdout becomes the progress channel alone: a private copy of it carries the events, and fd 1
    # (anything else that prints) goes to stderr, so no stray print can corrupt an event line.
    _progress.out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
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
