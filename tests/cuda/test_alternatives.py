"""`cuda switch/rollback/current/list` where Debian's update-alternatives manages /usr/local/cuda.

The worlds are built as NVIDIA's packages build them (cuda-toolkit-X-Y-config-common runs
`update-alternatives --install /usr/local/cuda cuda /usr/local/cuda-X.Y XY`), by the real
update-alternatives under the test root; every assertion about the group asks that same tool.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from provisioner import cuda
from provisioner.cuda.checks import CudaFacts
from provisioner.errors import ProvisionError
from provisioner.report import Status
from provisioner.system import alternatives
from provisioner.versions import CudaVersion
from tests.helpers_cuda import cli, link_cuda, make_toolkit, provision_argv, tree_digest, unprivileged

UA = shutil.which("update-alternatives")
pytestmark = pytest.mark.skipif(UA is None, reason="Debian's update-alternatives (dpkg) is not installed here")
ENV: dict[str, str] = {"PATH": f"{os.path.dirname(UA or '/usr/bin')}:/usr/bin:/bin"}


def ua(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real update-alternatives, confined to root (its state and links all under root)."""
    assert UA is not None
    return subprocess.run([UA, "--root", str(root), "--altdir", str(root / "etc/alternatives"),
                           "--admindir", str(root / "var/lib/dpkg/alternatives"), *args],
                          capture_output=True, text=True, check=check)


def register(root: Path, version: str) -> None:
    """What NVIDIA's cuda-toolkit-X-Y-config-common postinst does for one toolkit."""
    v = CudaVersion.parse(version)
    ua(root, "--install", "/usr/local/cuda", "cuda", f"/usr/local/cuda-{v.short}", str(v.major * 10 + v.minor))


