"""provisioner.cuda and `provision cuda list/current/switch/rollback/shell-init` against built worlds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from provisioner import cuda
from provisioner.errors import ProvisionError
from provisioner.report import Status
from provisioner.versions import CudaVersion
from tests.helpers_cuda import (cli, link_cuda, make_toolkit, provision_argv, tree_digest, unprivileged,
                                write_fake_nvcc)

ENV: dict[str, str] = {"PATH": "/usr/bin:/bin"}


def real_nvcc_release(root: Path) -> str:
    """What the real nvcc behind `<root>/usr/local/cuda` prints (the link is relative, so the kernel
    follows it inside root)."""
    out = subprocess.run([str(root / "usr/local/cuda/bin/nvcc"), "--version"],
                         capture_output=True, text=True, check=True).stdout
    v = cuda.parse_nvcc_version(out)
    assert v is not None, out
    return v.short


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The filesystem root of a test world, apart from tmp_path/home (where the CLI records failures)."""
    path = tmp_path / "root"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- identification

@pytest.mark.parametrize("text, expected", [
    pytest.param("Cuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0.r13.0/compiler.36424714_0",
                 CudaVersion(13, 0, 88), id="13.0"),
    pytest.param("Cuda compilation tools, release 12.5, V12.5.82", CudaVersion(12, 5, 82), id="12.5"),
    pytest.param("Cuda compilation tools, release 11.8, V11.8.89", CudaVersion(11, 8, 89), id="11.8"),
    pytest.param("Build cuda_12.4.r12.4/compiler.1", CudaVersion(12, 4), id="build-line-only"),
    pytest.param("gcc (Debian 12.2.0-14) 12.2.0", None, id="not-nvcc"),
])
def test_parse_nvcc_version(text: str, expected: CudaVersion | None) -> None:
    assert cuda.parse_nvcc_version(text) == expected


@pytest.mark.parametrize("kwargs, version, source", [
    pytest.param({}, "12.6.85", "nvcc", id="nvcc"),
    pytest.param({"nvcc": False}, "12.6", "version.json", id="version.json-sdk-update-dropped"),
    pytest.param({"nvcc": False, "version_json": {"cuda": {"version": "12.6.20241114"},
                                                  "cuda_nvcc": {"version": "12.6.77"}}},
                 "12.6.77", "version.json", id="version.json-nvcc-entry"),
    pytest.param({"nvcc": False, "version_json": None}, "12.6", "cuda.h", id="cuda.h"),
    pytest.param({"nvcc": False, "version_json": "{not json", "cuda_h": True}, "12.6", "cuda.h",
                 id="broken-version.json"),
    pytest.param({"nvcc": False, "version_json": None, "cuda_h": False}, None, None, id="unknown"),
])
def test_version_sources(root: Path, kwargs: dict, version: str | None, source: str | None) -> None:
    make_toolkit(root, "12.6", **kwargs)
    [tk] = cuda.toolkits(root, ENV)
    assert (str(tk.version) if tk.version else None, tk.version_source) == (version, source)
    assert tk.name == "cuda-12.6" and tk.path == root / "usr/local/cuda-12.6"


def test_toolkits_sorted_with_completeness(root: Path) -> None:
    make_toolkit(root, "12.9")
    make_toolkit(root, "11.8", cudart=False)
    make_toolkit(root, "12.4", headers=False, nvcc=False)
    (root / "usr/local/cuda-12.1.run").write_text("an installer, not a toolkit")
    found = cuda.toolkits(root, ENV)
    assert [(t.name, str(t.version), t.complete) for t in found] == [
        ("cuda-11.8", "11.8.89", False), ("cuda-12.4", "12.4", False), ("cuda-12.9", "12.9.86", True)]
    assert found[0].missing == ["libcudart (lib64/)"]
    assert found[1].missing == ["bin/nvcc", "include/cuda_runtime.h"]


def test_real_toolkits_are_identified_by_their_nvcc(real_root: Path) -> None:
    found = {t.name: t for t in cuda.toolkits(real_root, ENV)}
    assert set(found) == {"cuda-13.0", "cuda-13.1"}
    for name, tk in found.items():
        assert tk.complete and tk.version_source == "nvcc"
        assert tk.version is not None and tk.version.patch is not None
        assert name == f"cuda-{tk.version.short}"


# --------------------------------------------------------------------------- the link under a root

def test_absolute_link_target_is_read_inside_root(root: Path) -> None:
    make_toolkit(root, "12.9")
    link_cuda(root, "/usr/local/cuda-12.9")
    state = cuda.read_link(root, ENV)
    assert state.state == "ok" and state.raw_target == "/usr/local/cuda-12.9"
    assert state.target == root / "usr/local/cuda-12.9"
    assert state.toolkit is not None and str(state.toolkit.version) == "12.9.86"


def test_absolute_link_never_reaches_outside_root(root: Path) -> None:
    # This machine may have a real /usr/local/cuda-13.0; inside the root it does not exist.
    make_toolkit(root, "12.9")
    link_cuda(root, "/usr/local/cuda-13.0")
    state = cuda.read_link(root, ENV)
    assert state.state == "dangling" and state.target == root / "usr/local/cuda-13.0"


