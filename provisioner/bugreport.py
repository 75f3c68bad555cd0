"""`provision report`: one redacted Markdown/JSON file with everything a maintainer asks for."""
from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import __version__, redact, state
from provisioner.errors import ProvisionError

if TYPE_CHECKING:
    from provisioner.facts import Facts

#: Environment variables worth showing (values redacted when secret-looking).
ENV_VARS = ("PATH", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES", "HF_ENDPOINT",
            "HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PIP_INDEX_URL",
            "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "CONDA_PREFIX", "VIRTUAL_ENV", "BNB_CUDA_VERSION",
            "PYTORCH_CUDA_ALLOC_CONF")


def collect(*, root: Path, environ: Mapping[str, str], env_target: str | None,
            profile_name: str | None) -> dict[str, Any]:
    """Gather the facts once; each section records its own error instead of stopping the report."""
    from provisioner import up, verify
    from provisioner.model import smoke

    doc: dict[str, Any] = {
        "version": 1,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "provision": __version__,
        "platform": {"python": sys.version.split()[0], "system": platform.platform()},
        "environment_variables": {k: environ[k] for k in ENV_VARS if k in environ},
    }

    def section(name: str, fn: Callable[[], Any]) -> None:
        try:
            doc[name] = fn()
        except (ProvisionError, OSError, ValueError) as e:
            doc[name] = {"error": getattr(e, "message", str(e))}

    # One gather (NVML child, toolkits, link, env probe) feeds the verdicts and the raw sections below.
    facts = verify.gather(root=root, environ=environ, env_target=env_target)
    section("checks", lambda: [c.to_dict() for c in verify.evaluate(
        facts, root=root, environ=environ, profile_name=profile_name)])
    doc["driver"] = facts.info.to_dict() if facts.info is not None else None
    # The whole snapshot, so that `provision explain` on another machine runs the same checks.
    doc["facts"] = facts.to_dict()
    section("cuda", lambda: _toolkits(facts))
    section("environment", lambda: _environment(facts, environ))
    section("profile", lambda: _profile(doc, profile_name, environ))
    doc["last_smoke"] = state.read(environ, smoke.LAST_RESULT)
    doc["last_up"] = state.read(environ, up.STATE_FILE)
    doc["last_failure"] = state.read(environ, state.LAST_FAILURE)
    redacted: dict[str, Any] = redact.redact(doc, environ)
    return redacted


def _toolkits(facts: Facts) -> dict[str, Any]:
    link = facts.link
    if link is None or facts.cuda is None:
        raise ProvisionError(facts.link_error or "the /usr/local/cuda link could not be read")
    out: dict[str, Any] = {"link": link.to_dict(), "toolkits": [t.to_dict() for t in facts.cuda.toolkits]}
    # What the link's own toolkit printed when the facts were read (its nvcc runs once).
    tk = link.toolkit
    if tk is not None and tk.has_nvcc:
        out["nvcc_version"] = tk.nvcc_output or f"unavailable: {tk.nvcc_error or 'no output'}"
    else:
        out["nvcc_version"] = f"unavailable: /usr/local/cuda is {link.state}"
    out["nvcc_on_path"] = facts.cuda.nvcc.first
    return out


def _environment(facts: Facts, environ: Mapping[str, str]) -> dict[str, Any]:
    from provisioner.env import lock as lockmod
    from provisioner.env import record

    target = facts.target
    if target is None:
        raise ProvisionError(facts.target_error or "no environment", hint=facts.target_hint)
    out: dict[str, Any] = {"prefix": str(target.prefix), "kind": target.kind, "python": str(target.python)}
    try:
        # From distribution metadata, as the lock reads it: envs built with uv have no pip.
        found = lockmod.installed(target.python, environ, timeout=120)
        out["python_version"] = found.python
        out["packages"] = dict(found.packages)
    except ProvisionError as e:
        out["packages"] = {"error": e.message}
    for name in (lockmod.LOCK_NAME, record.RECORD_NAME):
        f = target.prefix / name
        if f.is_file():
            try:
                out[name] = json.loads(f.read_text())
            except ValueError:
                out[name] = f.read_text()[:4000]
    return out


def _profile(doc: Mapping[str, Any], profile_name: str | None, environ: Mapping[str, str]) -> dict[str, Any] | None:
    from provisioner import profiles
    from provisioner.env import record

    env_doc = doc.get("environment") or {}
    name = profile_name or (env_doc.get(record.RECORD_NAME) or {}).get("profile")
    return profiles.get(name, environ).to_dict() if name else None


def to_markdown(doc: Mapping[str, Any]) -> str:
    """The report as Markdown: a verdict table first, then each section as fenced text."""
    lines = [f"# provision report ({doc.get('generated')})", "",
             f"provision {doc.get('provision')}, Python {doc['platform']['python']}, "
             f"{doc['platform']['system']}", ""]
    checks = doc.get("checks")
    if isinstance(checks, list):
        lines += ["## Checks", "", "| status | check | finding | fix |", "|---|---|---|---|"]
        for c in checks:
            cells = [c["status"], c["id"], c["message"], c.get("fix") or ""]
            lines.append("| " + " | ".join(str(x).replace("|", "\\|").replace("\n", " ") for x in cells) + " |")
        lines.append("")
    cuda = doc.get("cuda") or {}
    if isinstance(cuda, Mapping) and "nvcc_version" in cuda:
        lines += ["## nvcc --version (/usr/local/cuda/bin/nvcc)", "", "```", str(cuda["nvcc_version"]).rstrip(),
                  "```", ""]
    for key, title in (("driver", "Driver (NVML)"), ("cuda", "CUDA toolkits and the /usr/local/cuda link"),
                       ("environment", "Environment: packages and lock"), ("profile", "Profile"),
                       ("last_smoke", "Last smoke chat"), ("last_up", "Last `provision up`"),
                       ("last_failure", "Last failure"), ("environment_variables", "Environment variables"),
                       ("facts", "Facts (machine-readable, for `provision explain`)")):
        value = doc.get(key)
        lines += [f"## {title}", ""]
        if value is None:
            lines += ["(none recorded)", ""]
            continue
        if key == "last_failure" and isinstance(value, Mapping):
            lines += [f"`{' '.join(value.get('argv') or [])}`", "", f"error: {value.get('message')}"]
            if value.get("hint"):
                lines.append(f"hint: {value.get('hint')}")
            if value.get("detail"):
                lines += ["", "```", str(value["detail"]).rstrip()[-4000:], "```"]
            lines.append("")
            continue
        lines += ["```json", json.dumps(value, indent=2, default=str), "```", ""]
    return "\n".join(lines)
