"""Where wheels come from: index URLs, local wheel folders, pip's own configuration, pinned builds."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from provisioner.env.lock import TORCH_FAMILY
from provisioner.errors import UsageError
from provisioner.paths import under_root


def as_list(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(v for v in value if v)


def check_url(url: str, *, option: str, allow_insecure: bool) -> str:
    """https, file:// and local paths pass; http needs --allow-insecure-index; anything else is refused."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("https", "file") or (scheme == "" and url.strip()):
        return url
    if scheme == "http":
        if allow_insecure:
            return url
        raise UsageError(f"{option} {url} is not https: packages fetched over plain http can be "
                         "altered in transit",
                         hint="use the https URL of the index, or pass --allow-insecure-index "
                              "if this network is trusted")
    raise UsageError(f"{option} {url}: unsupported URL scheme '{scheme}'",
                     hint="use an https:// or file:// URL, or a local directory")


def local_dir(location: str) -> Path | None:
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" and location:
        return Path(location)
    return None


def pin_build(requirement: str, variant: str) -> str:
    """torch==2.13.0 -> torch==2.13.0+cpu: the PyTorch indexes label every wheel with its build, so
    an exact labelled pin can only be met by that build (never PyPI's default CUDA wheel)."""
    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        raise UsageError(f"'{requirement}' is not a requirement") from None
    specs = list(req.specifier)
    if canonicalize_name(req.name) not in TORCH_FAMILY or len(specs) != 1:
        return requirement
    spec = specs[0]
    if spec.operator != "==" or "*" in spec.version:
        return requirement
    version = Version(spec.version)
    if version.local is None:
        return f"{req.name}=={version}+{variant}"
    if version.local != variant:
        raise UsageError(f"{req.name} {version} is the {version.local} build, but the profile is "
                         f"the {variant} build",
                         hint=f"pass --torch {version.public} (the {variant} build is chosen for you), "
                              f"or pick the {version.local} profile")
    return requirement


def find_local_wheels(requirements: Sequence[str], find_links: Sequence[str],
                      python_version: str) -> dict[str, Path] | None:
    """The wheel files in local find-links folders that satisfy every exact pin, or None."""
    tag = "cp" + python_version.replace(".", "")
    found: dict[str, Path] = {}
    for req_text in requirements:
        req = Requirement(req_text)
        want = next(iter(req.specifier)).version if len(req.specifier) == 1 else None
        if want is None:
            return None
        hit = None
        for location in find_links:
            folder = local_dir(location)
            if folder is None or not folder.is_dir():
                continue
            for wheel in sorted(folder.glob("*.whl")):
                try:
                    name, version, _build, tags = parse_wheel_filename(wheel.name)
                except (ValueError, InvalidVersion):
                    continue
                if canonicalize_name(name) != canonicalize_name(req.name) or str(version) != want:
                    continue
                if any(t.interpreter in (tag, "py3") and ("linux" in t.platform or t.platform == "any")
                       for t in tags):
                    hit = wheel
                    break
            if hit:
                break
        if hit is None:
            return None
        found[canonicalize_name(req.name)] = hit
    return found


def pip_env_list(environ: Mapping[str, str], var: str) -> tuple[str, ...]:
    return tuple(environ.get(var, "").split())


def pip_find_links(environ: Mapping[str, str], root: Path = Path("/")) -> tuple[str, ...]:
    """The wheel folders pip would search: PIP_FIND_LINKS, else `find-links` in pip's config files."""
    return pip_env_list(environ, "PIP_FIND_LINKS") or pip_config_find_links(environ, root)


def pip_config_files(environ: Mapping[str, str], root: Path = Path("/")) -> list[Path]:
    """pip's configuration files in pip's order (a later one wins): the system-wide ones under root
    (XDG_CONFIG_DIRS, /etc), then the user's (from environ), then PIP_CONFIG_FILE. With
    PIP_CONFIG_FILE set to the null device pip loads no file at all."""
    if environ.get("PIP_CONFIG_FILE") == os.devnull:
        return []
    home = Path(environ.get("HOME") or Path.home())
    dirs = [d for d in environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep) if d]
    files = [under_root(root, d) / "pip" / "pip.conf" for d in reversed(dirs)]
    files.append(under_root(root, "/etc/pip.conf"))
    files += [home / ".pip" / "pip.conf",
              Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf"]
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    return files


def pip_config_find_links(environ: Mapping[str, str], root: Path = Path("/")) -> tuple[str, ...]:
    """`find-links` from pip's configuration files, in pip's order (the last file wins).

    uv reads no pip configuration, so a local wheel folder that pip is configured with (an
    air-gapped machine's wheelhouse) must be handed to uv explicitly, or uv goes to the index
    for a build it cannot find there.
    """
    import configparser

    files = pip_config_files(environ, root)
    found: tuple[str, ...] = ()
    for f in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(f)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_option(section, "find-links"):
                found = tuple(parser.get(section, "find-links").split())
    return found


def source_args(extra: Sequence[str], links: Sequence[str], uv: bool,
                 environ: Mapping[str, str] | None = None) -> list[str]:
    """--extra-index-url / --find-links, plus (for uv) the pip settings uv does not read."""
    env_extra = pip_env_list(environ, "PIP_EXTRA_INDEX_URL") if uv and environ else ()
    extras = list(dict.fromkeys([*extra, *env_extra]))
    args: list[str] = []
    for u in extras:
        args += ["--extra-index-url", u]
    for f in links:
        args += ["--find-links", f]
    if uv and extras:
        # uv stops at the first index that has a package; pip merges them all. The exact,
        # build-labelled torch pins make pip's behaviour safe, so ask uv for it.
        args += ["--index-strategy", "unsafe-best-match"]
    if uv and environ and environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    return args
