"""`bundle verify` and `bundle list`: read a bundle (a folder, or the tar `bundle create -o X.tar` wrote)
and judge it: every file the manifest lists is there with its size and sha256, the manifest still
matches its own checksum, and the locks agree with it. A tar is read as a stream, never unpacked."""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from provisioner.bundle import manifest as mf
from provisioner.bundle.resolve import lock_hashes
from provisioner.errors import ProvisionError
from provisioner.report import Check, Status
from provisioner.units import human_bytes

NOT_A_BUNDLE = "give the folder or the .tar that `provision bundle create` wrote"
#: The small files read whole for the consistency checks.
LOCK_FILES = (mf.PYLOCK, mf.TOOL_PYLOCK, mf.LOCK)


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str            # missing | truncated | altered | unsafe | unreadable | unlisted | edited | inconsistent
    detail: str

    def line(self) -> str:
        return f"{self.path}: {self.kind}" + (f" ({self.detail})" if self.detail else "")

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class BundleReport:
    path: Path
    manifest: mf.Manifest
    problems: tuple[Problem, ...]          # each one makes the bundle unusable
    unlisted: tuple[Problem, ...]          # files the manifest does not list (ignored by installs)
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.path), "manifest_sha256": self.manifest.sha256, "ok": self.ok,
                "problems": [p.to_dict() for p in self.problems],
                "unlisted": [p.path for p in self.unlisted]}

    def refusal(self, what: str) -> ProvisionError:
        lines = "\n".join(f"    {p.line()}" for p in self.problems[:12])
        more = f"\n    (and {len(self.problems) - 12} more)" if len(self.problems) > 12 else ""
        return ProvisionError(f"bundle {self.path} failed verification; {what}:\n{lines}{more}",
                              hint="copy the bundle again from the machine that made it (or re-run `provision "
                                   "bundle create` there: it fetches only what is missing), then check it with "
                                   "`provision bundle verify`")


