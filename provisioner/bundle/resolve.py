"""Resolve a requirement set for the target with uv (`uv pip compile --python-version --python-platform
--format pylock.toml`), pick each package's wheel for the target's tags, and write the bundle's own
pylock.toml, whose entries name the bundled files by relative `path` (PEP 751)."""
from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.markers import InvalidMarker, Marker
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion

from provisioner import proc
from provisioner.bundle.target import Target
from provisioner.env.pylock import COMPILE_TIMEOUT, compile_argv
from provisioner.env.sources import supported_tags
from provisioner.errors import CommandError, ProvisionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class Wheel:
    """One wheel the bundle holds (or will hold), as the resolution found it."""

    name: str                  # the distribution name as the lock spells it
    version: str
    filename: str
    url: str                   # where it comes from (https://, file://)
    sha256: str
    size: int | None           # from the lock (uv writes the index's size), else asked at plan time
    marker: str | None = None
    role: str = "stack"        # stack (the environment) | tool (provision and its dependencies)

    @property
    def path(self) -> str:
        return f"wheels/{self.filename}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "file": self.path, "url": self.url,
                "sha256": self.sha256, "size": self.size, "role": self.role}


@dataclass(frozen=True)
class Resolution:
    text: str                  # uv's pylock.toml, URLs and all (what an online build records)
    requires_python: str | None
    wheels: tuple[Wheel, ...]  # one per package that installs on the target


def compile_lock(uv: Path, requirements: Sequence[str], target: Target, sources: Sequence[str], *,
                 environ: Mapping[str, str], what: str, timeout: float = COMPILE_TIMEOUT) -> str:
    """uv's pylock.toml for `requirements` on the target (wheels only: nothing is built there)."""
    with tempfile.TemporaryDirectory(prefix="provision-bundle-") as tmp:
        reqs, out = Path(tmp) / "requirements.in", Path(tmp) / "pylock.toml"
        reqs.write_text("".join(f"{r}\n" for r in requirements))
        argv = compile_argv(uv, requirements=reqs, output=out, sources=sources,
                            options=["--python-version", target.python, "--python-platform", target.uv_platform,
                                     "--only-binary", ":all:"])
        try:
            proc.run(argv, env=environ, timeout=timeout)
        except CommandError as e:
            raise compile_error(e, target, what) from None
        return out.read_text()


_NO_WHEEL = re.compile(r"Because (?P<pkg>\S+?) (?:has no wheels with a matching (?P<kind>platform|Python "
                       r"implementation|Python ABI) tag|has no usable wheels)")
_HINT = re.compile(r"^hint: (?P<text>.*(?:\n(?!\S).*)*)", re.M)
_NOT_FOUND = re.compile(r"Because (?P<pkg>\S+?) was not found in the (?:package registry|provided package locations)"
                        r"|there is no version of (?P<pin>\S+)")
_FETCH = re.compile(r"Failed to fetch: [`']?(?P<url>[^`'\s]+)")


def compile_error(e: CommandError, target: Target, what: str) -> ProvisionError:
    """uv's resolver error, said with the package, the Python and the platform."""
    text = e.stderr or e.stdout or e.message
    where = f"Python {target.python} on {target.platform}"
    uv_hint = _HINT.search(text)
    detail = proc.tail(text, 8)
    found = _NO_WHEEL.search(text)
    if found:
        pkg = found["pkg"].strip("`'")
        kind = found["kind"] or "usable"
        about = {"platform": f"for {target.platform}", "Python implementation": f"for Python {target.python}",
                 "Python ABI": f"for Python {target.python}"}.get(kind, f"for {where}")
        hint = uv_hint["text"].strip() if uv_hint else None
        return ProvisionError(f"no wheel of {pkg} exists {about} (resolving {what} for {where})",
                              hint=(f"uv says: {hint}; " if hint else "")
                              + "pick the target's --platform/--python that wheels exist for, or another profile")
    missing = _NOT_FOUND.search(text)
    if missing:
        pkg = (missing["pkg"] or missing["pin"] or "?").strip("`'")
        return ProvisionError(f"{pkg} is not on the indexes used (resolving {what} for {where})\n{detail}",
                              hint="check the profile's torch index and --index-url/--find-links; "
                                   "the pinned build must exist there")
    fetch = _FETCH.search(text)
    if fetch:
        return ProvisionError(f"cannot reach {fetch['url']} (resolving {what} for {where})\n{detail}",
                              hint="bundle create needs the indexes (the profile's torch index and the package "
                                   "index) on this machine; check the network and proxy, or point --index-url "
                                   "at a mirror")
    return ProvisionError(f"uv could not resolve {what} for {where}\n{detail}",
                          hint="run the uv command shown with -v to see why")


