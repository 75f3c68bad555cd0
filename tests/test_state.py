"""state: small JSON records under $XDG_STATE_HOME/provision, written atomically."""
from __future__ import annotations

import os
from pathlib import Path

from provisioner import state


def test_write_then_read_under_xdg_state_home(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path)}
    target = state.write(environ, "x.json", {"a": 1, "p": Path("/p")})
    assert target == tmp_path / "state" / "provision" / "x.json"
    assert state.read(environ, "x.json") == {"a": 1, "p": "/p"}
    assert sorted(os.listdir(target.parent)) == ["x.json"]          # no temp file left behind


def test_missing_or_damaged_records_read_as_none(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    assert state.read(environ, "none.json") is None
    state.path(environ, "bad.json").parent.mkdir(parents=True)
    state.path(environ, "bad.json").write_text("{not json")
    assert state.read(environ, "bad.json") is None


def test_a_failed_write_keeps_the_old_record(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    state.write(environ, "r.json", {"v": 1})

    class Unserialisable:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    try:
        state.write(environ, "r.json", {"v": Unserialisable()})
    except RuntimeError:
        pass
    assert state.read(environ, "r.json") == {"v": 1}
    assert [p.name for p in state.path(environ, "r.json").parent.iterdir()] == ["r.json"]


def test_record_failure_never_raises(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    # the state dir cannot be created under a regular file: the failure is dropped, not raised
    state.record_failure({"XDG_STATE_HOME": str(blocked), "HOME": str(tmp_path)}, ["provision"], "m", None)
    ok = {"XDG_STATE_HOME": str(tmp_path / "s"), "HOME": str(tmp_path)}
    state.record_failure(ok, ["provision", "up"], "it broke", "do this", "x" * 9000)
    doc = state.read(ok, state.LAST_FAILURE)
    assert doc["argv"] == ["provision", "up"] and doc["hint"] == "do this" and len(doc["detail"]) == 8000