def test_alternatives_chain_and_dotdot_stay_inside_root(root: Path) -> None:
    make_toolkit(root, "12.4")
    link_cuda(root, "/usr/local/cuda-12.4", "etc/alternatives/cuda")
    link_cuda(root, "/etc/alternatives/cuda")
    state = cuda.read_link(root, ENV)
    assert state.state == "ok" and state.target_system == "/usr/local/cuda-12.4"
    assert "=> /usr/local/cuda-12.4" in state.describe()
    assert cuda.resolve_under(root, "/../../../usr/local/cuda") == "/usr/local/cuda-12.4"


@pytest.mark.parametrize("build, state", [
    pytest.param(lambda r: None, "missing", id="missing"),
    pytest.param(lambda r: link_cuda(r, "cuda-12.1"), "dangling", id="dangling"),
    pytest.param(lambda r: (link_cuda(r, "cuda-a", "usr/local/cuda-b"), link_cuda(r, "cuda-b", "usr/local/cuda-a"),
                            link_cuda(r, "cuda-a")), "dangling", id="loop"),
    pytest.param(lambda r: make_toolkit(r, "12.4", name="cuda"), "directory", id="directory"),
    pytest.param(lambda r: (r / "usr/local/cuda").write_text("x"), "not-a-link-file", id="file"),
])
def test_link_states(root: Path, build, state: str) -> None:
    (root / "usr/local").mkdir(parents=True)
    build(root)
    assert cuda.read_link(root, ENV).state == state


# --------------------------------------------------------------------------- checks

def _ok_world(root: Path) -> None:
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.9")
    link_cuda(root, "/usr/local/cuda-12.6")


@pytest.mark.parametrize("build, status, message, fix", [
    pytest.param(_ok_world, Status.OK, "/usr/local/cuda -> /usr/local/cuda-12.6 (CUDA 12.6.85", None, id="ok"),
    pytest.param(lambda r: (r / "usr/local").mkdir(parents=True), Status.WARN, "no CUDA toolkit",
                 "cuda install 13.0", id="nothing-installed"),
    pytest.param(lambda r: make_toolkit(r, "12.9"), Status.WARN, "does not exist; installed: cuda-12.9",
                 "cuda switch 12.9", id="missing-link"),
    pytest.param(lambda r: (make_toolkit(r, "12.9"), link_cuda(r, "/usr/local/cuda-12.1")), Status.FAIL,
                 "dangling", "cuda switch 12.9", id="dangling"),
    pytest.param(lambda r: make_toolkit(r, "12.4", name="cuda"), Status.FAIL, "real directory",
                 "sudo mv /usr/local/cuda /usr/local/cuda-12.4", id="directory"),
    pytest.param(lambda r: (make_toolkit(r, "12.6", cudart=False), link_cuda(r, "cuda-12.6")), Status.FAIL,
                 "incomplete: missing libcudart", "reinstall", id="incomplete"),
    pytest.param(lambda r: (make_toolkit(r, "12.6", nvcc=False), (r / "usr/local/cuda-12.6/bin/nvcc")
                            .write_text("#!/bin/sh\nexit 3\n"), (r / "usr/local/cuda-12.6/bin/nvcc").chmod(0o755),
                            link_cuda(r, "cuda-12.6")), Status.FAIL, "does not report a version", "reinstall",
                 id="broken-nvcc"),
])
def test_check_link(root: Path, build, status: Status, message: str, fix: str | None) -> None:
    build(root)
    check = cuda.check_link(root, ENV)
    assert check.id == "cuda.link" and check.status is status, check
    assert message in check.message
    assert (check.fix is None) if fix is None else (fix in (check.fix or "")), check.fix


