"""A local stand-in for the Hugging Face hub on 127.0.0.1: the calls huggingface_hub makes to download.

Why a fake: the hub cannot be reached from the tests, and a real hub cannot be told to fail on cue.
It answers what huggingface_hub 1.0 to 2.4 ask (read from their hf_api.py / file_download.py):
- `GET /api/models/{repo}/revision/{rev}?blobs=true` (HfApi.model_info(files_metadata=True)): JSON with
  `sha` and `siblings` [{rfilename, size, blobId, lfs: {size, sha256, pointerSize}}].
- `HEAD|GET /{repo}/resolve/{rev}/{file}` (get_hf_file_metadata, hf_hub_download, the worker's ranged
  GET): `X-Repo-Commit`, `ETag` (git blob id, or the sha256 for LFS files), `X-Linked-Etag`/`X-Linked-Size`
  for LFS files, `Content-Length`, and `Range: bytes=N-` or `bytes=N-M` answered 206 with `Content-Range`.
- HfApi.get_safetensors_metadata: HEAD `model.safetensors` (404 EntryNotFound in a sharded repo), else
  HEAD + GET `model.safetensors.index.json`; then per file `GET` with `Range: bytes=0-100000` (the
  end past the file's size is clamped, as HTTP says) and, for a longer header, `Range: bytes=8-N`.
- errors the way hf_raise_for_status classifies them: `X-Error-Code: RepoNotFound | RevisionNotFound |
  EntryNotFound | GatedRepo` with `X-Error-Message`.
Knobs: `missing` (404 repos), `gated` (repo -> 401/403 on file access), `ignore_range` (answer a
Range request with the whole file, 200, as some proxies and CDNs do), `drop_after` (close the
connection after N body bytes, once per file), `stall_after` (send N bytes, then wait for `release()`,
bounded, then close), `redirect_lfs_to` (answer LFS files with a 302 to another base URL, as a CDN).
Every request is logged in `requests`. Threads are daemons; waits have timeouts; `stop()` ends all.
"""
from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".onnx", ".onnx_data", ".msgpack", ".h5", ".pt", ".pth")
STALL_TIMEOUT = 15.0


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob, what the hub reports as blobId / ETag for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    gated: int | None = None            # 401 or 403 on file access, as a gated repo answers
    branches: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + self.files[name])
        self.commit = digest.hexdigest()
        self.branches.setdefault("main", self.commit)
        self._etags = {p: hashlib.sha256(d).hexdigest() if self.is_lfs(p) else git_blob_id(d)
                       for p, d in self.files.items()}

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def etag(self, path: str) -> str:
        return self._etags[path]

    def sibling(self, path: str) -> dict[str, Any]:
        data = self.files[path]
        entry: dict[str, Any] = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        if self.is_lfs(path):
            entry["lfs"] = {"size": len(data), "sha256": self.etag(path), "pointerSize": 134}
        return entry

    def resolve_revision(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        return rev if rev == self.commit else None


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], seed: int = 0) -> bytes:
    """A valid safetensors file (8-byte header length, JSON header, data) with seeded random data."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + random.Random(seed).randbytes(offset)


# Big enough (about 23 MB) that a transfer spans several of huggingface_hub's 10 MiB write chunks
# (constants.DOWNLOAD_CHUNK_SIZE): bytes reach the disk per chunk, so resuming needs more than one.
TINY_CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 256,
               "intermediate_size": 704, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 40000, "max_position_embeddings": 512,
               "tie_word_embeddings": True, "dtype": "bfloat16", "rms_norm_eps": 1e-6}


def tiny_tensors(cfg: dict[str, Any] = TINY_CONFIG) -> dict[str, tuple[str, list[int]]]:
    """Qwen2 tensor names and shapes for cfg (what save_pretrained writes), all BF16."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    t: dict[str, tuple[str, list[int]]] = {"model.embed_tokens.weight": ("BF16", [v, h])}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        t.update({p + "input_layernorm.weight": ("BF16", [h]), p + "post_attention_layernorm.weight": ("BF16", [h]),
                  p + "self_attn.q_proj.weight": ("BF16", [q, h]), p + "self_attn.q_proj.bias": ("BF16", [q]),
                  p + "self_attn.k_proj.weight": ("BF16", [kv, h]), p + "self_attn.k_proj.bias": ("BF16", [kv]),
                  p + "self_attn.v_proj.weight": ("BF16", [kv, h]), p + "self_attn.v_proj.bias": ("BF16", [kv]),
                  p + "self_attn.o_proj.weight": ("BF16", [h, q]),
                  p + "mlp.gate_proj.weight": ("BF16", [i, h]), p + "mlp.up_proj.weight": ("BF16", [i, h]),
                  p + "mlp.down_proj.weight": ("BF16", [h, i])})
    t["model.norm.weight"] = ("BF16", [h])
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = ("BF16", [v, h])
    return t


def tiny_repo(repo_id: str = "acme/tiny-qwen2", **kw: Any) -> Repo:
    """A ~23 MB Qwen2 repository: what a load needs, plus the duplicates and extras a download skips."""
    weights = safetensors_bytes(tiny_tensors())
    rnd = random.Random(1)
    files = {
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"# tiny-qwen2\nA test model.\n",
        "LICENSE": b"Apache-2.0\n",
        "config.json": json.dumps(TINY_CONFIG, indent=2).encode(),
        "generation_config.json": b'{"eos_token_id": 2, "pad_token_id": 0}\n',
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}\n',
        "tokenizer_config.json": b'{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}\n',
        "vocab.json": b"{}\n",
        "merges.txt": b"#version: 0.2\n",
        "chat_template.jinja": b"{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               b"{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "model.safetensors": weights,
        "pytorch_model.bin": rnd.randbytes(4096),
        "model-q4_k_m.gguf": rnd.randbytes(8192),
        "onnx/model.onnx": rnd.randbytes(2048),
        "flax_model.msgpack": rnd.randbytes(1024),
        "tf_model.h5": rnd.randbytes(1024),
    }
    return Repo(repo_id, files, **kw)


