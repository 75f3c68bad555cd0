"""`provision fleet report`: many hosts' JSON results -> one row per host, and where each differs from the majority.

A result is what a host left behind: the Ansible module's result saved by the playbook (the tool's own
documents inside it, or Ansible's `unreachable`/`failed` record), a `provision verify --json` or
`provision report --json` document, an `up --json` document, or the tool's `{"ok": false, "error": ...}`.
Every input becomes a row, whatever it holds: an unreachable host, a failed one or an unreadable
file is a row that says so, never a missing row. Everything here but `load` is a pure function of
the documents.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from provisioner.errors import UsageError
from provisioner.units import GiB

JSON_VERSION = 1

#: A host's verdict: its checks (ok / warn / FAIL), or why there are none to judge.
OK, WARN, FAIL = "ok", "warn", "FAIL"
ERROR = "error"               # the tool (or the module) stopped with an error on the host
UNREACHABLE = "unreachable"   # Ansible could not reach the host
UNREADABLE = "unreadable"     # the result file is not JSON, or not a result this reads
VERDICTS = (OK, WARN, FAIL, ERROR, UNREACHABLE, UNREADABLE)
#: Verdicts that leave `fleet report` with exit code 0.
PASSING = (OK, WARN)


@dataclass(frozen=True)
class Source:
    """One input: the host it is for and its parsed JSON (or why it could not be read)."""

    host: str
    path: str
    doc: Any = None
    problem: str | None = None


@dataclass(frozen=True)
class HostRow:
    host: str
    verdict: str                               # one of VERDICTS
    gpu: str | None = None
    driver: str | None = None
    link: str | None = None                    # the /usr/local/cuda link, as "cuda-12.6 (12.6.85)"
    profile: str | None = None
    torch: str | None = None
    reason: str | None = None                  # why error / unreachable / unreadable (and the tool's hint)
    changed: bool | None = None                # the Ansible task's `changed` (None: not an Ansible result)
    checks: Mapping[str, str] = field(default_factory=dict)     # check id -> status
    differs: tuple[str, ...] = ()              # check ids whose status is not the majority's
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "verdict": self.verdict, "gpu": self.gpu, "driver": self.driver,
                "toolkit_link": self.link, "profile": self.profile, "torch": self.torch,
                "reason": self.reason, "changed": self.changed, "checks": dict(self.checks),
                "differs": {cid: self.checks.get(cid, "missing") for cid in self.differs},
                "file": self.path}


@dataclass(frozen=True)
class Fleet:
    rows: tuple[HostRow, ...]
    majority: Mapping[str, str]                # check id -> the status most hosts have (when most do)

    @property
    def ok(self) -> bool:
        return all(r.verdict in PASSING for r in self.rows)

    def counts(self) -> dict[str, int]:
        found = Counter(r.verdict for r in self.rows)
        return {v: found[v] for v in VERDICTS if found[v]}

    def to_document(self) -> dict[str, Any]:
        return {"version": JSON_VERSION, "ok": self.ok, "hosts": [r.to_dict() for r in self.rows],
                "majority": dict(self.majority), "counts": self.counts()}


# --------------------------------------------------------------------------- reading

def load(paths: Sequence[Path]) -> list[Source]:
    """FILE: one host (named by its `host` key, else the file's name); DIR: each *.json in it, sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.glob("*.json") if p.is_file())
            if not found:
                raise UsageError(f"{path} holds no *.json result files",
                                 hint="pass the folder the playbook saved its results in, or the files")
            files += found
        else:
            files.append(path)
    return [_read(p) for p in files]


def _read(path: Path) -> Source:
    host = path.name[:-5] if path.name.endswith(".json") else path.name
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return Source(host, str(path), problem=f"cannot read {path}: {e.strerror or e}")
    try:
        doc = json.loads(text)
    except ValueError as e:
        return Source(host, str(path), problem=f"{path} is not JSON ({e})")
    if isinstance(doc, dict) and isinstance(doc.get("host"), str) and doc["host"]:
        host = doc["host"]
    return Source(host, str(path), doc=doc)


# --------------------------------------------------------------------------- one host

def row(source: Source) -> HostRow:
    """The row of one host, from whichever result it left."""
    doc, host, path = source.doc, source.host, source.path
    if source.problem is not None:
        return HostRow(host, UNREADABLE, reason=source.problem, path=path)
    if not isinstance(doc, dict):
        return HostRow(host, UNREADABLE, reason="not a JSON object", path=path)
    if doc.get("unreachable"):
        return HostRow(host, UNREACHABLE, reason=_one_line(doc.get("msg")) or "unreachable", path=path,
                       changed=False)
    if _is_ansible(doc):
        return _from_ansible(host, doc, path)
    return _from_document(host, doc, path)


def _is_ansible(doc: Mapping[str, Any]) -> bool:
    return any(k in doc for k in ("invocation", "changed", "failed", "msg", "rc", "skipped"))


def _from_ansible(host: str, doc: Mapping[str, Any], path: str) -> HostRow:
    """The module's result: its `verify` document (or the main `document`) gives the columns; a failed
    task is an error row that keeps them, with the tool's own message and hint."""
    changed = doc.get("changed") if isinstance(doc.get("changed"), bool) else None
    inner = next((d for d in (doc.get("verify"), doc.get("document")) if isinstance(d, dict)
                  and ("checks" in d or "summary" in d)), None)
    base = _from_document(host, inner, path) if inner is not None else HostRow(host, ERROR, path=path)
    if doc.get("skipped"):
        return replace(base, verdict=ERROR if inner is None else base.verdict, changed=changed,
                       reason=base.reason or _one_line(doc.get("msg")) or "skipped")
    error = doc.get("error") if isinstance(doc.get("error"), dict) else None
    if error is not None:
        return replace(base, verdict=ERROR, changed=changed, reason=_error_text(error))
    if doc.get("failed") and (inner is None or base.verdict in PASSING):
        # failed for another reason than its checks (Ansible's own: a bad argument, a missing tool)
        return replace(base, verdict=ERROR, changed=changed, reason=_one_line(doc.get("msg")) or "failed")
    if inner is None:
        return replace(base, verdict=ERROR, changed=changed,
                       reason=_one_line(doc.get("msg")) or "the result holds no provision document")
    return replace(base, changed=changed)


def _from_document(host: str, doc: Mapping[str, Any], path: str) -> HostRow:
    checks = doc.get("checks")
    if isinstance(checks, list):
        return _from_checks(host, [c for c in checks if isinstance(c, dict)], doc, path)
    if isinstance(doc.get("summary"), dict) or isinstance(doc.get("stages"), list):
        return _from_up(host, doc, path)
    if isinstance(doc.get("error"), dict):
        return HostRow(host, ERROR, reason=_error_text(doc["error"]), path=path)
    return HostRow(host, UNREADABLE, path=path,
                   reason="not a provision result (no checks, no up summary, no error)")


def _from_checks(host: str, checks: list[dict[str, Any]], doc: Mapping[str, Any], path: str) -> HostRow:
    by_id = {str(c.get("id")): c for c in checks}
    statuses = {cid: str(c.get("status")) for cid, c in by_id.items()}
    verdict = (FAIL if "fail" in statuses.values() else WARN if "warn" in statuses.values() else OK)

    def data(cid: str) -> Mapping[str, Any]:
        d = by_id.get(cid, {}).get("data")
        return d if isinstance(d, dict) else {}

    driver = data("driver").get("driver_version")
    if driver is None and statuses.get("driver") in ("fail", "warn"):
        driver = "none"                         # judged, and no driver version to show
    link = data("cuda.link").get("link")
    if not isinstance(link, dict) and isinstance(doc.get("cuda"), dict):
        link = doc["cuda"].get("link")          # a report whose checks section failed
    profile = next((str(data(cid)["profile"]) for cid in ("env.packages", "env.record", "profile")
                    if data(cid).get("profile")), None)
    if profile is None and isinstance(doc.get("profile"), dict) and doc["profile"].get("name"):
        profile = str(doc["profile"]["name"])   # provision report's profile section
    return HostRow(host, verdict, gpu=_gpus(by_id, statuses), driver=str(driver) if driver else None,
                   link=_link_text(link) if isinstance(link, dict) else None, profile=profile,
                   torch=_torch_text(data("env.torch")), checks=statuses, path=path)


def _from_up(host: str, doc: Mapping[str, Any], path: str) -> HostRow:
    s: Mapping[str, Any] = doc["summary"] if isinstance(doc.get("summary"), dict) else {}
    stages = [st for st in doc.get("stages") or [] if isinstance(st, dict)]
    failed = [st for st in stages if st.get("status") == "failed"]
    verdict = (FAIL if failed or doc.get("ok") is False
               else WARN if any(st.get("status") == "warn" for st in stages) else OK)
    reason = None
    if isinstance(doc.get("error"), dict):
        verdict, reason = ERROR, _error_text(doc["error"])
    elif failed:
        reason = f"stage {failed[0].get('name')} failed: {_one_line(failed[0].get('message'))}"
    return HostRow(host, verdict, gpu=_str(s.get("gpu")), driver=_str(s.get("driver")),
                   link=_str(s.get("toolkit")), profile=_str(s.get("profile")), torch=None, reason=reason,
                   checks={f"up.{st.get('name')}": str(st.get("status")) for st in stages}, path=path)


def _gpus(by_id: Mapping[str, Mapping[str, Any]], statuses: Mapping[str, str]) -> str | None:
    names: list[str] = []
    for cid in sorted(by_id, key=lambda c: (len(c), c)):
        parts = cid.split(".")
        d = by_id[cid].get("data")
        if len(parts) == 2 and parts[0] == "gpu" and parts[1].isdigit() and isinstance(d, dict) and d.get("name"):
            total = d.get("memory_total")
            size = f" ({round(total / GiB)} GiB)" if isinstance(total, (int, float)) and total > 0 else ""
            names.append(f"{d['name']}{size}")
    if not names:
        return "none" if statuses.get("gpu") in ("skip", "fail") or statuses.get("driver") == "fail" else None
    counted = Counter(names)
    return ", ".join(name if n == 1 else f"{n}x {name}" for name, n in counted.items())


def _link_text(link: Mapping[str, Any]) -> str:
    state = str(link.get("state") or "missing")
    tk: Mapping[str, Any] = link["toolkit"] if isinstance(link.get("toolkit"), dict) else {}
    version = tk.get("version")
    if state == "ok":
        target = str(link.get("target") or link.get("raw_target") or "?")
        name = tk.get("name") or target.rsplit("/", 1)[-1]
        return f"{name} ({version})" if version else str(name)
    if state == "directory":
        return f"real directory ({version})" if version else "real directory"
    if state == "dangling":
        return f"dangling -> {link.get('raw_target') or '?'}"
    return state


def _torch_text(d: Mapping[str, Any]) -> str | None:
    version = d.get("version")
    if not version:
        return None
    build = d.get("build")
    if "+" in str(version):                    # 2.8.0+cu126, 2.13.0+cpu: the local tag names the build
        return str(version)
    if build == "cuda" and d.get("cuda"):
        return f"{version} (CUDA {d['cuda']})"
    return f"{version} ({build})" if build else str(version)


def _error_text(error: Mapping[str, Any]) -> str:
    text = _one_line(error.get("message")) or "error"
    hint = _one_line(error.get("hint"))
    return f"{text} (hint: {hint})" if hint else text


def _one_line(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


# --------------------------------------------------------------------------- across hosts

def compare(rows: Iterable[HostRow]) -> Fleet:
    """The majority status of each check (over the hosts that have checks), and each host's differences.

    A check's majority is the status more hosts have than any other; a host whose status is another, or
    that lacks a check most hosts have, differs. Where there is no majority (a tie), every host that
    has the check differs in it: nothing says which side is right.
    """
    rows = list(rows)
    judged = [r for r in rows if r.checks]
    ids = sorted({cid for r in judged for cid in r.checks}, key=_check_order)
    majority: dict[str, str] = {}
    tied: set[str] = set()
    for cid in ids:
        counts = Counter(r.checks.get(cid, "missing") for r in judged).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            tied.add(cid)
        else:
            majority[cid] = counts[0][0]
    out = []
    for r in rows:
        if not r.checks:
            out.append(r)
            continue
        differs = [cid for cid in ids
                   if (cid in tied and cid in r.checks)
                   or (cid in majority and r.checks.get(cid, "missing") != majority[cid])]
        # a missing gpu.0 says its gpu.0.memory is missing too: the parent alone is listed
        missing = {cid for cid in differs if cid not in r.checks}
        differs = [cid for cid in differs
                   if not (cid in missing and any(cid.startswith(m + ".") for m in missing))]
        out.append(replace(r, differs=tuple(differs)))
    return Fleet(tuple(out), {cid: majority[cid] for cid in ids if cid in majority})


def _check_order(cid: str) -> tuple[str, ...]:
    return tuple(cid.split("."))


def report(paths: Sequence[Path]) -> Fleet:
    return compare(row(s) for s in load(paths))


def differs_text(r: HostRow) -> str:
    """`driver FAIL, cuda.link FAIL` (a missing check reads `missing`)."""
    return ", ".join(f"{cid} {_status_word(r.checks.get(cid, 'missing'))}" for cid in r.differs)


def _status_word(status: str) -> str:
    return "FAIL" if status == "fail" else status