def _wrapper(root: Path, text: str, where: str = "bin/nvcc") -> None:
    path = root / "usr/local" / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.mark.parametrize("extra, env, status, message", [
    pytest.param(None, {"PATH": "/usr/local/cuda/bin:/usr/bin"}, Status.OK,
                 "nvcc on PATH is /usr/local/cuda/bin/nvcc (CUDA 12.6.85), via /usr/local/cuda", id="ok"),
    pytest.param(None, {"PATH": "/usr/local/cuda-12.6/bin:/usr/bin"}, Status.WARN,
                 "PATH names versioned toolkit directories (/usr/local/cuda-12.6/bin)", id="versioned-PATH"),
    pytest.param(None, {"PATH": "/usr/local/cuda/bin", "LD_LIBRARY_PATH": "/usr/local/cuda-12.9/lib64"},
                 Status.WARN, "LD_LIBRARY_PATH names versioned toolkit directories", id="versioned-LD_LIBRARY_PATH"),
    pytest.param(lambda r: _wrapper(r, '#!/bin/sh\nexec /usr/local/cuda-12.9/bin/nvcc "$@"\n'),
                 {"PATH": "/usr/local/bin:/usr/local/cuda/bin"}, Status.WARN,
                 "is a wrapper script that runs /usr/local/cuda-12.9/bin/nvcc directly", id="wrapper"),
    pytest.param(lambda r: _wrapper(r, '#!/bin/sh\nexec /usr/local/cuda-12.6/bin/nvcc "$@"\n'),
                 {"PATH": "/usr/local/bin:/usr/local/cuda/bin"}, Status.WARN,
                 "bypassing /usr/local/cuda", id="wrapper-same-version-still-bypasses"),
    pytest.param(lambda r: _wrapper(r, '#!/bin/sh\nexec /usr/local/cuda/bin/nvcc "$@"\n'),
                 {"PATH": "/usr/local/bin"}, Status.OK, "via /usr/local/cuda", id="wrapper-through-link"),
    pytest.param(lambda r: link_cuda(r, "/usr/local/cuda-12.9/bin/nvcc", "usr/local/bin/nvcc"),
                 {"PATH": "/usr/local/bin"}, Status.WARN, "is a link to /usr/local/cuda-12.9/bin/nvcc",
                 id="versioned-symlink"),
    pytest.param(lambda r: link_cuda(r, "/usr/local/cuda/bin/nvcc", "usr/local/bin/nvcc"),
                 {"PATH": "/usr/local/bin"}, Status.OK, "via /usr/local/cuda", id="symlink-through-link"),
    pytest.param(lambda r: write_fake_nvcc(r / "opt/other/bin/nvcc", "12.4"), {"PATH": "/opt/other/bin"},
                 Status.WARN, "the first nvcc on PATH is /opt/other/bin/nvcc, CUDA 12.4.131, not "
                 "/usr/local/cuda/bin/nvcc (cuda-12.6 (CUDA 12.6.85))", id="another-nvcc"),
    pytest.param(None, {"PATH": "/usr/bin"}, Status.WARN, "no nvcc on PATH", id="none-on-PATH"),
])
def test_check_nvcc_path(root: Path, extra, env: dict[str, str], status: Status, message: str) -> None:
    _ok_world(root)
    if extra:
        extra(root)
    check = cuda.check_nvcc_path(root, env)
    assert check.id == "cuda.nvcc_path" and check.status is status, check
    assert message in check.message
    if status is Status.WARN:
        assert "cuda shell-init --apply" in (check.fix or "")


def test_check_nvcc_path_skips_without_any_toolkit(root: Path) -> None:
    assert cuda.check_nvcc_path(root, {"PATH": "/usr/bin"}).status is Status.SKIP


# --------------------------------------------------------------------------- switch (fake 12.x trees)

def _two(root: Path) -> None:
    make_toolkit(root, "12.6")
    make_toolkit(root, "12.9")
    link_cuda(root, "/usr/local/cuda-12.9")


@pytest.mark.parametrize("spelling", ["12.6", "cu126", "12.6.85"])
def test_switch_accepts_every_spelling(root: Path, spelling: str) -> None:
    _two(root)
    result = cli(root, "cuda", "switch", spelling)
    assert result.exit_code == 0, result.output
    assert os.readlink(root / "usr/local/cuda") == "cuda-12.6"
    assert "its nvcc reports CUDA 12.6.85" in result.stdout
    record = json.loads((root / "var/lib/provision/cuda-switch.json").read_text())
    assert (record["previous"], record["current"]) == ("/usr/local/cuda-12.9", "cuda-12.6")


def test_switch_and_rollback_restore_exact_link_text(root: Path) -> None:
    _two(root)
    assert cli(root, "cuda", "switch", "12.6").exit_code == 0
    result = cli(root, "cuda", "rollback")
    assert result.exit_code == 0, result.output
    assert os.readlink(root / "usr/local/cuda") == "/usr/local/cuda-12.9"
    result = cli(root, "cuda", "rollback")  # a rollback of the rollback goes forward again
    assert result.exit_code == 0 and os.readlink(root / "usr/local/cuda") == "cuda-12.6"


def test_switch_repairs_a_dangling_link(root: Path) -> None:
    make_toolkit(root, "12.6")
    link_cuda(root, "/usr/local/cuda-12.1")
    assert cli(root, "cuda", "current").exit_code == 1
    result = cli(root, "cuda", "switch", "12.6")
    assert result.exit_code == 0, result.output
    assert cuda.read_link(root, ENV).state == "ok"


def test_switch_to_current_changes_nothing(root: Path) -> None:
    _two(root)
    before = tree_digest(root / "usr")
    result = cli(root, "cuda", "switch", "12.9")
    assert result.exit_code == 0 and "already points at /usr/local/cuda-12.9" in result.stdout
    assert tree_digest(root / "usr") == before
    assert not (root / "var/lib/provision/cuda-switch.json").exists()  # nothing to roll back


def test_dry_run_prints_plan_and_changes_nothing(root: Path) -> None:
    _two(root)
    before = tree_digest(root)
    result = cli(root, "cuda", "switch", "cu126", "--dry-run")
    assert result.exit_code == 0
    assert "Switch /usr/local/cuda to cuda-12.6 (CUDA 12.6.85)" in result.stdout
    assert "rename it over /usr/local/cuda (atomic)" in result.stdout
    assert tree_digest(root) == before


def _os_release(root: Path, distro: str, version: str) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(f'ID={distro}\nVERSION_ID="{version}"\n')


