"""The machine a bundle is for: its Python X.Y and wheel platform tag, as uv and packaging.tags spell them."""
from __future__ import annotations

import re
from dataclasses import dataclass

from packaging import tags as pkgtags

from provisioner.errors import UsageError

#: glibc minors uv's `--python-platform` names for manylinux (`uv pip compile --help`); a tag between
#: two of them resolves for the lower one, which only ever leaves out newer wheels.
UV_MANYLINUX_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)
UV_ARCHES = ("x86_64", "aarch64")
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_(\w+)")
_LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
_MUSL = re.compile(r"musllinux_(\d+)_(\d+)_(\w+)")
_PLATFORM_HINT = ("name the target's wheel platform tag, e.g. manylinux_2_28_x86_64 (glibc 2.28 or newer, "
                  "x86_64: `ldd --version` on the target says its glibc) or manylinux_2_28_aarch64")


@dataclass(frozen=True)
class Target:
    python: str                    # "3.11"
    platform: str                  # "manylinux_2_28_x86_64": what the manifest records
    uv_platform: str               # "x86_64-manylinux_2_28": uv's --python-platform
    platforms: tuple[str, ...]     # every platform tag a wheel may carry to install there, best first
    arch: str                      # "x86_64" (platform_machine)
    this_machine: bool = False

    def markers(self) -> dict[str, str]:
        """The marker environment of CPython X.Y on the target (for the lock's `marker` lines)."""
        return {"python_version": self.python, "python_full_version": f"{self.python}.0",
                "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
                "platform_machine": self.arch, "platform_release": "", "platform_version": "",
                "implementation_version": f"{self.python}.0", "extra": ""}


def _arch(arch: str, tag: str) -> str:
    if arch not in UV_ARCHES:
        raise UsageError(f"--platform {tag}: architecture {arch} is not one provision bundles for",
                         hint="bundles are for Linux on " + " or ".join(UV_ARCHES))
    return arch


def _manylinux(minor: int, arch: str) -> tuple[str, ...]:
    """manylinux_2_M_ARCH and every older glibc tag it accepts, with the legacy aliases, best first."""
    out = []
    for m in range(minor, 4, -1):
        out.append(f"manylinux_2_{m}_{arch}")
        out += [f"{alias}_{arch}" for alias, at in _LEGACY.items() if at == m]
    return tuple(out)


def resolve(python: str, platform: str | None) -> Target:
    """The target for `--python X.Y --platform TAG` (this machine's platform when TAG is None)."""
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise UsageError(f"--python {python} is not a Python version", hint="write it as 3.11")
    if platform is None:
        here = [t for t in pkgtags.platform_tags() if _MANYLINUX.fullmatch(t)]
        if not here:
            raise UsageError("cannot tell this machine's manylinux platform (not glibc Linux?)",
                             hint="pass --platform: " + _PLATFORM_HINT)
        return _glibc(here[0], python, this_machine=True)
    tag = platform.strip()
    if _MANYLINUX.fullmatch(tag):
        return _glibc(tag, python)
    for alias, minor in _LEGACY.items():
        if tag.startswith(alias + "_"):
            return _glibc(f"manylinux_2_{minor}_{tag[len(alias) + 1:]}", python)
    musl = _MUSL.fullmatch(tag)
    if musl:
        major, minor, arch = int(musl[1]), int(musl[2]), _arch(musl[3], tag)
        return Target(python, tag, f"{arch}-unknown-linux-musl",
                      tuple(f"musllinux_{major}_{m}_{arch}" for m in range(minor, -1, -1)), arch)
    raise UsageError(f"--platform {tag} is not a Linux wheel platform tag provision bundles for",
                     hint=_PLATFORM_HINT)


def _glibc(tag: str, python: str, *, this_machine: bool = False) -> Target:
    found = _MANYLINUX.fullmatch(tag)
    assert found is not None
    major, minor, arch = int(found[1]), int(found[2]), _arch(found[3], tag)
    if major != 2 or minor < UV_MANYLINUX_MINORS[0]:
        raise UsageError(f"--platform {tag}: glibc {major}.{minor} is older than any wheel of the stack needs "
                         f"(manylinux_2_{UV_MANYLINUX_MINORS[0]} at least)", hint=_PLATFORM_HINT)
    uv_minor = max(m for m in UV_MANYLINUX_MINORS if m <= minor)
    return Target(python, tag, f"{arch}-manylinux_2_{uv_minor}", _manylinux(minor, arch), arch, this_machine)
