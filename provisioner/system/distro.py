"""The distribution under a root: os-release(5), and the package commands that differ per distribution."""
from __future__ import annotations

from pathlib import Path

from provisioner.versions import CudaVersion

LOCAL = "/usr/local"


def os_release(root: Path) -> dict[str, str]:
    """The keys of <root>/etc/os-release, else <root>/usr/lib/os-release (os-release(5)); {} if neither."""
    for name in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / name).read_text(errors="replace")
        except OSError:
            continue
        data: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                data[key.strip()] = value.strip().strip("\"'")
        return data
    return {}


def os_ids(root: Path) -> tuple[str, ...]:
    """`ID` then the `ID_LIKE` words ("ubuntu", "debian"), lower-case; empty if unknown."""
    values = os_release(root)
    return tuple(w.lower() for w in [values.get("ID", "")] + values.get("ID_LIKE", "").split() if w)


def cuda_repository_steps(version: CudaVersion, root: Path) -> str:
    """How to install CUDA `version` from NVIDIA's own packages on the distribution under root."""
    pkg = f"cuda-toolkit-{version.major}-{version.minor}"
    release = os_release(root)
    ids = {release.get("ID", "")} | set(release.get("ID_LIKE", "").split())
    distro = release.get("ID", "") + release.get("VERSION_ID", "").replace(".", "")
    if ids & {"ubuntu", "debian"}:
        return ("add NVIDIA's CUDA apt repository (the `cuda-keyring` package for "
                f"{distro or 'your release'} "
                f"from NVIDIA's CUDA downloads page), then "
                f"`sudo apt-get update && sudo apt-get install -y {pkg}`")
    if ids & {"rhel", "fedora", "centos", "rocky", "almalinux"}:
        return (f"add NVIDIA's CUDA repository for {distro or 'your release'} "
                f"(`sudo dnf config-manager --add-repo` with the .repo file from NVIDIA's CUDA downloads "
                f"page), then `sudo dnf install -y {pkg}`")
    if ids & {"sles", "opensuse", "suse"}:
        return (f"add NVIDIA's CUDA repository for {distro or 'your release'} (`sudo zypper addrepo` with "
                f"the .repo file from NVIDIA's CUDA downloads page), then "
                f"`sudo zypper install -y {pkg}`")
    return (f"download NVIDIA's CUDA {version.short} runfile from its CUDA downloads page and run "
            f"`sudo sh cuda_{version.short}.*_linux.run --silent --toolkit "
            f"--installpath={LOCAL}/cuda-{version.short}`")
