"""`bundle create`'s apply: fetch what the plan lists into the bundle folder (a re-run fetches only what
is missing), write its locks and profile, the manifest last, and the tar at the very end."""
from __future__ import annotations

import contextlib
import json
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

from provisioner import __version__, fsio
from provisioner.bundle import fetch, resolve, tool
from provisioner.bundle import manifest as mf
from provisioner.bundle.plan import BundlePlan, LocalModel
from provisioner.errors import ProvisionError
from provisioner.units import human_bytes

Say = Callable[[str], None]
#: `with transfer(title) as update:` -> the progress hook of cli/ui.py's transfer().
TransferFactory = Callable[[str], ContextManager[fetch.Transfer]]
#: Wheels at least this large get a line of their own when their fetch starts.
LARGE = 1 << 20


@dataclass(frozen=True)
class BundleResult:
    path: Path                       # the folder, or the tar
    manifest: mf.Manifest
    fetched: int                     # wheels fetched (or resumed) by this run
    present: int                     # wheels that were complete already
    fetched_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "manifest_sha256": self.manifest.sha256, "files": len(self.manifest.files),
                "total_bytes": self.manifest.total_bytes, "fetched": self.fetched, "present": self.present,
                "fetched_bytes": self.fetched_bytes, "seconds": round(self.seconds, 2)}


@contextlib.contextmanager
def _no_bars(_title: str) -> Iterator[fetch.Transfer]:
    yield lambda _n, _d, _t: None


def apply(plan: BundlePlan, *, say: Say | None = None, transfer: TransferFactory | None = None) -> BundleResult:
    """Make the bundle the plan describes; Ctrl-C or a kill leaves `.part` files the next run continues."""
    say = say or (lambda _line: None)
    start = time.monotonic()
    folder = plan.folder
    folder.mkdir(parents=True, exist_ok=True)
    with fsio.locked(folder / mf.IGNORED[0], blocking=False) as got:
        if not got:
            raise ProvisionError(f"another `provision bundle create` is writing {folder} right now",
                                 hint="wait for it to finish, then run this again")
        (folder / mf.MANIFEST_NAME).unlink(missing_ok=True)     # incomplete until it is written again
        fetched, present, nbytes = _wheels(plan, say, transfer or _no_bars)
        tool_path = folder / plan.tool_wheel
        if not tool_path.is_file():
            say(f"build {plan.tool_source.filename} ({plan.tool_source.describe()})")
            tool.build(plan.tool_source, tool_path, uv=_uv(plan), environ=plan.environ)
        model = _model(plan, say, transfer or _no_bars)
        files = _write_locks(plan, tool_path)
        _prune(plan, say)
        manifest = _manifest(plan, files, model, tool_path)
        data = mf.dumps(manifest)
        fsio.atomic_write(folder / mf.MANIFEST_NAME, data, mode=0o644)
        manifest = mf.parse(data, str(folder / mf.MANIFEST_NAME))
    path = folder
    if plan.tar is not None:
        say(f"write {plan.tar} ({human_bytes(manifest.total_bytes)})")
        write_tar(folder, manifest, plan.tar)
        shutil.rmtree(folder)
        path = plan.tar
    return BundleResult(path, manifest, fetched, present, nbytes, time.monotonic() - start)


def _uv(plan: BundlePlan) -> Path | None:
    from provisioner.env.backends import which

    return which("uv", plan.environ)


def _wheels(plan: BundlePlan, say: Say, transfer: TransferFactory) -> tuple[int, int, int]:
    """Every wheel, largest first (the ones worth a progress bar), each checked against its sha256."""
    todo = sorted(plan.wheels, key=lambda w: -(w.size or 0))
    fetched = present = nbytes = 0
    missing = [w for w in todo if w.path not in plan.present]
    with transfer(f"fetching {len(missing)} wheel(s) into {plan.folder / mf.WHEELS}") as update:
        for w in todo:
            if w.path not in plan.present and (w.size is None or w.size >= LARGE):
                say(f"fetch {missing.index(w) + 1}/{len(missing)} {w.filename} "
                    f"({human_bytes(w.size) if w.size is not None else 'size unknown'})")
            got = fetch.fetch(w.url, plan.folder / w.path, sha256=w.sha256, size=w.size, progress=update)
            if got.status == "present":
                present += 1
            else:
                fetched += 1
                nbytes += got.bytes
                if got.resumed_from:
                    say(f"resumed {w.filename} at {human_bytes(got.resumed_from)}")
    return fetched, present, nbytes


def _model(plan: BundlePlan, say: Say, transfer: TransferFactory) -> dict[str, Any] | None:
    """The model's files into model/: through `model download` (mirror, resume), or copied from a folder."""
    target = plan.folder / mf.MODEL
    if plan.model is None:
        if target.exists():
            shutil.rmtree(target)
        return None
    if isinstance(plan.model, LocalModel):
        for rel, size in plan.model.files:
            dest = target / rel
            if not (dest.is_file() and dest.stat().st_size == size):
                fetch.copy_file(plan.model.path / rel, dest)
        _prune_model(target, {rel for rel, _s in plan.model.files})
        return {"id": plan.model.path.name, "source": str(plan.model.path), "revision": None, "commit": None,
                "endpoint": None, "path": mf.MODEL, "files": [rel for rel, _s in plan.model.files]}
    from provisioner.model import download

    m = plan.model
    if m.files:
        say(f"download {m.repo_id} ({len(m.files)} file(s), {human_bytes(m.need_bytes)}) into {target}")
    with transfer(f"downloading {m.repo_id} into {target}") as update:
        download.apply(m, on_progress=update)
    from provisioner.redact import redact_text

    _prune_model(target, {f.path for f in (*m.present, *m.files)})
    return {"id": m.repo_id, "source": None, "revision": m.revision, "commit": m.commit,
            "endpoint": redact_text(m.endpoint.url), "path": mf.MODEL,
            "files": sorted(f.path for f in (*m.present, *m.files))}


