"""Replace a file or a link atomically, hold a file lock, and hash a file: the one place provision does each."""
from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

# fcntl.flock, not the `filelock` package: filelock is no dependency of ours (it comes with
# huggingface_hub), its import pulls in logging, decimal, random and hashlib (about 20 ms, as long
# as importing all of provisioner.cli), and its Timeout and per-object reentrancy buy nothing here:
# provision runs on Linux, where a flock dies with its process, so a killed run leaves no stale lock.

_serial = itertools.count()


def _temp_beside(path: Path, tag: str) -> Path:
    """A name beside `path` that no other process or thread is using (pid + a per-process serial)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{next(_serial)}")


def atomic_write(path: Path, data: str | bytes, *, mode: int | None = None) -> Path:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it over `path`.

    A reader (or a crash at any instant) sees the old file or the new one, never half of one. A new
    file gets `mode` when given (exactly, as chmod sets it), else what open() would give: 0o666
    less the umask. A failed write removes its temporary file and leaves `path` as it was.
    """
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_beside(path, "tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o666 if mode is None else 0o600)
            break
        except FileExistsError:
            continue   # left by a killed process that had our pid
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())   # the rename must not reach the disk before the data (ext4, XFS)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_symlink(path: Path, target: str) -> Path:
    """Make `path` a symlink to `target` (the text, verbatim) by renaming a new link over it, so that
    `path` is never missing, not even for an instant; the new link is `<name>.new-<pid>` meanwhile."""
    tmp = path.with_name(f"{path.name}.new-{os.getpid()}")
    try:
        if os.path.lexists(tmp):
            tmp.unlink()   # left by a killed process that had our pid
        os.symlink(target, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    return path


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at `path`, read in 1 MiB blocks (a wheel or a model shard is not read whole)."""
    import hashlib   # not at the top: see the flock note above

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (created, with its folder, when missing) for the with-block.

    Yields True once the lock is held; blocking waits for another holder to finish, blocking=False
    yields False at once instead. The kernel drops the lock when the process dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
