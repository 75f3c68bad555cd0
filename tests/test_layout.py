"""The package's shape: no two modules import each other (imports inside functions count too)."""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "provisioner"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if "scripts" in rel.parts:
            continue   # run by the target environment's Python; they import nothing of ours
        name = ".".join(rel.parts)
        mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("provisioner"):
            submodules = {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods}
            found |= submodules
            if node.module in mods and len(submodules) < len(node.names):
                found.add(node.module)     # names from the package (or module) itself
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in mods}
    return found


def test_no_two_modules_import_each_other() -> None:
    mods = _modules()
    deps = {m: _imports(p, mods) for m, p in mods.items()}
    assert "provisioner.facts" in deps and "provisioner.explain.smi" in deps
    pairs = [(a, b) for a, b in itertools.combinations(sorted(mods), 2)
             if b in deps[a] and a in deps[b] and b != "provisioner" and a != "provisioner"]
    assert pairs == []
