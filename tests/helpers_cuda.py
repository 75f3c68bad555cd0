"""Builders for CUDA test worlds: fake 12.x/11.x toolkit trees, the cuda link, tree hashes, real copies."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from click.testing import CliRunner, Result

from provisioner.cli import main
from provisioner.versions import CudaVersion

#: nvcc patch numbers of real releases, so fakes print what those nvccs print.
PATCHES = {"11.8": 89, "12.1": 105, "12.4": 131, "12.5": 82, "12.6": 85, "12.8": 93, "12.9": 86}

# The fake exists because a CUDA 12.x/11.x nvcc cannot be installed here: NVIDIA's 12.x wheels carry no
# nvcc driver and its apt/runfile installers need a real distribution. It prints what the real
# `nvcc --version` prints (reference §3) and nothing else works.
FAKE_NVCC = """#!/bin/sh
# Fake nvcc {full}: stands in for NVIDIA's nvcc because CUDA 12.x/11.x nvcc cannot be installed on
# the test machine (no wheel carries it). Only --version is implemented, with the real output format.
# Shell builtins only, so it runs under any PATH a test sets. NVCC_CALL_LOG, when set, gets one
# line per call (tests count how often provision runs nvcc).
if [ -n "$NVCC_CALL_LOG" ]; then echo "$0 $*" >> "$NVCC_CALL_LOG"; fi
if [ "$1" = "--version" ]; then
  printf '%s\n' "nvcc: NVIDIA (R) Cuda compiler driver" \
    "Copyright (c) 2005-2024 NVIDIA Corporation" \
    "Built on Thu_Sep_12_02:18:05_PDT_2024" \
    "Cuda compilation tools, release {short}, V{full}" \
    "Build cuda_{short}.r{short}/compiler.34841621_0"
  exit 0
fi
echo "fake nvcc {full}: only --version is implemented" >&2
exit 1
"""


def full_version(version: str) -> CudaVersion:
    v = CudaVersion.parse(version)
    return v if v.patch is not None else CudaVersion(v.major, v.minor, PATCHES.get(v.short, 0))


def write_fake_nvcc(path: Path, version: str) -> Path:
    v = full_version(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_NVCC.format(short=v.short, full=v))
    path.chmod(0o755)
    return path


def make_toolkit(root: Path, version: str, *, name: str | None = None, nvcc: bool = True,
                 cudart: bool = True, headers: bool = True, version_json: str | dict[str, object] | None = "auto",
                 cuda_h: bool = True, reports: str | None = None) -> Path:
    """A fake `<root>/usr/local/cuda-X.Y` tree shaped like NVIDIA's (clang's test Inputs do the same).

    `reports` makes the fake nvcc print another version than the directory's; `version_json` "auto"
    writes the installer's file with the SDK version, None writes none, a dict is written as given.
    """
    v = full_version(version)
    tk = root / "usr" / "local" / (name or f"cuda-{v.short}")
    (tk / "bin").mkdir(parents=True, exist_ok=True)
    if nvcc:
        write_fake_nvcc(tk / "bin" / "nvcc", reports or str(v))
    (tk / "lib64").mkdir(exist_ok=True)
    if cudart:
        (tk / "lib64" / f"libcudart.so.{v.major}").write_bytes(b"\x7fELF fake cudart\n")
        (tk / "lib64" / "libcudart.so").symlink_to(f"libcudart.so.{v.major}")
    (tk / "include").mkdir(exist_ok=True)
    if headers:
        (tk / "include" / "cuda_runtime.h").write_text("/* fake */\n")
    if cuda_h:
        (tk / "include" / "cuda.h").write_text(f"#define CUDA_VERSION {v.major * 1000 + v.minor * 10}\n")
    if version_json == "auto":
        (tk / "version.json").write_text(json.dumps(
            {"cuda": {"name": "CUDA SDK", "version": f"{v.short}.1"}}))
    elif isinstance(version_json, dict):
        (tk / "version.json").write_text(json.dumps(version_json))
    elif isinstance(version_json, str):
        (tk / "version.json").write_text(version_json)
    return tk


def link_cuda(root: Path, target: str, path: str = "usr/local/cuda") -> Path:
    """`<root>/<path>` -> target, the text written verbatim (absolute targets stay absolute)."""
    link = root / path
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def tree_digest(path: Path) -> str:
    """A hash over names, types, modes, link texts and contents of everything under path."""
    h = hashlib.sha256()
    paths = [path, *sorted(path.rglob("*"))] if os.path.lexists(path) else []
    for p in paths:
        st = p.lstat()
        h.update(str(p.relative_to(path)).encode() + b"\0" + oct(st.st_mode).encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(b"L" + os.readlink(p).encode())
        elif stat.S_ISREG(st.st_mode):
            h.update(b"F" + p.read_bytes())
    return h.hexdigest()


def copy_toolkit(src: Path, root: Path) -> Path:
    """Hard-link copy of a real installed toolkit into `<root>/usr/local/<name>` (fast; 300 MB each).

    Tests may delete files in the copy but must never write into one: the inode is shared.
    """
    dest = root / "usr" / "local" / src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest, symlinks=True, copy_function=os.link)
    return dest


def cli(root: Path, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """`provision --root ROOT args...` in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(main, ["--root", str(root), *args], env=env)


def unprivileged(argv: Sequence[str]) -> list[str]:
    """argv run without the capabilities that let root ignore file permissions.

    Tests run as root, and root writes into a 0555 directory anyway (CAP_DAC_OVERRIDE), and os.access
    says yes. `setpriv` drops every capability, so the same uid 0 gets the EACCES an ordinary user
    gets: a real refusal, not a mocked one. As a non-root user nothing needs dropping.
    """
    if os.geteuid() != 0:
        return list(argv)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("setpriv (util-linux) is needed to test permission refusals as root")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", *argv]


def provision_argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "provisioner", "--root", str(root), *args]
