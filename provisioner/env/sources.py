"""Where wheels come from: index URLs, local wheel folders, pip's own configuration, pinned builds."""
from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging import tags
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from provisioner import proc
from provisioner.env.lock import TORCH_FAMILY
from provisioner.errors import CommandError, ProvisionError, UsageError


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


def supported_tags(python_version: str, platforms: Sequence[str] | None = None) -> tuple[Tag, ...]:
    """The wheel tags CPython `python_version` ("3.11") installs, most specific first (the order pip
    prefers them in): on `platforms` (["manylinux_2_28_x86_64"] to build for another machine), or on
    this machine's (`packaging.tags.platform_tags()`: its architecture, its libc and that libc's version).

    The environment's Python need not be the one provision runs on, so its tags are computed for its
    version rather than taken from `sys_tags()`; the ABI is the standard build's (cp311, no debug or
    free-threaded suffix), which is what venv and conda make.
    """
    try:
        major, minor = (int(p) for p in python_version.split("."))
    except ValueError:
        raise UsageError(f"{python_version} is not a Python version", hint="write it as 3.11") from None
    plats = list(tags.platform_tags()) if platforms is None else list(platforms)
    interpreter = f"cp{major}{minor}"
    return (*tags.cpython_tags((major, minor), abis=[interpreter], platforms=plats),
            *tags.compatible_tags((major, minor), interpreter=interpreter, platforms=plats))


def find_local_wheels(requirements: Sequence[str], find_links: Sequence[str], python_version: str,
                      platforms: Sequence[str] | None = None) -> dict[str, Path] | None:
    """The wheel files in local find-links folders that meet every exact pin and install on CPython
    `python_version` on `platforms` (this machine's by default), or None when a pin has none.

    A wheel fits when one of its tags is in `supported_tags` (an aarch64, musllinux or win_amd64 file
    does not fit an x86_64 glibc machine); where several fit, the most specific tag wins, as in pip.
    """
    rank: dict[Tag, int] = {}
    for i, tag in enumerate(supported_tags(python_version, platforms)):
        rank.setdefault(tag, i)
    folders = dict.fromkeys(d for d in map(local_dir, find_links) if d is not None and d.is_dir())
    wheels = []
    for folder in folders:
        for wheel in sorted(folder.glob("*.whl")):
            try:
                wheels.append((wheel, *parse_wheel_filename(wheel.name)))
            except (ValueError, InvalidVersion):
                continue
    found: dict[str, Path] = {}
    for req_text in requirements:
        req = Requirement(req_text)
        pins = [s for s in req.specifier if s.operator == "==" and "*" not in s.version]
        if len(pins) != 1 or len(req.specifier) != 1:
            return None
        name, want = canonicalize_name(req.name), Version(pins[0].version)
        fits = [(min(rank[t] for t in wtags if t in rank), wheel)
                for wheel, wname, version, _build, wtags in wheels
                if wname == name and version == want and any(t in rank for t in wtags)]
        if not fits:
            return None
        found[name] = min(fits, key=lambda fit: fit[0])[1]
    return found


def pip_env_list(environ: Mapping[str, str], var: str) -> tuple[str, ...]:
    return tuple(environ.get(var, "").split())


#: pip's kinds of configuration file, lowest priority first (pip's `Configuration` override order).
PIP_FILE_KINDS = ("global", "user", "site", "env")
_DEBUG_VALUE = re.compile(r"(?P<key>[^\s:=]+\.[^\s:=]+): ?(?P<value>.*)")
PIP_QUERY_TIMEOUT = 60


