"""fsio: atomic replacement of files and links, and the flock every lock of provision takes."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from provisioner import fsio
from provisioner.env import record

# A second process that takes the lock and holds it until its stdin closes (flock locks belong to
# open files, so only another process shows what a concurrent `provision` would meet).
HOLDER = """\
import sys
from pathlib import Path
from provisioner import fsio
with fsio.locked(Path(sys.argv[1])) as got:
    print("held" if got else "not held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def held_elsewhere(path: Path) -> Iterator[None]:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        yield
    finally:
        child.communicate("")
    assert child.returncode == 0


def test_atomic_write_replaces_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "r.json"
    fsio.atomic_write(target, "one")
    fsio.atomic_write(target, b"two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["r.json"]


def test_atomic_write_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        plain = fsio.atomic_write(tmp_path / "plain", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o644              # as open() would make it
    assert stat.S_IMODE(fsio.atomic_write(tmp_path / "private", "x", mode=0o600).stat().st_mode) == 0o600
    assert stat.S_IMODE(fsio.atomic_write(tmp_path / "rc", "x", mode=0o640).stat().st_mode) == 0o640


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    work = tmp_path / "w"
    target = fsio.atomic_write(work / "r.json", "old")
    (work / "r.json.d").mkdir()
    # the rename over a directory fails for real (EISDIR): the temporary file goes, the old one stays
    with pytest.raises(OSError):
        fsio.atomic_write(work / "r.json.d", "new")
    assert target.read_text() == "old"
    assert sorted(os.listdir(work)) == ["r.json", "r.json.d"]


def test_atomic_symlink_replaces_a_link_and_leaves_no_temporary(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    link = fsio.atomic_symlink(work / "cuda", "cuda-12.6")
    fsio.atomic_symlink(link, "/usr/local/cuda-12.9")
    assert os.readlink(link) == "/usr/local/cuda-12.9"
    assert os.listdir(work) == ["cuda"]


def test_a_lock_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    with held_elsewhere(path):
        with fsio.locked(path, blocking=False) as got:
            assert got is False
    with fsio.locked(path, blocking=False) as got:       # released when its holder ended
        assert got is True


def test_the_env_build_lock_is_seen_by_another_process(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    prefix = tmp_path / "env"
    assert record.is_building_now(prefix, environ) is False
    with held_elsewhere(record.build_lock_path(prefix, environ)):
        assert record.is_building_now(prefix, environ) is True
