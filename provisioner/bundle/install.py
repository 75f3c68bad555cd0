"""The offline side: open a bundle (a tar is unpacked once into provision's data dir), refuse it unless
it verifies, then build the environment from its pylock.toml with no index, and hand out its model folder.

The environment is `env create --from-lock <bundle>/provision.lock.json`: the same plan, install step
(`uv pip sync pylock.toml`, or pip in hash-checking mode) and verify checks as any locked rebuild, run
with every index switched off (UV_OFFLINE, PIP_NO_INDEX, the bundle's wheels as the only wheel folder)
and the hub offline. Afterwards the environment's pylock.toml is the bundle's by-URL lock, what an
online build of the profile records, instead of the by-path one it was installed from.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner import fsio, paths
from provisioner.bundle import manifest as mf
from provisioner.bundle.verify import BundleReport, read_manifest, verify
from provisioner.errors import UsageError

if TYPE_CHECKING:
    from provisioner.env import CreateOptions, CreatePlan, EnvResult
    from provisioner.env.backends import Progress, StatusFactory
    from provisioner.env.choose import MachineFacts
    from provisioner.profiles import Profile

#: Variables that switch every installer and the hub client to no network (uv, pip, conda, hf).
OFFLINE = {"UV_OFFLINE": "1", "PIP_NO_INDEX": "1", "CONDA_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
#: Index settings an offline install must not follow (PIP_FIND_LINKS is replaced by the bundle's wheels).
DROPPED = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_INDEX",
           "UV_DEFAULT_INDEX", "UV_FIND_LINKS", "HF_ENDPOINT")


@dataclass(frozen=True)
class OpenBundle:
    """A verified bundle folder (a tar's unpacked copy), and what it was opened from."""

    folder: Path
    source: Path
    manifest: mf.Manifest
    report: BundleReport

    @property
    def lock(self) -> Path:
        return self.folder / mf.LOCK

    @property
    def wheels(self) -> Path:
        return self.folder / mf.WHEELS

    @property
    def model_path(self) -> Path | None:
        return self.folder / mf.MODEL if self.manifest.model else None

    def describe(self) -> str:
        m = self.manifest
        model = f"model {m.model.get('id')}" if m.model else "no model"
        where = f"{self.source}" + (f" (unpacked in {self.folder})" if self.folder != self.source else "")
        return (f"bundle {where}: verified, {len(m.files)} files; profile {m.profile}, Python {m.python}, "
                f"{m.platform}, {model}; manifest sha256 {m.sha256}")


def unpack_dir(manifest: mf.Manifest, environ: Mapping[str, str]) -> Path:
    """Where a tar bundle is unpacked: provision's data dir, one folder per manifest."""
    return paths.data_dir(environ) / "bundles" / manifest.sha256[:16]


def open_bundle(path: Path, environ: Mapping[str, str], *, what: str = "nothing was installed") -> OpenBundle:
    """The bundle at `path`, verified; a ProvisionError naming each bad file otherwise (`what` says
    what was not done because of it). A tar is verified as it is, then unpacked and checked again."""
    from provisioner.env.record import expand_path

    source = expand_path(path, environ)
    if source.is_dir():
        report = verify(source)
        if not report.ok:
            raise report.refusal(what)
        return OpenBundle(source, source, report.manifest, report)
    # the tar as given, every time: an earlier, intact tar with the same manifest may have been unpacked
    report = verify(source)
    if not report.ok:
        raise report.refusal(what)
    folder = unpack_dir(report.manifest, environ)
    with fsio.locked(folder.with_name(folder.name + ".lock")):
        unpacked = verify(folder) if (folder / mf.MANIFEST_NAME).is_file() else None
        if unpacked is None or not unpacked.ok:
            _unpack(source, folder, report.manifest)         # first use, or a copy damaged since: again
            unpacked = verify(folder)
        if not unpacked.ok:
            raise unpacked.refusal(what)
    return OpenBundle(folder, source, unpacked.manifest, unpacked)


def _unpack(tar_path: Path, folder: Path, manifest: mf.Manifest) -> None:
    """The manifest's files (and nothing else) into `folder`, through a temporary folder beside it."""
    listed = {e.path for e in manifest.files} | {mf.MANIFEST_NAME}
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.isfile() or member.name not in listed or not mf.safe_relative(member.name):
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                dest = tmp / member.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                with dest.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def offline_environ(environ: Mapping[str, str], bundle: OpenBundle) -> dict[str, str]:
    """`environ` with no index and no hub: the bundle's wheels are the only wheel folder."""
    env = {k: v for k, v in environ.items() if k not in DROPPED}
    env.update(OFFLINE)
    env["PIP_FIND_LINKS"] = str(bundle.wheels)
    return env


def env_options(bundle: OpenBundle, *, name: str | None = None, prefix: Path | None = None, backend: str = "auto",
                installer: str = "auto", force: bool = False, repair: bool = False) -> CreateOptions:
    """`env create`'s options for the bundle: its lock, a venv unless a conda backend is named (conda
    would fetch Python from its channels). The lock's index URLs are records only (nothing is fetched
    from any index), so an http:// one is no reason to refuse."""
    from provisioner.env import CreateOptions

    return CreateOptions(name=name, prefix=prefix, backend="venv" if backend == "auto" else backend,
                         installer=installer, from_lock=bundle.lock, force=force, repair=repair,
                         allow_insecure_index=True)


def plan_env(bundle: OpenBundle, *, root: Path, environ: Mapping[str, str], facts: MachineFacts | None = None,
             name: str | None = None, prefix: Path | None = None, backend: str = "auto", installer: str = "auto",
             force: bool = False, repair: bool = False) -> CreatePlan:
    """The environment's plan, made with the offline environ (pass `offline_environ(...)`)."""
    from provisioner import env as envmod

    options = env_options(bundle, name=name, prefix=prefix, backend=backend, installer=installer, force=force,
                          repair=repair)
    plan = envmod.plan_create(options, root=root, environ=environ, facts=facts)
    note = f"installed from {bundle.source} with no index (the bundle's wheels only)"
    return replace(plan, notes=(*plan.notes, note))


def apply_env(bundle: OpenBundle, plan: CreatePlan, *, environ: Mapping[str, str], progress: Progress | None = None,
              status: StatusFactory | None = None) -> EnvResult:
    """Build the planned environment, then record the bundle's by-URL pylock.toml in it."""
    from provisioner import env as envmod

    result = envmod.apply_create(plan, environ=environ, progress=progress, status=status)
    if result.status == "created" and result.lock_path is not None:
        record_url_lock(bundle, result.prefix)
    return result


def record_url_lock(bundle: OpenBundle, prefix: Path) -> None:
    """The environment's pylock.toml becomes the bundle's lock by URL (the one it was installed from names
    files by paths inside the bundle, which mean nothing in the environment); the lock's reference follows."""
    from provisioner.env import lock as lockmod
    from provisioner.env.pylock import PYLOCK_NAME

    target = prefix / PYLOCK_NAME
    data = (bundle.folder / mf.URL_PYLOCK).read_bytes()
    doc = json.loads((prefix / lockmod.LOCK_NAME).read_text())
    # the profile as it was named (its ranges), not as the rebuild from a lock pins it
    doc["profile"] = json.loads((bundle.folder / mf.LOCK).read_text())["profile"]
    doc["pylock"] = {"file": PYLOCK_NAME, "sha256": fsio.sha256_file(bundle.folder / mf.URL_PYLOCK),
                     "bundle": str(bundle.source), "bundle_manifest_sha256": bundle.manifest.sha256}
    fsio.atomic_write(target, data, mode=0o644)
    lockmod.write(prefix, doc)


def create_env(bundle: OpenBundle, *, root: Path, environ: Mapping[str, str], facts: MachineFacts | None = None,
               prefix: Path | None = None, name: str | None = None, backend: str = "auto", repair: bool = False,
               progress: Progress | None = None, status: StatusFactory | None = None) -> EnvResult:
    """Plan and apply in one call (what `up --bundle` uses)."""
    env = offline_environ(environ, bundle)
    plan = plan_env(bundle, root=root, environ=env, facts=facts, prefix=prefix, name=name, backend=backend,
                    repair=repair)
    return apply_env(bundle, plan, environ=env, progress=progress, status=status)


def model_folder(bundle: OpenBundle, local_dir: Path | None = None) -> Path:
    """The bundled model's folder (what `up`, `chat` and `model fit` take as MODEL); with `local_dir`,
    a copy of its files there."""
    path = bundle.model_path
    if path is None:
        raise UsageError(f"bundle {bundle.source} holds no model",
                         hint="create the bundle with --model MODEL, or give --model a local folder")
    if local_dir is None:
        return path
    for e in bundle.manifest.files:
        if e.path.startswith(mf.MODEL + "/"):
            dest = local_dir / e.path[len(mf.MODEL) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.folder / e.path, dest)
    return local_dir


def bundle_profile(folder: Path, facts: MachineFacts) -> tuple[mf.Manifest, Profile, list[str]]:
    """The manifest of a bundle folder `open_bundle` has verified, its profile as its lock pins it
    (lock.as_profile()), and why this machine cannot run that build (empty: it can). Reads the manifest
    and the lock once each and hashes nothing: installing verifies the bundle again first."""
    from provisioner.env import lock as lockmod

    lock = lockmod.read(folder / mf.LOCK)
    return read_manifest(folder), lock.as_profile(), lockmod.check_runnable(lock, facts)


def refuse_options(**given: object) -> None:
    """The bundle decides these; naming one as well is a usage error."""
    named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v not in (None, False, "", "auto", ())]
    if named:
        raise UsageError(f"--bundle decides the profile, Python and wheel sources; drop {', '.join(named)}",
                         hint="the bundle was resolved for one target: `provision bundle list PATH` shows it")
