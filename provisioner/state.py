"""Small JSON records in $XDG_STATE_HOME/provision: the last failure, last results of stages."""
from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from provisioner import fsio, paths

#: The last user-facing error (written by the CLI, read by `provision report`).
LAST_FAILURE = "last-failure.json"


def path(environ: Mapping[str, str], name: str) -> Path:
    return paths.state_dir(environ) / name


def read(environ: Mapping[str, str], name: str) -> Any | None:
    try:
        return json.loads(path(environ, name).read_text())
    except (OSError, ValueError):
        return None


def write(environ: Mapping[str, str], name: str, data: Any) -> Path:
    """Write atomically, readable by this user only, so an interrupted run never leaves half a record."""
    return fsio.atomic_write(path(environ, name), json.dumps(data, indent=2, default=str), mode=0o600)


def record_failure(environ: Mapping[str, str], argv: Sequence[str], message: str,
                   hint: str | None, detail: str = "") -> None:
    """Keep the last user-facing failure for `provision report`, redacted as the report is (a
    password in an index URL must not sit in a file); never fails the caller."""
    from provisioner import redact

    try:
        write(environ, LAST_FAILURE, redact.redact({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(argv),
            "message": message, "hint": hint, "detail": detail[-8000:],
        }, environ))
    except OSError:
        pass