def is_tar(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def read_manifest(path: Path) -> mf.Manifest:
    """The manifest of a bundle folder or tar (nothing else is read)."""
    if path.is_dir():
        where = path / mf.MANIFEST_NAME
        if not where.is_file():
            raise ProvisionError(f"{path} holds no {mf.MANIFEST_NAME}: not a bundle, or one whose "
                                 "`bundle create` did not finish", hint=NOT_A_BUNDLE + " (a re-run finishes it)")
        return mf.parse(where.read_bytes(), str(where))
    if not path.exists():
        raise ProvisionError(f"no bundle at {path}", hint=NOT_A_BUNDLE)
    if not is_tar(path):
        raise ProvisionError(f"{path} is neither a bundle folder nor a readable tar (a damaged copy?)",
                             hint=NOT_A_BUNDLE)
    try:
        with tarfile.open(path) as tar:
            try:
                member = tar.getmember(mf.MANIFEST_NAME)
                f = tar.extractfile(member)
            except KeyError:
                f = None
            if f is None:
                raise ProvisionError(f"{path} holds no {mf.MANIFEST_NAME}: not a bundle", hint=NOT_A_BUNDLE)
            return mf.parse(f.read(), f"{path}:{mf.MANIFEST_NAME}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ProvisionError(f"{path}: the tar cannot be read ({e})", hint=NOT_A_BUNDLE + "; copy it again") from None


def _digest(f: IO[bytes]) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
        n += len(block)
    return n, h.hexdigest()


def _dir_files(folder: Path) -> Iterator[tuple[str, Path]]:
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not any(rel == i or rel.startswith(i + "/") for i in mf.IGNORED):
            yield rel, p


def _scan(path: Path) -> tuple[dict[str, tuple[int, str]], dict[str, bytes], list[Problem]]:
    """(relative path -> (size, sha256), the lock files' bytes, problems of the tar itself) of a folder or tar."""
    found: dict[str, tuple[int, str]] = {}
    texts: dict[str, bytes] = {}
    unsafe: list[Problem] = []
    if path.is_dir():
        for rel, p in _dir_files(path):
            if rel in LOCK_FILES:
                texts[rel] = p.read_bytes()
            with p.open("rb") as fh:
                found[rel] = _digest(fh)
        return found, texts, unsafe
    try:
        _scan_tar(path, found, texts, unsafe)
    except (tarfile.TarError, OSError, EOFError) as e:
        # a damaged header ends the listing: whatever was not reached is reported missing
        unsafe.append(Problem(path.name, "unreadable", f"the tar cannot be read past {len(found)} files: {e}"))
    return found, texts, unsafe


def _scan_tar(path: Path, found: dict[str, tuple[int, str]], texts: dict[str, bytes], unsafe: list[Problem]) -> None:
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            if not mf.safe_relative(member.name):
                unsafe.append(Problem(member.name, "unsafe", "a tar member outside the bundle"))
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            if member.name in LOCK_FILES:
                data = f.read()
                texts[member.name] = data
                found[member.name] = (len(data), hashlib.sha256(data).hexdigest())
            else:
                found[member.name] = _digest(f)


def verify(path: Path, *, expect_sha256: str | None = None) -> BundleReport:
    """Every check of a bundle; raises only when there is no readable manifest at all."""
    manifest = read_manifest(path)
    problems: list[Problem] = []
    checks: list[Check] = []
    # 1. the manifest itself
    edited = mf.body_sha256(manifest.raw) != manifest.raw.get("body_sha256")
    if edited:
        problems.append(Problem(mf.MANIFEST_NAME, "edited", "its body no longer matches the body_sha256 "
                                "`bundle create` wrote into it"))
    wrong_sha = expect_sha256 is not None and expect_sha256.lower() != manifest.sha256
    if wrong_sha:
        problems.append(Problem(mf.MANIFEST_NAME, "altered", f"sha256 {manifest.sha256[:16]}..., expected "
                                f"{(expect_sha256 or '')[:16]}..."))
    bad_paths = [e.path for e in manifest.files if not mf.safe_relative(e.path)]
    problems += [Problem(p, "unsafe", "a manifest path must stay inside the bundle") for p in bad_paths]
    what = (f"profile {manifest.profile} ({' '.join(manifest.torch)}), Python {manifest.python}, {manifest.platform}; "
            f"{len(manifest.files)} files, {human_bytes(manifest.total_bytes)}; manifest sha256 {manifest.sha256}")
    checks.append(Check("bundle.manifest", Status.FAIL if edited or wrong_sha or bad_paths else Status.OK,
                        ("manifest.json was edited after `bundle create` wrote it (its body_sha256 does not match); "
                         if edited else "") + ("its sha256 is not the one expected; " if wrong_sha else "") + what,
                        data={"sha256": manifest.sha256, "profile": manifest.profile, "python": manifest.python,
                              "platform": manifest.platform}))
    # 2. every listed file
    found, texts, unsafe = _scan(path)
    file_problems: list[Problem] = list(unsafe)
    for e in manifest.files:
        got = found.get(e.path)
        if got is None:
            file_problems.append(Problem(e.path, "missing", f"{human_bytes(e.size)} listed"))
        elif got[0] < e.size:
            file_problems.append(Problem(e.path, "truncated", f"{got[0]} of {e.size} bytes"))
        elif got[1] != e.sha256:
            file_problems.append(Problem(e.path, "altered", f"sha256 {got[1][:16]}..., the manifest says "
                                         f"{e.sha256[:16]}..." + (f"; {got[0]} bytes, not {e.size}" if got[0] != e.size else "")))
    problems += file_problems
    checks.append(Check("bundle.files", Status.FAIL if file_problems else Status.OK,
                        "; ".join(p.line() for p in file_problems[:5])
                        + (f" (and {len(file_problems) - 5} more)" if len(file_problems) > 5 else "")
                        if file_problems else f"all {len(manifest.files)} files present, each with the size and "
                                              "sha256 the manifest lists",
                        fix="copy the bundle again, or re-run `provision bundle create` on the machine that made it"
                        if file_problems else None,
                        data={"problems": [p.to_dict() for p in file_problems]}))
    # 3. the locks agree with the manifest
    inconsistent = _consistency(manifest, texts)
    problems += inconsistent
    checks.append(Check("bundle.locks", Status.FAIL if inconsistent else Status.OK,
                        "; ".join(p.line() for p in inconsistent[:5]) if inconsistent else
                        f"{mf.PYLOCK} and {mf.TOOL_PYLOCK} name every bundled wheel with the manifest's sha256; "
                        f"{mf.LOCK} names {mf.PYLOCK}'s sha256",
                        data={"problems": [p.to_dict() for p in inconsistent]}))
    listed = {e.path for e in manifest.files} | {mf.MANIFEST_NAME}
    unlisted = tuple(Problem(p, "unlisted", "not in the manifest; installs ignore it")
                     for p in sorted(found) if p not in listed)
    checks.append(Check("bundle.unlisted", Status.WARN if unlisted else Status.OK,
                        ("files the manifest does not list (installs ignore them): "
                         + ", ".join(p.path for p in unlisted[:5])) if unlisted else "no files beyond the manifest's"))
    return BundleReport(path, manifest, tuple(problems), unlisted, tuple(checks))


def _consistency(manifest: mf.Manifest, texts: Mapping[str, bytes]) -> list[Problem]:
    """The manifest, the two path locks and provision.lock.json must tell one story."""
    out: list[Problem] = []
    listed = {e.path: e for e in manifest.files}
    named: dict[str, str] = {}
    for lock in (mf.PYLOCK, mf.TOOL_PYLOCK):
        if lock not in texts:
            continue                       # reported as missing
        try:
            hashes = lock_hashes(texts[lock].decode())
        except (ValueError, UnicodeDecodeError) as e:
            out.append(Problem(lock, "inconsistent", f"not a readable pylock ({e})"))
            continue
        for path, sha in hashes.items():
            named[path] = sha
            entry = listed.get(path)
            if entry is None:
                out.append(Problem(path, "inconsistent", f"{lock} names it, the manifest does not"))
            elif entry.sha256 != sha:
                out.append(Problem(path, "inconsistent", f"{lock} says sha256 {sha[:16]}..., the manifest "
                                   f"{entry.sha256[:16]}..."))
    if mf.PYLOCK in texts and mf.TOOL_PYLOCK in texts:
        for entry in manifest.files:
            if entry.kind == "wheel" and entry.path not in named:
                out.append(Problem(entry.path, "inconsistent", "the manifest lists it, no pylock names it"))
    if mf.LOCK in texts and mf.PYLOCK in listed:
        try:
            ref = (json.loads(texts[mf.LOCK]).get("pylock") or {}).get("sha256")
        except (ValueError, AttributeError):
            ref = None
        if ref != listed[mf.PYLOCK].sha256:
            out.append(Problem(mf.LOCK, "inconsistent", f"it names {mf.PYLOCK} sha256 {str(ref)[:16]}..., the "
                               f"manifest {listed[mf.PYLOCK].sha256[:16]}..."))
    return out