@dataclass(frozen=True)
class PipConfig:
    """What one pip said it read, by `pip config debug`: for each kind of configuration file ("global",
    "user", "site", "env" for the file PIP_CONFIG_FILE names), the values pip took from it."""

    values: Mapping[str, Mapping[str, str]]          # kind -> {"install.find-links": "/srv/wheels"}

    @classmethod
    def parse(cls, text: str) -> PipConfig:
        """`pip config debug`'s output: a kind at column 0, its files at 2 spaces (", exists: True"),
        the kind's values under each file that exists at 4 (a multi-line value goes on, indented alike)."""
        values: dict[str, dict[str, str]] = {}
        kind, key = "", ""
        for line in text.splitlines():
            if not line.startswith(" "):
                kind, key = line.rstrip().rstrip(":"), ""
                values.setdefault(kind, {})
            elif line.startswith("    ") and kind != "env_var":
                value = _DEBUG_VALUE.fullmatch(line[4:])
                if value is not None:
                    key = value["key"]
                    values[kind][key] = value["value"]
                elif key:
                    values[kind][key] += "\n" + line[4:]
            else:
                key = ""
        return cls(values)

    def option(self, name: str, command: str = "install",
               kinds: Sequence[str] = ("global", "user", "env")) -> str | None:
        """`pip COMMAND`'s `name` from these kinds of file, by pip's rules: a later kind (global, user,
        site, env) overrides an earlier one key by key, `[command]` then overrides `[global]`, and an
        empty value counts as unset."""
        merged: dict[str, str] = {}
        for kind in PIP_FILE_KINDS:
            if kind in kinds:
                merged.update(self.values.get(kind, {}))
        return merged.get(f"{command}.{name}") or merged.get(f"global.{name}") or None


def read_pip_config(pythons: Sequence[Path], environ: Mapping[str, str]) -> PipConfig | None:
    """pip's configuration as the first of `pythons` that has pip reads it with `environ` (one
    `python -m pip config debug`, ~0.3 s); None when none of them has pip."""
    for python in dict.fromkeys(pythons):
        try:
            done = proc.run([python, "-m", "pip", "config", "debug"], env=environ, timeout=PIP_QUERY_TIMEOUT)
        except CommandError as e:
            if e.returncode is None or "No module named pip" in e.stderr:
                continue        # no such interpreter, or no pip in it: ask the next
            # pip stops at a configuration file it cannot parse, and so will the install
            raise ProvisionError(f"pip cannot read its configuration: {e.message}",
                                 hint="fix the file pip names (`pip config debug` lists them all)") from None
        return PipConfig.parse(done.stdout)
    return None


def pip_find_links(environ: Mapping[str, str], pythons: Sequence[Path] = ()) -> tuple[str, ...]:
    """The wheel folders the new environment's pip will search: PIP_FIND_LINKS (pip's variables
    override its files, so no pip need be asked), else `find-links` from pip's configuration files."""
    return pip_env_list(environ, "PIP_FIND_LINKS") or pip_config_find_links(environ, pythons)


def pip_config_find_links(environ: Mapping[str, str], pythons: Sequence[Path] = ()) -> tuple[str, ...]:
    """`find-links` from pip's configuration files, as pip itself reads them: `pythons` (then this
    interpreter) are asked in turn, with `environ` as the install will have it.

    Which pip answers matters in one way only: a pip also reads its own site file,
    `<sys.prefix>/pip.conf`, and that file is left out. The pip that installs is the new
    environment's, whose site file is `<new env>/pip.conf`, and a new environment has none (provision
    builds it fresh; a replaced one is deleted first). The global files (XDG_CONFIG_DIRS, /etc) are
    those of the running system whatever --root says: pip reads them there when it installs.

    uv reads no pip configuration, so a local wheel folder that pip is configured with (an air-gapped
    machine's wheelhouse) must be handed to uv explicitly, or uv goes to the index for a build it
    cannot find there.
    """
    config = read_pip_config([*pythons, Path(sys.executable)], environ)
    value = config.option("find-links") if config is not None else None
    return tuple(value.split()) if value else ()


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


def with_local(links: Sequence[str], local: Mapping[str, Path]) -> list[str]:
    """`links` and the folders holding the `local` wheels, each once (the plan then shows where torch
    comes from)."""
    return list(dict.fromkeys([*links, *(str(p.parent) for p in local.values())]))


def compile_source_args(*, index_url: str | None, torch_index: str, torch_backend: str | None,
                        local: Mapping[str, Path], extra: Sequence[str], links: Sequence[str],
                        environ: Mapping[str, str]) -> list[str]:
    """uv's source options for one `uv pip compile` of torch and the packages together (an environment's
    pylock.toml, a bundle's resolution): the default index; torch through uv's --torch-backend, else from
    `torch_index` as the first extra index unless `local` wheels stand in for it; every wheel folder."""
    args = ["--index-url", index_url] if index_url else []
    if torch_backend is not None:
        args += ["--torch-backend", torch_backend]
    elif not local:
        extra = [torch_index, *extra]
    return args + source_args(extra, with_local(links, local), True, environ)
