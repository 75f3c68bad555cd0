"""A local stand-in for a PyTorch wheel index on 127.0.0.1: PEP 503 simple pages, PEP 658 metadata files,
and the wheels themselves (HEAD with Content-Length, GET with `Range: bytes=N-`).

Why a stand-in: the PyTorch indexes cannot be reached from the test machines (only the package
registries can), and a real index cannot be told to stall mid-file. The wheels are small but real
(zip files with METADATA, WHEEL and RECORD): uv resolves them from their metadata like any other.
Knobs: `stall_at` (byte offsets of a wheel: send up to each one once, then hold the connection until
`release()` or a bounded wait, then close it). Every request is logged in `requests` as
(method, path, Range header or None). Threads are daemons; `stop()` ends them.
"""
from __future__ import annotations

import base64
import hashlib
import io
import random
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STALL_TIMEOUT = 30.0


def make_wheel(name: str, version: str, tag: str, requires: list[str], *, payload: int = 0) -> tuple[str, bytes, bytes]:
    """(filename, wheel bytes, METADATA bytes) of a minimal real wheel; `payload` bytes of seeded random
    data in an uncompressed file make it as large as a test needs."""
    dist = f"{name}-{version}.dist-info"
    metadata = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                          *(f"Requires-Dist: {r}" for r in requires), ""]).encode()
    purelib = str(tag.endswith("-any")).lower()
    wheel = f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: {purelib}\nTag: {tag}\n".encode()
    files = {f"{name}/__init__.py": f"__version__ = {version!r}\n".encode(), f"{dist}/METADATA": metadata,
             f"{dist}/WHEEL": wheel}
    if payload:
        files[f"{name}/_payload.bin"] = random.Random(0).randbytes(payload)
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            z.writestr(info, data)
    return f"{name}-{version}-{tag}.whl", buffer.getvalue(), metadata


@dataclass
class IndexWheel:
    project: str
    filename: str
    data: bytes
    metadata: bytes
    stall_at: list[int] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        return

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _send(self, status: int, body: bytes, content_type: str, head: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        index = self.server.index
        index.requests.append((self.command, self.path, self.headers.get("Range")))
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        if len(parts) == 2 and parts[0] == "simple":
            wheels = [w for w in index.wheels if w.project == parts[1]]
            if not wheels:
                self._send(404, b"not found", "text/plain", head)
                return
            links = "".join(
                f'<a href="../../files/{w.filename}#sha256={w.sha256}" data-core-metadata="sha256='
                f'{hashlib.sha256(w.metadata).hexdigest()}" data-dist-info-metadata="sha256='
                f'{hashlib.sha256(w.metadata).hexdigest()}">{w.filename}</a><br/>\n' for w in wheels)
            self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode(), "text/html", head)
            return
        if len(parts) == 2 and parts[0] == "files":
            name = parts[1]
            for w in index.wheels:
                if name == w.filename + ".metadata":
                    self._send(200, w.metadata, "application/octet-stream", head)
                    return
                if name == w.filename:
                    self._file(w, head)
                    return
        self._send(404, b"not found", "text/plain", head)

    def _file(self, w: IndexWheel, head: bool) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng[6:].endswith("-"):
            start = int(rng[6:-1])
        body = w.data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(w.data) - 1}/{len(w.data)}")
        self.end_headers()
        if head:
            return
        stall = next((s for s in w.stall_at if s > start), None)
        if stall is None:
            self.wfile.write(body)
            return
        w.stall_at.remove(stall)
        self.wfile.write(w.data[start:stall])
        self.wfile.flush()
        self.server.index.release_event.wait(STALL_TIMEOUT)
        self.server.index.release_event.clear()
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    index: PyIndex


class PyIndex:
    """The server; `url` is the simple index's URL (give it as --index-url)."""

    def __init__(self, wheels: list[IndexWheel]) -> None:
        self.wheels = wheels
        self.requests: list[tuple[str, str, str | None]] = []
        self.release_event = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.index = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/simple"

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        self.release_event.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def gets(self, filename: str) -> list[str | None]:
        """The Range header of every GET of `filename` (None: the whole file)."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + filename)]