def _hint(result) -> str:
    return next((line for line in result.stderr.splitlines() if line.startswith("hint: ")), "")


@pytest.mark.parametrize("build, args, code, error, hint", [
    pytest.param(lambda r: (_two(r), _os_release(r, "ubuntu", "24.04")), ["switch", "12.4"], 1,
                 "CUDA 12.4 is not installed under /usr/local (installed: 12.6.85 (cuda-12.6), 12.9.86 (cuda-12.9))",
                 "`sudo apt-get update && sudo apt-get install -y cuda-toolkit-12-4`", id="not-installed-12x"),
    pytest.param(_two, ["switch", "13.2"], 1, "CUDA 13.2 is not installed",
                 "cuda install 13.2", id="not-installed-13x"),
    pytest.param(_two, ["switch", "12.6.99"], 1, "CUDA 12.6.99 is not installed", "", id="other-patch"),
    pytest.param(lambda r: (make_toolkit(r, "12.4", name="cuda"), make_toolkit(r, "12.6")), ["switch", "12.6"], 1,
                 "/usr/local/cuda is a real directory holding CUDA 12.4.131, not a link; nothing was changed",
                 "provision never deletes it. Move it aside so it becomes a versioned toolkit (its toolkit reports "
                 "CUDA 12.4.131, by nvcc): `sudo mv /usr/local/cuda /usr/local/cuda-12.4`", id="real-directory"),
    pytest.param(lambda r: (make_toolkit(r, "12.4", name="cuda"), make_toolkit(r, "12.4")), ["switch", "12.4"], 1,
                 "is a real directory", "`sudo mv /usr/local/cuda /usr/local/cuda-12.4.orig`",
                 id="real-directory-name-taken"),
    pytest.param(lambda r: ((r / "usr/local/cuda").mkdir(parents=True), make_toolkit(r, "12.6")),
                 ["switch", "12.6"], 1, "is a real directory, not a link",
                 "`sudo mv /usr/local/cuda /usr/local/cuda-X.Y`", id="real-directory-unknown"),
    pytest.param(lambda r: (make_toolkit(r, "12.4", name="cuda"), make_toolkit(r, "12.6")), ["rollback"], 1,
                 "is a real directory", "sudo mv", id="rollback-real-directory"),
    pytest.param(lambda r: (make_toolkit(r, "12.6", nvcc=False), make_toolkit(r, "12.9")), ["switch", "12.6"], 1,
                 "/usr/local/cuda-12.6 is incomplete: missing bin/nvcc; nothing was changed",
                 "complete toolkits: 12.9.86", id="incomplete-nvcc"),
    pytest.param(lambda r: make_toolkit(r, "12.6", cudart=False), ["switch", "12.6"], 1,
                 "missing libcudart (lib64/)", "reinstall CUDA 12.6", id="incomplete-cudart"),
    pytest.param(lambda r: make_toolkit(r, "12.6", headers=False), ["switch", "12.6"], 1,
                 "missing include/cuda_runtime.h", "reinstall", id="incomplete-headers"),
    pytest.param(lambda r: (make_toolkit(r, "12.6"), _wrapper(r, "#!/bin/sh\necho hello\n", "cuda-12.6/bin/nvcc")),
                 ["switch", "12.6"], 1, "/usr/local/cuda-12.6/bin/nvcc does not report a version",
                 "reinstall CUDA 12.6", id="nvcc-prints-no-version"),
    pytest.param(_two, ["rollback"], 1, "no previous CUDA switch is recorded", "cuda switch X.Y",
                 id="rollback-no-record"),
    pytest.param(lambda r: (make_toolkit(r, "12.6"), (r / "var/lib/provision").mkdir(parents=True),
                            (r / "var/lib/provision/cuda-switch.json").write_text(
                                '{"previous": "/usr/local/cuda-12.1", "current": "cuda-12.6"}'),
                            link_cuda(r, "cuda-12.6")),
                 ["rollback"], 1, "the previous target /usr/local/cuda-12.1 no longer exists", "cuda switch X.Y",
                 id="rollback-target-gone"),
    pytest.param(lambda r: (make_toolkit(r, "12.6"), (r / "var/lib/provision").mkdir(parents=True),
                            (r / "var/lib/provision/cuda-switch.json").write_text('{"previous": null}'),
                            link_cuda(r, "cuda-12.6")),
                 ["rollback"], 1, "did not exist before the last switch", "cuda switch X.Y",
                 id="rollback-to-nothing"),
])
def test_refusals_change_nothing(root: Path, build, args: list[str], code: int, error: str,
                                 hint: str) -> None:
    (root / "usr/local").mkdir(parents=True)
    build(root)
    before = tree_digest(root)
    result = cli(root, "cuda", *args)
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and error in result.stderr.splitlines()[0], result.stderr
    assert hint in _hint(result), result.stderr
    assert tree_digest(root) == before
    assert result.stdout == ""


def test_bad_version_argument_is_a_usage_error(root: Path) -> None:
    result = cli(root, "cuda", "switch", "twelve")
    assert result.exit_code == 2
    assert result.stderr == "error: 'twelve' is not a CUDA version\nhint: write it as 12.6, 12.6.85 or cu126\n"


