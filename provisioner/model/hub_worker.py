"""The hub worker: `python -m provisioner.model.hub_worker`, the one place huggingface_hub is imported.

huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET once, when it is first imported
(huggingface_hub/constants.py), so it runs in a child interpreter started by provisioner.model.download with
exactly the environment the parent computed. It reads one JSON request on stdin and writes a JSON result
file; a known failure is `{"error": {"kind", "status", "message"}}` for the parent to explain.

Resuming: huggingface_hub 2.4 downloads into a per-process temporary file that it deletes when the
transfer fails (file_download.py `_download_to_tmp_and_move`), so an interrupted run starts over
(huggingface/huggingface_hub#4196). Weight files (LFS) therefore go through `http_get` into our own
`<blob>.incomplete` file, continued with `Range: bytes=N-` on the next run, checked against the
sha256 the hub publishes, then handed to `hf_hub_download`, which links it into the cache (or writes
its local-dir metadata) without downloading again. Small files go through `hf_hub_download` directly.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioner.model.hub import (COMMIT_HASH, Endpoint, RepoFile, data_host_verdict, partial_path,
                                   repo_cache_folder, select_files)


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
    partial = partial_path(target, repo, f, local)
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
    if not local and not COMMIT_HASH.match(req["revision"]):
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
