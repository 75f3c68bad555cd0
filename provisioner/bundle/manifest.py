"""manifest.json: what a bundle holds (every file's path, size and sha256) and for which target.

The manifest also carries `body_sha256`, the sha256 of its own body (the document without that key,
as canonical JSON). Nothing is signed: the checksum catches a manifest edited by hand or by a tool
that does not know about it, and the pylock.toml it lists (whose wheel hashes must agree with the
manifest's) catches a wheel swapped with its manifest entry. Someone who rewrites the manifest, the
pylock and the checksum together is caught only by comparing the manifest's sha256 with the one
`bundle create` printed (`provision bundle verify --manifest-sha256 HEX`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provisioner.errors import ProvisionError

MANIFEST_NAME = "manifest.json"
FORMAT = "provision-bundle"
FORMAT_VERSION = 1
#: Inside a bundle: the install lock (wheels by relative path), the same lock by URL (what an online
#: build records), provision's lock file, the profile, provision's own lock, and the two folders.
PYLOCK = "pylock.toml"
URL_PYLOCK = "lock/pylock.toml"
LOCK = "provision.lock.json"
PROFILE = "profile.yaml"
TOOL_PYLOCK = "tool/pylock.toml"
WHEELS = "wheels"
MODEL = "model"
#: Bookkeeping inside a bundle folder that is never part of it (not listed, not tarred).
IGNORED = (".provision-bundle.lock", f"{MODEL}/.cache")


def body_sha256(doc: Mapping[str, Any]) -> str:
    """sha256 of the manifest without its `body_sha256` key, as sorted, compact JSON."""
    body = {k: v for k, v in doc.items() if k != "body_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str                  # relative to the bundle, '/'-separated
    size: int
    sha256: str
    kind: str                  # wheel | model | lock | profile

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "kind": self.kind}


@dataclass(frozen=True)
class Manifest:
    profile: str
    variant: str               # cpu | cu126
    cuda: str | None
    python: str                # 3.11
    platform: str              # manylinux_2_28_x86_64
    created: str
    created_by: str            # "provision 0.3.0"
    torch: tuple[str, ...]     # torch==2.13.0+cpu
    model: Mapping[str, Any] | None
    tool: Mapping[str, Any] | None
    files: tuple[FileEntry, ...]
    sha256: str = ""           # of the manifest file as written (what `bundle create` prints)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def entry(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT, "version": FORMAT_VERSION, "created": self.created, "created_by": self.created_by,
            "profile": {"name": self.profile, "variant": self.variant, "cuda": self.cuda},
            "python": self.python, "platform": self.platform, "torch": list(self.torch),
            "model": dict(self.model) if self.model else None, "tool": dict(self.tool) if self.tool else None,
            "install": {"pylock": PYLOCK, "lock": LOCK, "profile": PROFILE, "wheels": WHEELS},
            "files": [f.to_dict() for f in sorted(self.files, key=lambda f: f.path)],
            "total_bytes": self.total_bytes,
        }
        doc["body_sha256"] = body_sha256(doc)
        return doc


def dumps(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()


def parse(data: bytes, where: str) -> Manifest:
    """A manifest from its bytes; ProvisionError naming `where` for anything that is not one.
    A body that no longer matches its checksum parses; verify reports it."""
    hint = "this is not a bundle written by `provision bundle create` (or its manifest is damaged): create it again"
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProvisionError(f"{where}: not a JSON manifest ({e})", hint=hint) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProvisionError(f"{where}: not a provision bundle manifest", hint=hint)
    if doc.get("version") != FORMAT_VERSION:
        raise ProvisionError(f"{where}: bundle format version {doc.get('version')!r}; this provision reads "
                             f"version {FORMAT_VERSION}", hint="use the provision that is inside the bundle "
                             "(see `provision bundle list`)")
    try:
        prof = doc["profile"]
        files = tuple(FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"]), str(f.get("kind") or "file"))
                      for f in doc["files"])
        return Manifest(
            profile=str(prof["name"]), variant=str(prof["variant"]),
            cuda=str(prof["cuda"]) if prof.get("cuda") else None, python=str(doc["python"]),
            platform=str(doc["platform"]), created=str(doc.get("created") or ""),
            created_by=str(doc.get("created_by") or "?"), torch=tuple(str(t) for t in doc.get("torch") or ()),
            model=dict(doc["model"]) if isinstance(doc.get("model"), dict) else None,
            tool=dict(doc["tool"]) if isinstance(doc.get("tool"), dict) else None,
            files=files, sha256=hashlib.sha256(data).hexdigest(), raw=doc)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProvisionError(f"{where}: invalid manifest ({type(e).__name__}: {e})", hint=hint) from None


def safe_relative(path: str) -> bool:
    """A manifest path stays inside the bundle: relative, no '..', no backslashes or empty parts."""
    parts = path.split("/")
    return (bool(path) and not path.startswith("/") and "\\" not in path
            and all(p not in ("", ".", "..") for p in parts))
