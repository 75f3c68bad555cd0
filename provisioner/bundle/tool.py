"""provision itself in a bundle: its wheel (built from the source it runs from, or the wheel it was
installed from) and its own dependencies, so the offline machine can install the tool first."""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement

from provisioner import __version__, proc
from provisioner.errors import ProvisionError

DIST = "provision"
BUILD_TIMEOUT = 600
#: What building the wheel from a checkout needs (setup.cfg's packages, data files and readme).
SOURCE_PARTS = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "provisioner",
                "profiles")
HINT = ("bundle provision from a source checkout (./install.sh installs it editable), or install it from its wheel "
        "file and keep that file where it was")


@dataclass(frozen=True)
class ToolSource:
    version: str
    kind: str                  # "source" (a checkout to build from) | "wheel" (the wheel it was installed from)
    path: Path

    @property
    def filename(self) -> str:
        return self.path.name if self.kind == "wheel" else f"{DIST}-{self.version}-py3-none-any.whl"

    def describe(self) -> str:
        return (f"built from the source at {self.path}" if self.kind == "source"
                else f"copied from {self.path}")


def find_source() -> ToolSource:
    """Where this provision's wheel comes from: the checkout it runs from (an editable install, or
    provisioner/ beside setup.cfg), else the wheel file its installation came from (direct_url.json)."""
    here = Path(__file__).resolve().parents[2]
    if (here / "setup.cfg").is_file() and "name = provision" in (here / "setup.cfg").read_text():
        return ToolSource(__version__, "source", here)
    try:
        direct = metadata.distribution(DIST).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        direct = None
    if direct:
        try:
            url = str(json.loads(direct).get("url") or "")
        except ValueError:
            url = ""
        parts = urlsplit(url)
        path = Path(unquote(parts.path)) if parts.scheme == "file" else None
        if path is not None and path.is_file() and path.suffix == ".whl":
            return ToolSource(__version__, "wheel", path)
        if path is not None and (path / "setup.cfg").is_file():
            return ToolSource(__version__, "source", path)
    raise ProvisionError("cannot bundle provision itself: it was installed from a wheel that is no longer "
                         "on this machine (or from an index)", hint=HINT)


def requirements() -> list[str]:
    """provision's own dependencies (extras left out), from its installed metadata."""
    try:
        found = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        raise ProvisionError("provision is not installed as a distribution, so its dependencies are unknown",
                             hint=HINT) from None
    out = []
    for text in found:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and "extra" in str(req.marker):
            continue
        out.append(str(req))
    return out


def build(source: ToolSource, dest: Path, *, uv: Path | None, environ: Mapping[str, str]) -> Path:
    """provision's wheel at `dest`: built (`uv build --wheel`, else `pip wheel`) from a copy of the
    checkout, so the checkout gets no build/ or egg-info from it; or the installed-from wheel copied."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dest = dest.with_name(dest.name + ".part")
    if source.kind == "wheel":
        shutil.copyfile(source.path, tmp_dest)
        tmp_dest.replace(dest)
        return dest
    with tempfile.TemporaryDirectory(prefix="provision-wheel-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "dist"
        src.mkdir()
        for part in SOURCE_PARTS:
            p = source.path / part
            if p.is_dir():
                shutil.copytree(p, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif p.is_file():
                shutil.copy2(p, src / part)
        if uv is not None:
            argv = [str(uv), "build", "--wheel", "--quiet", "--out-dir", str(out), str(src)]
        else:
            import sys

            argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)]
        try:
            proc.run(argv, env=dict(environ), timeout=BUILD_TIMEOUT, cwd=tmp)
        except ProvisionError as e:
            raise ProvisionError(f"building the provision wheel failed: {e.message}",
                                 hint="it needs the package index for setuptools (build isolation); "
                                      "check the network, then run the same command again") from None
        built = sorted(out.glob("*.whl"))
        if not built:
            raise ProvisionError(f"`{argv[0]}` built no wheel of provision", hint=HINT)
        shutil.copyfile(built[0], tmp_dest)
        tmp_dest.replace(dest)
    return dest
