"""env create's decision about what is already at the prefix: a pure function, tested from a table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner.env.plan import decide_existing
from provisioner.errors import ProvisionError

SPEC = {"profile": "cpu", "python": "3.11", "torch": ["torch==2.13.0+cpu"], "packages": [], "backend": "venv"}
OTHER = dict(SPEC, profile="cu126", torch=["torch==2.13.0+cu126"])
PREFIX = Path("/envs/llm")


def record(status: str, spec: dict[str, Any] | None = SPEC, **extra: Any) -> dict[str, Any]:
    return {"status": status, "profile": (spec or {}).get("profile"), "spec": spec, **extra}


DAMAGE = ["torch 2.13.0+cpu: 1893 of its files are missing (e.g. torch/__init__.py)"]

# (existing record, python exists, being built now, --force) -> action, or the refusal's words
CASES = [
    pytest.param(None, False, False, False, "create", id="nothing-there"),
    pytest.param(None, False, False, True, "create", id="nothing-there-force"),
    pytest.param(record("complete"), True, False, False, "up-to-date", id="same-spec-complete"),
    pytest.param(record("complete"), True, False, True, "up-to-date", id="same-spec-force-is-still-a-noop"),
    pytest.param(record("complete", OTHER), True, False, False, "holds an environment built from profile cu126",
                 id="other-profile"),
    pytest.param(record("complete", OTHER), True, False, True, "replace", id="other-profile-force"),
    pytest.param(record("complete"), False, False, False, "is broken: /envs/llm/bin/python is missing",
                 id="python-gone"),
    pytest.param(record("complete"), False, False, True, "replace", id="python-gone-force"),
    pytest.param(record("building"), True, False, False, "is half-built", id="interrupted"),
    pytest.param(record("building", error="install torch failed: no space"), True, False, False,
                 "it failed: install torch failed: no space", id="failed-build"),
    pytest.param(record("building"), True, False, True, "replace", id="interrupted-force"),
    pytest.param(record("building"), True, True, False, "being built right now", id="building-now"),
    pytest.param(record("building"), True, True, True, "being built right now", id="building-now-force"),
    pytest.param({"status": "building", "profile": None, "spec": None}, False, False, False, "is half-built",
                 id="registry-only"),
]


# damage (what the environment holds differs from its lock) and `up`'s repair
DAMAGE_CASES = [
    pytest.param(DAMAGE, False, False, "is damaged: torch 2.13.0+cpu: 1893 of its files are missing", id="damaged"),
    pytest.param(DAMAGE, True, False, "replace", id="damaged-force"),
    pytest.param(DAMAGE, False, True, "replace", id="damaged-repair"),
    pytest.param([], False, True, "up-to-date", id="healthy-repair-is-a-noop"),
]


@pytest.mark.parametrize(("damage", "force", "repair", "want"), DAMAGE_CASES)
def test_damage_is_not_up_to_date(damage: list[str], force: bool, repair: bool, want: str) -> None:
    kwargs: dict[str, Any] = {"spec": SPEC, "python": PREFIX / "bin" / "python", "python_exists": True,
                              "building_now": False, "force": force, "prefix": PREFIX, "profile": "cpu",
                              "damage": damage, "repair": repair}
    if want in ("up-to-date", "replace"):
        assert decide_existing(record("complete"), **kwargs) == want
    else:
        with pytest.raises(ProvisionError) as e:
            decide_existing(record("complete"), **kwargs)
        assert want in e.value.message and "--force" in (e.value.hint or "")


def test_repair_rebuilds_a_half_built_env_but_never_another_profiles() -> None:
    kwargs: dict[str, Any] = {"spec": SPEC, "python": PREFIX / "bin" / "python", "python_exists": True,
                              "building_now": False, "force": False, "prefix": PREFIX, "profile": "cpu",
                              "repair": True}
    assert decide_existing(record("building"), **kwargs) == "replace"
    with pytest.raises(ProvisionError, match="holds an environment built from profile cu126"):
        decide_existing(record("complete", OTHER), **kwargs)


@pytest.mark.parametrize(("existing", "python_exists", "building", "force", "want"), CASES)
def test_decide_existing(existing: dict[str, Any] | None, python_exists: bool, building: bool, force: bool,
                         want: str) -> None:
    kwargs: dict[str, Any] = {"spec": SPEC, "python": PREFIX / "bin" / "python", "python_exists": python_exists,
                              "building_now": building, "force": force, "prefix": PREFIX, "profile": "cpu"}
    if want in ("create", "up-to-date", "replace"):
        assert decide_existing(existing, **kwargs) == want
    else:
        with pytest.raises(ProvisionError) as e:
            decide_existing(existing, **kwargs)
        assert want in e.value.message and e.value.hint