def value(root: Path) -> tuple[str, str]:
    """(Status, Value) of the cuda group, as the tool itself reports them."""
    out = dict(line.split(": ", 1) for line in ua(root, "--query", "cuda").stdout.splitlines()[:5] if ": " in line)
    return out["Status"], out["Value"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """12.6 and 12.9 installed and registered (12.9 wins in auto mode), 11.8 installed but not registered."""
    path = tmp_path / "root"
    for version in ("11.8", "12.6", "12.9"):
        make_toolkit(path, version)
    register(path, "12.6")
    register(path, "12.9")
    return path


def test_the_world_is_what_the_packages_make(root: Path) -> None:
    assert os.readlink(root / "usr/local/cuda") == "/etc/alternatives/cuda"
    assert os.readlink(root / "etc/alternatives/cuda") == "/usr/local/cuda-12.9"
    assert value(root) == ("auto", "/usr/local/cuda-12.9")


def test_managed_link_is_read_and_judged_ok(root: Path) -> None:
    state = cuda.read_link(root, ENV)
    assert (state.state, state.alternative, state.target_system) == ("ok", "cuda", "/usr/local/cuda-12.9")
    assert state.describe() == ("/usr/local/cuda -> /etc/alternatives/cuda => /usr/local/cuda-12.9 "
                                "(ok, managed by update-alternatives as 'cuda')")
    facts = cuda.gather(root, ENV)
    check = cuda.judge_link(facts, root)
    assert check.status is Status.OK and check.fix is None
    assert check.message == ("/usr/local/cuda -> /etc/alternatives/cuda => /usr/local/cuda-12.9 (CUDA 12.9.86, "
                             "reported by its nvcc; managed by update-alternatives as 'cuda')")
    assert check.data["managed_by"] == "update-alternatives"
    # facts written to a report and read back are judged the same
    again = CudaFacts.from_dict(json.loads(json.dumps(facts.to_dict())))
    assert again.link is not None and again.link.alternative == "cuda"
    assert cuda.judge_link(again, root).status is Status.OK


def test_current_and_list_say_who_manages_the_link(root: Path) -> None:
    current = cli(root, "cuda", "current")
    assert "managed: by update-alternatives as 'cuda' (`cuda switch` and `cuda rollback` go through it)" \
        in current.stdout
    assert "Traceback" not in current.output
    listed = cli(root, "cuda", "list")
    assert listed.exit_code == 0 and "(ok, managed by update-alternatives as 'cuda')" in listed.stdout
    doc = json.loads(cli(root, "--json", "cuda", "list").stdout)
    assert doc["link"]["managed_by"] == "update-alternatives" and doc["link"]["alternative"] == "cuda"


def test_a_dangling_managed_link_is_broken_and_its_fix_works(root: Path) -> None:
    shutil.rmtree(root / "usr/local/cuda-12.9")
    check = cuda.judge_link(cuda.gather(root, ENV), root)
    assert check.status is Status.FAIL
    assert "(update-alternatives 'cuda' points there)" in check.message
    assert check.fix == f"provision --root {root} cuda switch 12.6"
    assert cli(root, "cuda", "switch", "12.6").exit_code == 0
    assert value(root) == ("manual", "/usr/local/cuda-12.6")
    assert cuda.judge_link(cuda.gather(root, ENV), root).status is Status.OK
    back = cli(root, "cuda", "rollback")                  # to the removed toolkit: refused, nothing changed
    assert back.exit_code == 1
    assert "error: the previous target /usr/local/cuda-12.9 no longer exists; nothing was changed" in back.stderr
    assert value(root) == ("manual", "/usr/local/cuda-12.6")


def test_switch_goes_through_update_alternatives(root: Path) -> None:
    result = cli(root, "cuda", "switch", "12.6")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("/usr/local/cuda -> /etc/alternatives/cuda => /usr/local/cuda-12.6 "
                                    "(was /usr/local/cuda-12.9; switched by update-alternatives)")
    assert os.readlink(root / "usr/local/cuda") == "/etc/alternatives/cuda"    # the link stays managed
    assert os.readlink(root / "etc/alternatives/cuda") == "/usr/local/cuda-12.6"
    assert value(root) == ("manual", "/usr/local/cuda-12.6")                    # the tool agrees
    assert "--set cuda /usr/local/cuda-12.6" in (root / "var/log/alternatives.log").read_text()
    record = json.loads((root / "var/lib/provision/cuda-switch.json").read_text())
    assert (record["previous"], record["previous_target"], record["current"], record["via"]) == (
        "/etc/alternatives/cuda", "/usr/local/cuda-12.9", "/usr/local/cuda-12.6", "update-alternatives")
    assert sorted(p.name for p in (root / "usr/local").iterdir()) == ["cuda", "cuda-11.8", "cuda-12.6", "cuda-12.9"]


def test_an_unregistered_toolkit_is_installed_with_nvidias_priority(root: Path) -> None:
    result = cli(root, "cuda", "switch", "cu118")
    assert result.exit_code == 0, result.output
    assert value(root) == ("manual", "/usr/local/cuda-11.8")
    display = ua(root, "--display", "cuda").stdout
    assert "/usr/local/cuda-11.8 - priority 118" in display and "/usr/local/cuda-12.9 - priority 129" in display


def test_rollback_goes_back_through_update_alternatives(root: Path) -> None:
    assert cli(root, "cuda", "switch", "12.6").exit_code == 0
    result = cli(root, "cuda", "rollback")
    assert result.exit_code == 0, result.output
    assert value(root) == ("manual", "/usr/local/cuda-12.9")
    assert os.readlink(root / "usr/local/cuda") == "/etc/alternatives/cuda"
    assert cli(root, "cuda", "rollback").exit_code == 0        # a rollback of the rollback goes forward
    assert value(root) == ("manual", "/usr/local/cuda-12.6")


def test_dry_run_prints_the_commands_and_changes_nothing(root: Path) -> None:
    before = tree_digest(root)
    result = cli(root, "cuda", "switch", "11.8", "--dry-run")
    assert result.exit_code == 0, result.output
    opts = (f"--root {root} --altdir {root}/etc/alternatives --admindir {root}/var/lib/dpkg/alternatives")
    assert (f"  3. update-alternatives {opts} --install /usr/local/cuda cuda /usr/local/cuda-11.8 118  "
            "(register it in the 'cuda' group)") in result.stdout
    assert (f"  4. update-alternatives {opts} --set cuda /usr/local/cuda-11.8  "
            "(it renames a new link over /etc/alternatives/cuda)") in result.stdout
    doc = json.loads(cli(root, "--json", "cuda", "switch", "12.6", "--dry-run").stdout)
    assert doc["via"] == "update-alternatives" and doc["commands"] == [
        ["update-alternatives", *opts.split(), "--set", "cuda", "/usr/local/cuda-12.6"]]
    assert tree_digest(root) == before


def test_commands_for_the_real_root_carry_no_options() -> None:
    assert alternatives.set_commands(Path("/"), "/usr/local/cuda", "cuda", "/usr/local/cuda-12.6", 126, False) == [
        ["update-alternatives", "--install", "/usr/local/cuda", "cuda", "/usr/local/cuda-12.6", "126"],
        ["update-alternatives", "--set", "cuda", "/usr/local/cuda-12.6"]]


def test_switch_to_the_current_toolkit_changes_nothing(root: Path) -> None:
    before = tree_digest(root / "usr"), tree_digest(root / "etc"), tree_digest(root / "var/lib/dpkg")
    result = cli(root, "cuda", "switch", "12.9")
    assert result.exit_code == 0 and "already points at /usr/local/cuda-12.9" in result.stdout
    assert (tree_digest(root / "usr"), tree_digest(root / "etc"), tree_digest(root / "var/lib/dpkg")) == before
    assert value(root) == ("auto", "/usr/local/cuda-12.9")                      # still automatic
    assert not (root / "var/lib/provision/cuda-switch.json").exists()           # nothing to roll back


def test_refusal_changes_nothing(root: Path) -> None:
    before = tree_digest(root)
    result = cli(root, "cuda", "switch", "12.4")
    assert result.exit_code == 1 and "CUDA 12.4 is not installed" in result.stderr
    assert tree_digest(root) == before


def test_a_failing_update_alternatives_keeps_the_record_and_the_link(root: Path) -> None:
    assert cli(root, "cuda", "switch", "12.6").exit_code == 0
    record = (root / "var/lib/provision/cuda-switch.json").read_text()
    plan = cuda.plan_switch(CudaVersion.parse("11.8"), root, ENV)
    # The group's admin file is damaged after the plan: the real tool refuses to touch the group.
    admin = root / "var/lib/dpkg/alternatives/cuda"
    admin.write_text(admin.read_text().replace("manual\n", "sideways\n", 1))
    with pytest.raises(ProvisionError) as e:
        cuda.apply(plan)
    assert e.value.message.startswith("update-alternatives could not switch /usr/local/cuda: ")
    assert "--display cuda" in (e.value.hint or "")
    assert os.readlink(root / "etc/alternatives/cuda") == "/usr/local/cuda-12.6"
    assert (root / "var/lib/provision/cuda-switch.json").read_text() == record


def test_no_permission_on_the_alternatives_directory_is_refused(root: Path) -> None:
    """A real EACCES: see helpers_cuda.unprivileged for how root is made to face one."""
    before = tree_digest(root)
    (root / "etc/alternatives").chmod(0o555)
    try:
        done = subprocess.run(unprivileged(provision_argv(root, "cuda", "switch", "12.6")),
                              capture_output=True, text=True)
    finally:
        (root / "etc/alternatives").chmod(0o755)
    assert done.returncode == 4, done.stderr
    assert "error: cannot change /usr/local/cuda: /etc/alternatives is not writable by this user" in done.stderr
    assert tree_digest(root) == before


def test_a_plain_link_through_etc_alternatives_becomes_direct_with_a_note(tmp_path: Path) -> None:
    """Without the admin directory's entry update-alternatives does not manage the link: it is a plain
    link that happens to pass through /etc/alternatives, and is switched as before."""
    root = tmp_path / "root"
    make_toolkit(root, "12.4")
    make_toolkit(root, "12.6")
    link_cuda(root, "/usr/local/cuda-12.4", "etc/alternatives/cuda")
    link_cuda(root, "/etc/alternatives/cuda")
    assert cuda.read_link(root, ENV).alternative is None
    dry = cli(root, "cuda", "switch", "12.6", "--dry-run")
    assert ("note: the link goes through /etc/alternatives, but update-alternatives does not manage it; "
            "it becomes a direct link") in dry.stdout
    assert "update-alternatives --" not in dry.stdout
    assert cli(root, "cuda", "switch", "12.6").exit_code == 0
    assert os.readlink(root / "usr/local/cuda") == "cuda-12.6"
    assert not (root / "var/lib/dpkg").exists()


def test_without_the_tool_on_path_the_link_becomes_direct_with_a_note(root: Path, tmp_path: Path) -> None:
    bare = {"PATH": str(tmp_path / "no-tools")}          # a PATH where update-alternatives really is not
    plan = cuda.plan_switch(CudaVersion.parse("12.6"), root, bare)
    assert plan.via is None and plan.note == ("update-alternatives manages the link, but update-alternatives is "
                                              "not on PATH; it becomes a direct link")
    assert "note: update-alternatives manages the link" in plan.describe()
    cuda.apply(plan)
    assert os.readlink(root / "usr/local/cuda") == "cuda-12.6"
    assert value(root) == ("auto", "/usr/local/cuda-12.9")    # the tool's own link was not touched


def test_concurrent_switches_through_update_alternatives_leave_one_valid_link(root: Path) -> None:
    """Parallel switches serialise on provision's lock, and update-alternatives renames its new link
    over the old one: a watcher never sees /usr/local/cuda lead anywhere but to a toolkit."""
    allowed = {"/usr/local/cuda-12.6", "/usr/local/cuda-12.9"}
    bad: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            final = cuda.resolve_under(root, "/usr/local/cuda")
            if final not in allowed:
                bad.append(str(final))

    watcher = threading.Thread(target=watch)
    watcher.start()
    procs = [subprocess.Popen(provision_argv(root, "cuda", "switch", ("12.6", "12.9")[i % 2]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    stop.set()
    watcher.join()
    assert all(code == 0 for code, _, _ in results), results
    assert not bad, bad[:5]
    status, final = value(root)
    assert final in allowed and cuda.read_link(root, ENV).target_system == final
    assert sorted(p.name for p in (root / "var/lib/provision").iterdir()) == ["cuda-switch.json", "cuda-switch.lock"]


def test_real_toolkits_switch_through_update_alternatives(real_root: Path) -> None:
    """Real nvccs from `provision cuda install`, registered as the packages would register them."""
    register(real_root, "13.0")
    register(real_root, "13.1")
    for args, expected in ((["switch", "13.0"], "13.0"), (["rollback"], "13.1"), (["switch", "cu130"], "13.0")):
        result = cli(real_root, "cuda", *args)
        assert result.exit_code == 0, result.output
        assert f"its nvcc reports CUDA {expected}." in result.stdout
        # The kernel would follow the absolute /etc/alternatives/cuda out of the root: follow it under root.
        final = cuda.resolve_under(real_root, "/usr/local/cuda/bin/nvcc")
        assert final == f"/usr/local/cuda-{expected}/bin/nvcc"
        assert cuda.nvcc_version(real_root / final.lstrip("/"), ENV)[0].short == expected
        assert value(real_root)[1] == f"/usr/local/cuda-{expected}"