def _filename(entry: Mapping[str, Any]) -> str:
    if entry.get("name"):
        return str(entry["name"])
    where = str(entry.get("url") or entry.get("path") or "")
    return unquote(urlsplit(where).path.rsplit("/", 1)[-1])


def parse(text: str, target: Target, *, role: str = "stack", where: str = "uv's pylock.toml") -> Resolution:
    """Each package's best wheel for the target, as pip would prefer it. uv resolved for the target, so
    every package it lists is kept (its marker stays in the lock for the installer to judge); one with
    no wheel for the target is an error naming it, unless its marker is false there."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProvisionError(f"{where}: not TOML ({e})", hint="report this as a bug") from None
    rank: dict[Tag, int] = {}
    for i, tag in enumerate(supported_tags(target.python, list(target.platforms))):
        rank.setdefault(tag, i)
    env = target.markers()
    wheels = []
    for pkg in doc.get("packages") or []:
        name, version = str(pkg.get("name")), str(pkg.get("version"))
        marker = pkg.get("marker")
        fits: list[tuple[int, Mapping[str, Any]]] = []
        for w in pkg.get("wheels") or []:
            try:
                _n, _v, _b, wtags = parse_wheel_filename(_filename(w))
            except (InvalidWheelFilename, InvalidVersion):
                continue
            best = min((rank[t] for t in wtags if t in rank), default=None)
            if best is not None:
                fits.append((best, w))
        if not fits:
            if marker and _false(str(marker), env):
                continue
            raise ProvisionError(f"no wheel of {name} {version} exists for Python {target.python} on "
                                 f"{target.platform} (the lock has "
                                 + (", ".join(_filename(w) for w in pkg.get("wheels") or []) or "an sdist only") + ")",
                                 hint="pick another --platform/--python, or another profile")
        chosen = min(fits, key=lambda f: f[0])[1]
        sha = str((chosen.get("hashes") or {}).get("sha256") or "")
        if not sha:
            raise ProvisionError(f"{where}: {name} {version} has no sha256", hint="report this as a bug")
        url = str(chosen.get("url") or chosen.get("path") or "")
        size = chosen.get("size")
        wheels.append(Wheel(name, version, _filename(chosen), url, sha, int(size) if size is not None else None,
                            str(marker) if marker else None, role))
    requires = doc.get("requires-python")
    return Resolution(text, str(requires) if requires else None, tuple(wheels))


def _false(marker: str, env: Mapping[str, str]) -> bool:
    try:
        return not Marker(marker).evaluate(dict(env))
    except InvalidMarker:
        return False


def _toml(value: str) -> str:
    return json.dumps(value)       # a JSON string is a TOML basic string for the text we write


def path_lock(wheels: Sequence[Wheel], requires_python: str | None) -> str:
    """A PEP 751 pylock.toml whose wheels are the bundled files, named relative to the bundle."""
    lines = ['lock-version = "1.0"', 'created-by = "provision"']
    if requires_python:
        lines.append(f"requires-python = {_toml(requires_python)}")
    for w in sorted(wheels, key=lambda w: canonicalize_name(w.name)):
        lines += ["", "[[packages]]", f"name = {_toml(w.name)}", f"version = {_toml(w.version)}"]
        if w.marker:
            lines.append(f"marker = {_toml(w.marker)}")
        size = f", size = {w.size}" if w.size is not None else ""
        lines.append(f"wheels = [{{ name = {_toml(w.filename)}, path = {_toml(w.path)}{size}, "
                     f"hashes = {{ sha256 = {_toml(w.sha256)} }} }}]")
    return "\n".join(lines) + "\n"


def lock_hashes(text: str) -> dict[str, str]:
    """path -> sha256 of every wheel a path lock names (what verify compares with the manifest)."""
    doc = tomllib.loads(text)
    out = {}
    for pkg in doc.get("packages") or []:
        for w in pkg.get("wheels") or []:
            if w.get("path"):
                out[str(w["path"])] = str((w.get("hashes") or {}).get("sha256") or "")
    return out


def with_environ(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.setdefault("UV_NO_PROGRESS", "1")
    return env