def test_real_directory_is_left_byte_for_byte(root: Path) -> None:
    tk = make_toolkit(root, "12.4", name="cuda")
    (tk / "samples").mkdir()
    (tk / "samples" / "notes.txt").write_bytes(os.urandom(4096))
    make_toolkit(root, "12.6")
    before = tree_digest(tk), tree_digest(root)
    for args in (["switch", "12.6"], ["switch", "12.6", "--dry-run"], ["rollback"]):
        result = cli(root, "cuda", *args)
        assert result.exit_code == 1 and "real directory" in result.stderr
    assert (tree_digest(tk), tree_digest(root)) == before
    assert not list((root / "usr/local").glob("cuda.new-*"))


def test_no_permission_is_refused_with_sudo_hint(root: Path) -> None:
    """A real EACCES: see helpers_cuda.unprivileged for how root is made to face one."""
    _two(root)
    local = root / "usr/local"
    before = tree_digest(root)
    local.chmod(0o555)
    try:
        done = subprocess.run(unprivileged(provision_argv(root, "cuda", "switch", "12.6")),
                              capture_output=True, text=True)
    finally:
        local.chmod(0o755)
    assert done.returncode == 4, done.stderr
    assert "error: cannot change /usr/local/cuda: /usr/local is not writable by this user" in done.stderr
    assert f"hint: re-run with sudo: `sudo provision --root {root} cuda switch 12.6`" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert tree_digest(root) == before


def test_unwritable_state_dir_is_refused(root: Path) -> None:
    _two(root)
    code = ("import sys; from pathlib import Path; from provisioner import cuda, versions\n"
            "from provisioner.errors import PermissionDenied\n"
            "try:\n    cuda.plan_switch(versions.CudaVersion.parse('12.6'), Path(sys.argv[1]), {})\n"
            "except PermissionDenied as e:\n    print('denied', e.exit_code)\n")
    (root / "var/lib/provision").mkdir(parents=True)
    (root / "var/lib/provision").chmod(0o555)  # the lock and record cannot be written
    try:
        done = subprocess.run(unprivileged([sys.executable, "-c", code, str(root)]),
                              capture_output=True, text=True, check=True)
    finally:
        (root / "var/lib/provision").chmod(0o755)
    assert done.stdout.strip() == "denied 4"


def test_verify_fails_loudly_when_nvcc_reports_another_version(root: Path) -> None:
    _two(root)
    plan = cuda.plan_switch(CudaVersion.parse("12.6"), root, ENV)
    write_fake_nvcc(root / "usr/local/cuda-12.6/bin/nvcc", "12.5")  # replaced after the plan
    with pytest.raises(ProvisionError) as e:
        cuda.apply(plan)
    assert "its bin/nvcc --version reports CUDA 12.5.82, not 12.6.85" in e.value.message
    assert "cuda rollback" in (e.value.hint or "")