def _prune_model(target: Path, keep: set[str]) -> None:
    """Files of another model an earlier run put in model/ (the download's own .cache stays)."""
    for p in sorted(target.rglob("*"), reverse=True):
        rel = p.relative_to(target).as_posix()
        if rel == ".cache" or rel.startswith(".cache/"):
            continue
        if p.is_file() and rel not in keep:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def _write_locks(plan: BundlePlan, tool_path: Path) -> dict[str, str]:
    """lock/pylock.toml (uv's, by URL), pylock.toml (by path), tool/pylock.toml, provision.lock.json and
    profile.yaml; returns path -> kind for the manifest."""
    from provisioner.env import lock as lockmod
    from provisioner.env.choose import MachineFacts

    folder = plan.folder
    fsio.atomic_write(folder / mf.URL_PYLOCK, plan.stack.text, mode=0o644)
    fsio.atomic_write(folder / mf.PYLOCK, resolve.path_lock(plan.stack.wheels, plan.stack.requires_python), mode=0o644)
    tool_wheel = resolve.Wheel(tool.DIST, plan.tool_source.version, plan.tool_source.filename,
                               tool_path.as_uri(), fsio.sha256_file(tool_path), tool_path.stat().st_size, role="tool")
    fsio.atomic_write(folder / mf.TOOL_PYLOCK, resolve.path_lock([*plan.tools.wheels, tool_wheel],
                                                                 plan.tools.requires_python), mode=0o644)
    fsio.atomic_write(folder / mf.PROFILE, plan.profile.path.read_bytes(), mode=0o644)
    versions = {w.name: w.version for w in plan.stack.wheels}
    found = lockmod.Installed(plan.target.python, versions)
    doc = lockmod.build(
        profile=plan.profile, torch_requirements=plan.torch_requirements, found=found, facts=MachineFacts(),
        backend="", installer="", prefix=Path("."), torch_index_url=plan.sources.torch_index_url,
        index_url=plan.sources.index_url, extra_index_urls=plan.sources.extra_index_urls,
        find_links=[], pylock={"file": mf.PYLOCK, "sha256": fsio.sha256_file(folder / mf.PYLOCK)})
    # Not built on a machine: the target is what the bundle says; the profile's Python is the bundle's.
    doc["machine"] = {"bundle": {"python": plan.target.python, "platform": plan.target.platform}}
    doc["environment"] = {"prefix": None, "backend": None, "installer": None, "python": plan.target.python}
    doc["profile"]["python"] = plan.target.python
    fsio.atomic_write(folder / mf.LOCK, json.dumps(doc, indent=2) + "\n", mode=0o644)
    return {mf.URL_PYLOCK: "lock", mf.PYLOCK: "lock", mf.TOOL_PYLOCK: "lock", mf.LOCK: "lock", mf.PROFILE: "profile"}


def _prune(plan: BundlePlan, say: Say) -> None:
    """Wheels of an earlier resolution that this one no longer lists, and parts left by it."""
    keep = {w.filename for w in plan.wheels} | {plan.tool_source.filename}
    wheels = plan.folder / mf.WHEELS
    for p in sorted(wheels.iterdir()) if wheels.is_dir() else []:
        if p.name not in keep:
            say(f"remove {p.relative_to(plan.folder)} (no longer in the resolution)")
            p.unlink()


def _manifest(plan: BundlePlan, files: dict[str, str], model: dict[str, Any] | None, tool_path: Path) -> mf.Manifest:
    entries: list[mf.FileEntry] = []
    folder = plan.folder
    for w in plan.wheels:
        p = folder / w.path
        entries.append(mf.FileEntry(w.path, p.stat().st_size, w.sha256, "wheel"))
    entries.append(mf.FileEntry(plan.tool_wheel, tool_path.stat().st_size, fsio.sha256_file(tool_path), "wheel"))
    for rel, kind in files.items():
        p = folder / rel
        entries.append(mf.FileEntry(rel, p.stat().st_size, fsio.sha256_file(p), kind))
    if model is not None:
        for rel in model["files"]:
            p = folder / mf.MODEL / rel
            entries.append(mf.FileEntry(f"{mf.MODEL}/{rel}", p.stat().st_size, fsio.sha256_file(p), "model"))
        model = {k: v for k, v in model.items() if k != "files"} | {"files": len(model["files"])}
    return mf.Manifest(
        profile=plan.profile.name, variant=plan.profile.variant,
        cuda=plan.profile.cuda.short if plan.profile.cuda else None, python=plan.target.python,
        platform=plan.target.platform, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        created_by=f"provision {__version__}", torch=plan.torch_requirements, model=model,
        tool={"wheel": plan.tool_wheel, "pylock": mf.TOOL_PYLOCK, "version": plan.tool_source.version},
        files=tuple(entries))


def write_tar(folder: Path, manifest: mf.Manifest, tar: Path) -> None:
    """The manifest first, then every file it lists, in its order (nothing else of the folder)."""
    tmp = tar.with_name(f".{tar.name}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
            for rel in [mf.MANIFEST_NAME, *(f.path for f in manifest.files)]:
                info = out.gettarinfo(str(folder / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with (folder / rel).open("rb") as f:
                    out.addfile(info, f)
        tmp.replace(tar)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
