"""Fetch one file by URL into a bundle: file:// and local paths are copied, http(s) is downloaded; either
way into `<name>.part`, continued from its length on the next run (an HTTP Range request), checked
against the expected sha256 and only then renamed into place."""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from provisioner.errors import ProvisionError
from provisioner.fsio import sha256_file
from provisioner.redact import mask_urls

#: `update(name, bytes_done, bytes_total or None)`: the hook cli/ui.py's transfer() yields.
Transfer = Callable[[str, int, Optional[int]], None]
CHUNK = 1 << 20
TIMEOUT = 60                     # seconds without a byte before a download fails (a re-run resumes it)
USER_AGENT = "provision-bundle"


@dataclass(frozen=True)
class Fetched:
    path: Path
    status: str                  # "present" | "fetched" | "resumed"
    bytes: int                   # transferred by this call
    resumed_from: int = 0


def local_path(url: str) -> Path | None:
    """The file a file:// URL (or a plain path) names; None for a network URL."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "":
        return Path(url)
    return None


def _request(url: str, headers: dict[str, str], method: str = "GET") -> urllib.request.Request:
    """A request with the URL's user:password moved into a Basic header (urllib does not do it)."""
    parts = urlsplit(url)
    headers = {"User-Agent": USER_AGENT, **headers}
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return urllib.request.Request(url, headers=headers, method=method)


def remote_size(url: str, *, timeout: float = TIMEOUT) -> int | None:
    """A file's size without fetching it: stat for a local file, an HTTP HEAD's Content-Length."""
    path = local_path(url)
    if path is not None:
        return path.stat().st_size if path.is_file() else None
    try:
        with urllib.request.urlopen(_request(url, {}, "HEAD"), timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None
    except (OSError, ValueError):
        return None


def _hash_prefix(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    if path.exists():
        with path.open("rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
    return digest


def fetch(url: str, dest: Path, *, sha256: str, size: int | None = None, name: str | None = None,
          progress: Transfer | None = None, timeout: float = TIMEOUT) -> Fetched:
    """`dest` holding exactly the bytes whose sha256 is `sha256`, fetched from `url` if it is not there yet.

    A `dest` already there with that sha256 is left alone ("present"). Otherwise the bytes go to
    `dest.part`, continuing a part left by an interrupted run; a finished part with another sha256 is
    deleted and the error names the URL (the next run starts that file afresh).
    """
    label = name or dest.name
    say = progress or (lambda _n, _d, _t: None)
    if dest.is_file() and (size is None or dest.stat().st_size == size) and sha256_file(dest) == sha256:
        return Fetched(dest, "present", 0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    if size is not None and start > size:
        part.unlink()
        start = 0
    digest = _hash_prefix(part)
    source = local_path(url)
    if source is not None:
        done = _copy(source, part, start, digest, label, say)
    else:
        done, start, digest = _download(url, part, start, digest, label, say, timeout)
    found = digest.hexdigest()
    if found != sha256:
        part.unlink(missing_ok=True)
        raise ProvisionError(f"{label}: the bytes from {mask_urls(url)} have sha256 {found[:16]}..., the lock "
                             f"says {sha256[:16]}...; the file was removed",
                             hint="run the same command again; if it happens again the index serves another "
                                  "file than the one it listed (a changed mirror, or a proxy rewriting it)")
    os.replace(part, dest)
    return Fetched(dest, "resumed" if start else "fetched", done, start)


def _pump(src: BinaryIO, part: Path, start: int, total: int | None, digest: hashlib._Hash, label: str,
          say: Transfer) -> int:
    done = 0
    # read1: what has arrived, not a full chunk (a slow server still moves the bar and the part file);
    # each block is flushed, so a killed run leaves a part file that is exactly the bytes it got
    read = getattr(src, "read1", src.read)
    with part.open("ab" if start else "wb") as out:
        say(label, start, total)
        for block in iter(lambda: read(CHUNK), b""):
            out.write(block)
            out.flush()
            digest.update(block)
            done += len(block)
            say(label, start + done, total)
        os.fsync(out.fileno())
    return done


def _copy(source: Path, part: Path, start: int, digest: hashlib._Hash, label: str, say: Transfer) -> int:
    try:
        total = source.stat().st_size
        with source.open("rb") as src:
            src.seek(start)
            return _pump(src, part, start, total, digest, label, say)
    except OSError as e:
        raise ProvisionError(f"cannot copy {source}: {e.strerror or e}",
                             hint="the wheel folder the lock names must stay readable until the bundle is made") from None


def _download(url: str, part: Path, start: int, digest: hashlib._Hash, label: str, say: Transfer,
              timeout: float) -> tuple[int, int, hashlib._Hash]:
    headers = {"Range": f"bytes={start}-"} if start else {}
    shown = mask_urls(url)
    try:
        with urllib.request.urlopen(_request(url, headers), timeout=timeout) as resp:
            if start and resp.status != 206:
                # the server ignored the Range: start over (the part is rewritten from byte 0)
                start, digest = 0, hashlib.sha256()
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            return _pump(resp, part, start, total, digest, label, say), start, digest
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            part.unlink(missing_ok=True)       # the part is longer than the file: start afresh next time
        raise ProvisionError(f"{label}: {shown} answered HTTP {e.code} {e.reason}",
                             hint="check that the index still serves this file (and your credentials for a private "
                                  "index); then run the same command again: it resumes") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise ProvisionError(f"{label}: cannot download {shown}: {reason}",
                             hint="check the network and proxy (HTTPS_PROXY); run the same command again: it "
                                  "continues from the bytes already fetched") from None


def copy_file(source: Path, dest: Path) -> None:
    """A local file into the bundle, through a temporary name (a killed copy leaves no half file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)