def test_failed_rename_leaves_no_temp_link_and_keeps_record(root: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _two(root)
    assert cli(root, "cuda", "switch", "12.6").exit_code == 0
    record = (root / "var/lib/provision/cuda-switch.json").read_text()
    plan = cuda.plan_switch(CudaVersion.parse("12.9"), root, ENV)

    # A rename that fails after our temp link exists cannot be produced on a real filesystem without a
    # race, so the rename over the link is made to fail here (ENOSPC, as a full disk would); the
    # record's own rename still works.
    real_replace = os.replace
    renamed: list[str] = []

    def full_disk(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "cuda":
            renamed.append(os.readlink(src))
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ProvisionError, match="No space left on device .*; it was left as it was"):
        cuda.apply(plan)
    monkeypatch.undo()
    assert renamed == ["cuda-12.9"]  # the new link existed and its rename was what failed
    assert os.readlink(root / "usr/local/cuda") == "cuda-12.6"
    assert sorted(p.name for p in (root / "usr/local").iterdir()) == ["cuda", "cuda-12.6", "cuda-12.9"]
    assert (root / "var/lib/provision/cuda-switch.json").read_text() == record


# --------------------------------------------------------------------------- real CUDA 13.x toolkits

def test_real_switch_both_ways_and_rollback(real_root: Path) -> None:
    """Real nvccs from `provision cuda install`; the real `nvcc --version` is checked after each step."""
    steps = [(["switch", "13.0"], "13.0"), (["switch", "cu131"], "13.1"), (["rollback"], "13.0"),
             (["rollback"], "13.1"), (["switch", "13.0"], "13.0")]
    for args, expected in steps:
        result = cli(real_root, "cuda", *args)
        assert result.exit_code == 0, result.output
        assert f"its nvcc reports CUDA {expected}." in result.stdout
        assert real_nvcc_release(real_root) == expected
    assert not list((real_root / "usr/local").glob("cuda.new-*"))


def test_real_linked_nvcc_compiles(real_root: Path, tmp_path: Path) -> None:
    assert cli(real_root, "cuda", "switch", "13.1").exit_code == 0
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k(float *x) { x[threadIdx.x] *= 2.0f; }\n")
    subprocess.run([str(real_root / "usr/local/cuda/bin/nvcc"), "-c", str(src), "-o", str(tmp_path / "k.o")],
                   check=True, capture_output=True, timeout=300)
    assert (tmp_path / "k.o").stat().st_size > 0


def test_concurrent_switches_leave_one_valid_link(real_root: Path) -> None:
    """Parallel `provision cuda switch` processes serialise on the lock; a watcher sees the link at every
    instant and it is always a link to one of the two toolkits (never missing, never half-made)."""
    assert cli(real_root, "cuda", "switch", "13.0").exit_code == 0
    link = real_root / "usr/local/cuda"
    allowed = {"cuda-13.0", "cuda-13.1"}
    seen: set[str] = set()
    bad: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                text = os.readlink(link)
            except OSError as e:  # missing or not a link: the switch was not atomic
                bad.append(repr(e))
                continue
            seen.add(text)
            if text not in allowed:
                bad.append(text)

    watcher = threading.Thread(target=watch)
    watcher.start()
    procs = [subprocess.Popen(provision_argv(real_root, "cuda", "switch", ("13.1", "13.0")[i % 2]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(10)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    stop.set()
    watcher.join()
    for p in procs:
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    assert all(code == 0 for code, _, _ in results), results
    assert not bad, bad[:5]
    assert seen <= allowed
    final = os.readlink(link)
    assert final in allowed
    assert real_nvcc_release(real_root) == final.removeprefix("cuda-")
    assert sorted(p.name for p in (real_root / "usr/local").iterdir()) == ["cuda", "cuda-13.0", "cuda-13.1"]
    assert sorted(p.name for p in (real_root / "var/lib/provision").iterdir()) == [
        "cuda-switch.json", "cuda-switch.lock"]
    record = json.loads((real_root / "var/lib/provision/cuda-switch.json").read_text())
    assert record["current"] == final and record["previous"] in allowed


# --------------------------------------------------------------------------- CLI reports

def test_list_marks_the_linked_toolkit(root: Path) -> None:
    _two(root)
    make_toolkit(root, "11.8", headers=False)
    result = cli(root, "cuda", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[2].split() == ["cuda-11.8", "11.8.89", "nvcc", "no:", "missing", "include/cuda_runtime.h"]
    assert lines[4].split() == ["*", "cuda-12.9", "12.9.86", "nvcc", "yes"]
    assert lines[-1].startswith("/usr/local/cuda -> /usr/local/cuda-12.9 (ok)")


def test_list_json_document(root: Path) -> None:
    make_toolkit(root, "12.6", version_json=None)
    link_cuda(root, "cuda-12.6")
    result = cli(root, "cuda", "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "version": 1,
        "link": {"path": "/usr/local/cuda", "state": "ok", "raw_target": "cuda-12.6",
                 "target": "/usr/local/cuda-12.6", "toolkit": {
                     "name": "cuda-12.6", "path": "/usr/local/cuda-12.6", "version": "12.6.85",
                     "version_source": "nvcc", "complete": True, "has_nvcc": True, "has_cudart": True,
                     "has_headers": True, "missing": [], "nvcc_error": None,
                         "problem": None},
                 "managed_by": None, "alternative": None},
        "toolkits": [{"name": "cuda-12.6", "path": "/usr/local/cuda-12.6", "version": "12.6.85",
                      "version_source": "nvcc", "complete": True, "has_nvcc": True, "has_cudart": True,
                      "has_headers": True, "missing": [], "nvcc_error": None,
                         "problem": None}],
    }


def test_current_reports_link_and_path(root: Path) -> None:
    _two(root)
    result = cli(root, "cuda", "current", env={"PATH": "/usr/local/cuda-12.9/bin:/usr/bin"})
    assert result.exit_code == 0  # a PATH warning is not a failure
    assert "link:    /usr/local/cuda -> /usr/local/cuda-12.9 (ok)" in result.stdout
    assert "toolkit: cuda-12.9 (CUDA 12.9.86), reported by its nvcc" in result.stdout
    assert "nvcc:    /usr/local/cuda-12.9/bin/nvcc" in result.stdout
    assert "fix: provision --root" in result.stdout and "cuda shell-init --apply" in result.stdout


def test_current_json_and_exit_code_on_failure(root: Path) -> None:
    make_toolkit(root, "12.4", name="cuda")
    result = cli(root, "cuda", "current", "--json", env={"PATH": "/usr/bin"})
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["link"]["state"] == "directory"
    assert [(c["id"], c["status"]) for c in doc["checks"]] == [("cuda.link", "fail"),
                                                               ("cuda.nvcc_path", "warn")]
    assert "Traceback" not in result.output


def test_switch_notes_a_bypassing_nvcc_on_stderr(root: Path) -> None:
    _two(root)
    _wrapper(root, '#!/bin/sh\nexec /usr/local/cuda-12.9/bin/nvcc "$@"\n')
    result = cli(root, "cuda", "switch", "12.6", env={"PATH": "/usr/local/bin:/usr/bin"})
    assert result.exit_code == 0
    assert "note: the first nvcc on PATH, /usr/local/bin/nvcc, is a wrapper script" in result.stderr


def test_switch_json(root: Path) -> None:
    _two(root)
    result = cli(root, "cuda", "switch", "12.6", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["link"]["raw_target"] == "cuda-12.6" and doc["current"]["raw_target"] == "/usr/local/cuda-12.9"
    assert doc["dry_run"] is False and doc["version"] == 1


# --------------------------------------------------------------------------- shell-init

@pytest.mark.parametrize("shell, expect", [
    pytest.param("bash", 'export PATH="/usr/local/cuda/bin${PATH:+:${PATH}}"', id="bash"),
    pytest.param("zsh", 'export LD_LIBRARY_PATH="/usr/local/cuda/lib64', id="zsh"),
    pytest.param("fish", "set -gx PATH /usr/local/cuda/bin $PATH", id="fish"),
])
def test_shell_init_prints_the_block(root: Path, shell: str, expect: str) -> None:
    result = cli(root, "cuda", "shell-init", "--shell", shell)
    assert result.exit_code == 0
    assert result.stdout.startswith(cuda.BEGIN) and result.stdout.rstrip().endswith(cuda.END)
    assert expect in result.stdout and "cuda-1" not in result.stdout


def test_shell_init_block_really_works_in_bash(root: Path) -> None:
    rc = root / "rc"
    rc.write_text(cuda.shell_init("bash"))
    script = f'PATH=/usr/local/bin:/usr/bin:/bin; unset LD_LIBRARY_PATH; . "{rc}"; . "{rc}"; ' \
             'printf "%s\\n%s\\n" "$PATH" "$LD_LIBRARY_PATH"'
    out = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["/usr/local/cuda/bin:/usr/local/bin:/usr/bin:/bin", "/usr/local/cuda/lib64"]


BASHRC = """\
# my settings
alias ll='ls -l'
if [ -d /usr/local/cuda-12.6 ]; then
    export PATH=/usr/local/cuda-12.6/bin:$PATH
fi
export LD_LIBRARY_PATH=/usr/local/cuda-12.6/lib64${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}
export CUDA_HOME=/usr/local/cuda-12.6
# export PATH=/usr/local/cuda-11.8/bin:$PATH
echo /usr/local/cuda-12.6 is where I keep notes"""


def test_apply_rewrites_rc_idempotently_with_backup(root: Path, isolated_home: Path) -> None:
    rc = isolated_home / ".bashrc"
    rc.write_text(BASHRC)
    rc.chmod(0o600)
    first = cli(root, "cuda", "shell-init", "--shell", "bash", "--apply")
    assert first.exit_code == 0, first.output
    assert f"wrote {rc}" in first.stderr and "backup:" in first.stderr
    [backup] = isolated_home.glob(".bashrc.provision-backup-*")
    assert backup.read_text() == BASHRC
    text = rc.read_text()
    assert oct(rc.stat().st_mode & 0o777) == "0o600"
    assert text.count(cuda.BEGIN) == 1 and text.endswith(cuda.END + "\n")
    assert "    export PATH=/usr/local/cuda/bin:$PATH  # provision cuda shell-init, was: " \
           "export PATH=/usr/local/cuda-12.6/bin:$PATH" in text
    assert "export CUDA_HOME=/usr/local/cuda  # provision" in text
    assert "# export PATH=/usr/local/cuda-11.8/bin:$PATH\n" in text   # comments are left alone
    assert "echo /usr/local/cuda-12.6 is where I keep notes\n" in text  # not a PATH-like line
    assert "if [ -d /usr/local/cuda-12.6 ]; then" in text
    subprocess.run(["bash", "-n", str(rc)], check=True)  # still valid shell

    second = cli(root, "cuda", "shell-init", "--shell", "bash", "--apply")
    assert second.exit_code == 0
    assert "already up to date; nothing to change" in second.stdout
    assert rc.read_text() == text
    assert len(list(isolated_home.glob(".bashrc.provision-backup-*"))) == 1

    env = f'HOME={isolated_home} PATH=/usr/bin:/bin bash --noprofile --norc -c \'. "$HOME/.bashrc"; echo "$PATH"\''
    out = subprocess.run(["sh", "-c", env], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1].startswith("/usr/local/cuda/bin:")


def test_apply_replaces_an_old_block_in_place(isolated_home: Path, root: Path) -> None:
    rc = isolated_home / ".config/fish/config.fish"
    rc.parent.mkdir(parents=True)
    rc.write_text(f"set -x EDITOR vim\n{cuda.BEGIN}\nset -gx PATH /usr/local/cuda-12.1/bin $PATH\n{cuda.END}\n"
                  "set -x PAGER less\n")
    result = cli(root, "cuda", "shell-init", "--shell", "fish", "--apply")
    assert result.exit_code == 0
    text = rc.read_text()
    assert text.startswith("set -x EDITOR vim\n" + cuda.BEGIN) and text.endswith("set -x PAGER less\n")
    assert "cuda-12.1" not in text and text.count(cuda.BEGIN) == 1


def test_apply_creates_missing_rc_and_follows_dotfile_link(isolated_home: Path, root: Path) -> None:
    dotfiles = isolated_home / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "zshrc").write_text("export EDITOR=vim\n")
    (isolated_home / ".zshrc").symlink_to(dotfiles / "zshrc")
    result = cli(root, "cuda", "shell-init", "--apply", env={"SHELL": "/usr/bin/zsh"})
    assert result.exit_code == 0, result.output
    assert (isolated_home / ".zshrc").is_symlink()
    assert cuda.BEGIN in (dotfiles / "zshrc").read_text()
    fresh = cli(root, "cuda", "shell-init", "--apply", "--shell", "bash")
    assert fresh.exit_code == 0 and "backup" not in fresh.stderr
    assert (isolated_home / ".bashrc").read_text() == cuda.shell_init("bash")


def test_apply_dry_run_shows_diff_only(isolated_home: Path, root: Path) -> None:
    rc = isolated_home / ".bashrc"
    rc.write_text(BASHRC)
    result = cli(root, "cuda", "shell-init", "--apply", "--dry-run", "--shell", "bash")
    assert result.exit_code == 0
    assert "+# >>> provision cuda >>>" in result.stdout
    assert rc.read_text() == BASHRC and not list(isolated_home.glob(".bashrc.provision-backup-*"))


def test_unterminated_block_is_refused(isolated_home: Path, root: Path) -> None:
    (isolated_home / ".bashrc").write_text(f"{cuda.BEGIN}\nexport X=1\n")
    result = cli(root, "cuda", "shell-init", "--apply", "--shell", "bash")
    assert result.exit_code == 1 and "without `# <<< provision cuda <<<`" in result.stderr
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- audit additions

def test_verbose_prints_each_external_command(root: Path) -> None:
    make_toolkit(root, "12.6")
    quiet = cli(root, "cuda", "list")
    loud = cli(root, "-v", "cuda", "list")
    assert quiet.exit_code == loud.exit_code == 0
    nvcc = root / "usr/local/cuda-12.6/bin/nvcc"
    assert f"+ {nvcc} --version" in loud.stderr.splitlines()
    assert "+ " not in quiet.stderr
    assert loud.stdout == quiet.stdout  # traces go to stderr only


def test_directory_link_fix_carries_the_root(root: Path) -> None:
    make_toolkit(root, "12.4", name="cuda")
    check = cuda.check_link(root, ENV)
    assert check.status is Status.FAIL
    assert check.fix is not None and check.fix.endswith(f"then `provision --root {root} cuda switch X.Y`")


def test_shell_init_json(root: Path, isolated_home: Path) -> None:
    printed = cli(root, "--json", "cuda", "shell-init", "--shell", "zsh")
    assert printed.exit_code == 0
    assert json.loads(printed.stdout) == {"version": 1, "shell": "zsh", "rc_file": str(isolated_home / ".zshrc"),
                                          "text": cuda.shell_init("zsh")}
    rc = isolated_home / ".bashrc"
    rc.write_text(BASHRC)
    dry = cli(root, "cuda", "shell-init", "--shell", "bash", "--apply", "--dry-run", "--json")
    assert dry.exit_code == 0 and rc.read_text() == BASHRC
    doc = json.loads(dry.stdout)
    assert (doc["dry_run"], doc["changed"], doc["backup"]) == (True, True, None)
    assert "export CUDA_HOME=/usr/local/cuda-12.6" in doc["rewritten"]
    applied = cli(root, "cuda", "shell-init", "--shell", "bash", "--apply", "--json")
    assert applied.exit_code == 0
    doc = json.loads(applied.stdout)
    assert doc["changed"] is True and doc["backup"] is not None and Path(doc["backup"]).read_text() == BASHRC
    assert cuda.BEGIN in rc.read_text()


def test_unreadable_rc_file_is_an_error_not_a_traceback(root: Path, isolated_home: Path) -> None:
    (isolated_home / ".bashrc").mkdir()  # a directory where the rc file should be: reading fails for real
    result = cli(root, "cuda", "shell-init", "--apply", "--shell", "bash")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot read {isolated_home / '.bashrc'}: Is a directory\nhint: ")
    assert "Traceback" not in result.output


def test_unwritable_rc_file_is_refused_and_left_alone(root: Path, tmp_path: Path) -> None:
    """A real EACCES (see helpers_cuda.unprivileged): HOME is read-only, so neither the backup nor the
    new file can be written."""
    home = tmp_path / "ro-home"
    home.mkdir()
    (home / ".bashrc").write_text(BASHRC)
    home.chmod(0o555)
    env = dict(os.environ, HOME=str(home), XDG_STATE_HOME=str(tmp_path / "state"))
    try:
        done = subprocess.run(unprivileged(provision_argv(root, "cuda", "shell-init", "--apply", "--shell",
                                                          "bash")), capture_output=True, text=True, env=env)
    finally:
        home.chmod(0o755)
    assert done.returncode == 4, done.stderr     # a permission error exits 4, as the README says
    assert f"error: cannot write {home / '.bashrc'}: Permission denied" in done.stderr
    assert "hint: " in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in home.iterdir()) == [".bashrc"]
    assert (home / ".bashrc").read_text() == BASHRC
