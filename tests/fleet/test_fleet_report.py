"""`provision fleet report`: the documents real hosts leave (verify, report, Ansible's records) -> one table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner import fleet
from provisioner.cli import main
from tests.fixtures_nvml import H100, FakeMachine, MachineFactory
from tests.helpers_cuda import link_cuda, make_toolkit

#: What ansible-core records for a host it cannot reach (a registered result with ignore_unreachable).
UNREACHABLE = {"changed": False, "unreachable": True, "host": "gpu9",
               "msg": "Failed to connect to the host via ssh: ssh: connect to host 10.1.9.2 port 22: "
                      "No route to host"}


def _tool(root: Path, environ: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "provisioner", "--root", str(root), *args],
                          capture_output=True, text=True, env=environ, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


@pytest.fixture
def results(tmp_path: Path, fake_machine: MachineFactory, no_driver_environ: dict[str, str]) -> Path:
    """Five hosts' verify documents: three alike, one without a GPU, one with a real /usr/local/cuda."""
    out = tmp_path / "results"
    out.mkdir()
    for name, machine, link in (("a1", FakeMachine(), "cuda-12.6"), ("a2", FakeMachine(), "cuda-12.6"),
                                ("a3", FakeMachine(gpus=(H100, H100)), "cuda-12.6"), ("nogpu", None, "cuda-12.6"),
                                ("realdir", FakeMachine(), None)):
        root = tmp_path / name
        if link is None:
            make_toolkit(root, "12.4", name="cuda")
        else:
            make_toolkit(root, "12.6")
            link_cuda(root, link)
        environ = fake_machine(machine) if machine is not None else dict(no_driver_environ)
        (out / f"{name}.json").write_text(_tool(root, environ, "verify", "--json"))
    return out


def test_one_row_per_host_with_the_checks_that_differ(results: Path) -> None:
    (results / "gpu9.json").write_text(json.dumps(UNREACHABLE))
    (results / "broken.json").write_text("{ not json")
    done = CliRunner().invoke(main, ["fleet", "report", str(results)])
    assert done.exit_code == 1 and "Traceback" not in done.output
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["host", "GPU", "driver", "toolkit", "link", "profile", "torch", "verdict",
                                "differs", "from", "the", "majority"]
    rows = {line.split()[0]: line for line in lines[2:] if line and not line.startswith(" ")}
    assert set(rows) >= {"a1", "a2", "a3", "nogpu", "realdir", "gpu9", "broken"}
    assert "NVIDIA GeForce RTX 4060 Laptop GPU (8 GiB)" in rows["a1"] and "cuda-12.6 (12.6.85)" in rows["a1"]
    assert "2x NVIDIA H100 80GB HBM3 (80 GiB)" in rows["a3"]
    assert rows["a1"].rstrip().endswith("-")              # like the majority in every check
    assert "driver FAIL" in rows["nogpu"] and "gpu.0 missing" in rows["nogpu"]
    assert "gpu.0.memory" not in rows["nogpu"]             # under its missing parent
    assert "real directory (12.4.131)" in rows["realdir"] and "cuda.link FAIL" in rows["realdir"]
    assert "unreachable" in rows["gpu9"] and "unreadable" in rows["broken"]
    assert "gpu9: unreachable: Failed to connect to the host via ssh" in done.stdout
    assert "broken: unreadable:" in done.stdout
    assert "7 host(s): 3 warn, 2 FAIL, 1 unreachable, 1 unreadable" in done.stdout


def test_json_document(results: Path) -> None:
    done = CliRunner().invoke(main, ["fleet", "report", "--json", str(results / "a1.json"),
                                     str(results / "nogpu.json"), str(results / "a2.json")])
    assert done.exit_code == 1
    doc = json.loads(done.stdout)
    assert doc["version"] == 1 and doc["ok"] is False and doc["counts"] == {"warn": 2, "FAIL": 1}
    assert doc["majority"]["driver"] == "ok" and doc["majority"]["gpu.0"] == "ok"
    a1, nogpu, a2 = doc["hosts"]
    assert a1 == {"host": "a1", "verdict": "warn", "gpu": "NVIDIA GeForce RTX 4060 Laptop GPU (8 GiB)",
                  "driver": "575.57.08", "toolkit_link": "cuda-12.6 (12.6.85)", "profile": None, "torch": None,
                  "reason": None, "changed": None, "checks": a1["checks"], "differs": {},
                  "file": str(results / "a1.json")}
    assert a1["checks"]["cuda.link"] == "ok" and a1["checks"] == a2["checks"]
    assert nogpu["differs"] == {"driver": "fail", "driver.cuda": "skip", "gpu": "skip", "gpu.0": "missing",
                                "cuda.driver": "skip"}
    assert nogpu["gpu"] == "none" and nogpu["driver"] == "none"


def test_a_report_file_reads_like_verify(tmp_path: Path, fake_machine: MachineFactory) -> None:
    root = tmp_path / "root"
    make_toolkit(root, "12.6")
    link_cuda(root, "cuda-12.6")
    path = tmp_path / "ws1.json"
    path.write_text(_tool(root, fake_machine(FakeMachine()), "report", "--json"))
    (r,) = fleet.report([path]).rows
    assert (r.host, r.verdict, r.driver, r.link) == ("ws1", "warn", "575.57.08", "cuda-12.6 (12.6.85)")


def test_majority_and_ties() -> None:
    def host(name: str, **checks: str) -> fleet.HostRow:
        return fleet.HostRow(name, fleet.OK, checks=checks)

    three = fleet.compare([host("a", driver="ok"), host("b", driver="ok"), host("c", driver="warn")])
    assert [r.differs for r in three.rows] == [(), (), ("driver",)]
    tie = fleet.compare([host("a", driver="ok"), host("b", driver="warn")])
    assert [r.differs for r in tie.rows] == [("driver",), ("driver",)] and tie.majority == {}


def test_the_tools_error_document_is_an_error_row(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(_tool(tmp_path / "root", {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          "cuda", "switch", "12.6", "--json").strip() or "{}")
    (r,) = fleet.report([path]).rows
    assert r.verdict == "error" and r.reason is not None and "hint:" in r.reason


def test_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = CliRunner().invoke(main, ["fleet", "report", str(empty)])
    assert done.exit_code == 2 and "holds no *.json result files" in done.stderr
    done = CliRunner().invoke(main, ["fleet", "report", str(tmp_path / "nope")])
    assert done.exit_code == 2 and "Traceback" not in done.output
    done = CliRunner().invoke(main, ["fleet", "report"])
    assert done.exit_code == 2 and "Traceback" not in done.output
