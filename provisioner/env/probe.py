"""Run the probe script (scripts/probe_env.py) with an environment's own Python."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provisioner import proc
from provisioner.env.target import EnvTarget
from provisioner.errors import CommandError

PROBE_SCRIPT = Path(__file__).parent.parent / "scripts" / "probe_env.py"
#: Importing torch takes seconds, initialising CUDA on a big GPU more; a JIT of PTX can take minutes.
PROBE_TIMEOUT = 300


def run(target: EnvTarget, environ: Mapping[str, str],
        timeout: float = PROBE_TIMEOUT) -> tuple[dict[str, Any] | None, str | None]:
    """Run the probe script with the environment's own Python: (report, problem).

    A crash (a torch that segfaults on import) still yields the package versions, from a second,
    metadata-only run, with the crash as the problem.
    """
    def once(*extra: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            done = proc.run([target.python, PROBE_SCRIPT, *extra], env=environ, timeout=timeout,
                            check=False)
        except CommandError as e:
            return None, e.message
        try:
            doc = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
        except ValueError:
            doc = None
        if isinstance(doc, dict) and done.returncode == 0:
            return doc, None
        how = (f"killed by signal {-done.returncode}" if done.returncode < 0
               else f"exited {done.returncode}")
        detail = proc.tail(done.stderr or done.stdout, 8).strip()
        return None, f"the environment probe {how}" + (f":\n{detail}" if detail else "")

    report, problem = once()
    if report is None and problem is not None and "not found" not in problem:
        partial, _ = once("--metadata-only")
        if partial is not None:
            return partial, problem
    return report, problem