def sharded_repo(repo_id: str = "acme/tiny-qwen2-sharded", shards: int = 2, **kw: Any) -> Repo:
    """tiny_repo's model saved the way save_pretrained shards it: `model-0000i-of-0000n.safetensors`
    plus `model.safetensors.index.json` (metadata.total_size and the tensor -> file weight_map)."""
    tensors = list(tiny_tensors().items())
    files = {k: v for k, v in tiny_repo(repo_id).files.items() if k != "model.safetensors"}
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = dict(tensors[i::shards])
        data = safetensors_bytes(part, seed=i)
        files[name] = data
        total += len(data)
        weight_map.update({t: name for t in part})
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2).encode()
    return Repo(repo_id, files, **kw)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- helpers ---------------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, head: bool) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, headers, json.dumps({"error": message}).encode(), head)

    def _route(self, head: bool) -> None:
        srv = self.server.hub
        path = unquote(urlsplit(self.path).path)
        srv.requests.append((self.command, path, self.headers.get("Range")))
        try:
            if path.startswith("/api/models/"):
                self._api(path[len("/api/models/"):], head)
            elif path.startswith("/cdn/"):
                _, _, repo_org, repo_name, sha = path.split("/", 4)
                repo = srv.repos.get(f"{repo_org}/{repo_name}")
                match = [p for p in (repo.files if repo else {}) if repo and repo.etag(p) == sha]
                if not repo or not match:
                    self._error(404, None, "not found", head)
                else:
                    self._file(repo, match[0], repo.commit, head)
            elif "/resolve/" in path:
                repo_part, rest = path.lstrip("/").split("/resolve/", 1)
                rev, _, filename = rest.partition("/")
                self._resolve(repo_part, rev, filename, head)
            else:
                self._error(404, None, "unknown route", head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _repo(self, repo_id: str, head: bool) -> Repo | None:
        srv = self.server.hub
        repo = srv.repos.get(repo_id)
        if repo is None or repo_id in srv.missing:
            self._error(404, "RepoNotFound", "Repository not found", head)
            return None
        return repo

    def _api(self, rest: str, head: bool) -> None:
        repo_id, _, rev = rest.partition("/revision/")
        repo = self._repo(repo_id.rstrip("/"), head)
        if repo is None:
            return
        commit = repo.resolve_revision(rev or "main")
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return
        doc = {"_id": "0" * 24, "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit, "private": False,
               "gated": "manual" if repo.gated else False, "disabled": False, "tags": [],
               "library_name": "transformers", "lastModified": "2026-01-01T00:00:00.000Z",
               "siblings": [repo.sibling(p) for p in sorted(repo.files)]}
        self._send(200, {"Content-Type": "application/json"}, json.dumps(doc).encode(), head)

    def _resolve(self, repo_id: str, rev: str, filename: str, head: bool) -> None:
        srv = self.server.hub
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        commit = repo.resolve_revision(rev)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return
        if repo.gated == 401:
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                        "and be authenticated to access it. Please log in.", head)
            return
        if repo.gated == 403:
            self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                        f"authorized list. Visit {srv.url}/{repo_id} to ask for access.", head)
            return
        if filename not in repo.files:
            self._send(404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                             "X-Repo-Commit": commit}, b"", head)
            return
        if repo.is_lfs(filename) and srv.redirect_lfs_to:
            data = repo.files[filename]
            etag = repo.etag(filename)
            self._send(302, {"Location": f"{srv.redirect_lfs_to}/cdn/{repo_id}/{etag}", "X-Repo-Commit": commit,
                             "ETag": f'"{git_blob_id(data)}"', "X-Linked-Etag": f'"{etag}"',
                             "X-Linked-Size": str(len(data))}, b"", head)
            return
        self._file(repo, filename, commit, head)

    def _file(self, repo: Repo, filename: str, commit: str, head: bool) -> None:
        srv = self.server.hub
        data = repo.files[filename]
        etag = repo.etag(filename)
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{etag}"', "X-Repo-Commit": commit,
                   "Accept-Ranges": "bytes"}
        if repo.is_lfs(filename):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head and not srv.ignore_range:
            first, _, last = rng[len("bytes="):].partition("-")
            start = int(first)
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            if start >= len(data):
                self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", head)
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        headers["Content-Length"] = str(len(data))
        if head:
            self._send(status, headers, b"", head=True)
            return
        cut = srv.drop_after.pop(filename, None)
        stall = srv.stall_after.pop(filename, None)
        if cut is None and stall is None:
            self._send(status, headers, data)
            return
        # Send part of the body, then (after a stall) drop the connection mid-transfer.
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        n = cut if cut is not None else stall
        assert n is not None
        self.wfile.write(data[:n])
        self.wfile.flush()
        if stall is not None:
            srv.stalled.set()
            srv._release.wait(STALL_TIMEOUT)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubServer


class HubServer:
    """Serve `repos` on 127.0.0.1 (a free port) until `stop()`."""

    def __init__(self, repos: list[Repo], host: str = "127.0.0.1") -> None:
        self.repos = {r.repo_id: r for r in repos}
        self.missing: set[str] = set()
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        self.stall_after: dict[str, int] = {}
        self.redirect_lfs_to: str | None = None
        self.requests: list[tuple[str, str, str | None]] = []
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        """Let a stalled transfer end (it then drops the connection)."""
        self._release.set()

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then closed): an unreachable endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
