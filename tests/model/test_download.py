"""`provision model download` against a local hub (tests/hubserver.py): selection, resume, errors, mirrors."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner import units
from provisioner.model import download, hub
from provisioner.cli import main
from provisioner.model.download import Endpoint, RepoFile
from provisioner.model.hub import partial_path
from provisioner.errors import ProvisionError, UsageError
from tests.hubserver import HubServer, Repo, free_port

REPO = "acme/tiny-qwen2"
CUT = 12 << 20     # where the hub drops or stalls a transfer; every byte before it reaches the disk
LOAD_SET = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
            "merges.txt", "chat_template.jinja", "model.safetensors"}


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite sets HF_HUB_OFFLINE=1; these tests talk to 127.0.0.1 only."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def cache_dir(home: Path) -> Path:
    return home / ".cache" / "huggingface" / "hub"


def snapshot(home: Path, repo: Repo) -> Path:
    return cache_dir(home) / "models--acme--tiny-qwen2" / "snapshots" / repo.commit


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resolve_gets(hub: HubServer) -> list[tuple[str, str | None]]:
    """(file, Range) of every GET that transferred file bytes."""
    return [(path.rsplit("/", 1)[-1], rng) for method, path, rng in hub.requests
            if method == "GET" and ("/resolve/" in path or path.startswith("/cdn/"))]


# ---------------------------------------------------------------------------- file selection

def files(*names: str) -> list[RepoFile]:
    return [RepoFile(n, 10, "0" * 64 if n.endswith((".safetensors", ".bin", ".gguf")) else None) for n in names]


COMMON = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
          ".gitattributes", "LICENSE")


@pytest.mark.parametrize(("listed", "expected"), [
    pytest.param((*COMMON, "model.safetensors", "pytorch_model.bin", "model-q4_k_m.gguf", "onnx/model.onnx",
                  "flax_model.msgpack", "tf_model.h5"),
                 {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "model.safetensors"}, id="safetensors-over-duplicates"),
    pytest.param((*COMMON, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                  "model.safetensors.index.json", "consolidated.safetensors", "params.json"),
                 {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                  "model.safetensors.index.json"}, id="sharded-no-consolidated"),
    pytest.param(("config.json", "tokenizer.model", "pytorch_model-00001-of-00002.bin",
                  "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json", "training_args.bin"),
                 {"config.json", "tokenizer.model", "pytorch_model-00001-of-00002.bin",
                  "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"}, id="bin-only-when-no-safetensors"),
    pytest.param(("config.json", "consolidated.safetensors"), {"config.json", "consolidated.safetensors"},
                 id="consolidated-when-alone"),
    pytest.param(("config.json", "model.safetensors", "original/consolidated.00.pth", "qwen.tiktoken",
                  "modeling_qwen.py", "chat_template.jinja", "merges.txt", "vocab.json"),
                 {"config.json", "model.safetensors", "qwen.tiktoken", "modeling_qwen.py", "chat_template.jinja",
                  "merges.txt", "vocab.json"}, id="tokenizer-files-and-code-root-only"),
])
def test_select_files_keeps_what_a_transformers_load_needs(listed: tuple[str, ...], expected: set[str]) -> None:
    keep, skip = download.select_files(files(*listed))
    assert {f.path for f in keep} == expected
    assert {f.path for f in skip} == set(listed) - expected
    keep_all, skip_all = download.select_files(files(*listed), include_all=True)
    assert len(keep_all) == len(listed) and skip_all == []


# ---------------------------------------------------------------------------- endpoints

@pytest.mark.parametrize(("endpoint", "mirror", "env", "url", "source"), [
    pytest.param(None, None, {}, "https://huggingface.co", "default", id="default"),
    pytest.param(None, None, {"HF_ENDPOINT": "https://hf-mirror.com/"}, "https://hf-mirror.com", "HF_ENDPOINT",
                 id="hf-endpoint-env"),
    pytest.param(None, "hf-mirror", {"HF_ENDPOINT": "http://x.test"}, "https://hf-mirror.com", "--mirror hf-mirror",
                 id="mirror-beats-env"),
    pytest.param("http://10.0.0.5:8080", None, {"HF_ENDPOINT": "http://x.test"}, "http://10.0.0.5:8080",
                 "--endpoint", id="endpoint-beats-env"),
])
def test_resolve_endpoint(endpoint: str | None, mirror: str | None, env: dict[str, str], url: str,
                          source: str) -> None:
    assert download.resolve_endpoint(endpoint=endpoint, mirror=mirror, environ=env) == Endpoint(url, source)


@pytest.mark.parametrize(("kw", "message", "hint"), [
    pytest.param({"endpoint": "http://a.test", "mirror": "hf-mirror"}, "--endpoint and --mirror both",
                 "only one", id="both"),
    pytest.param({"mirror": "hf-mirorr"}, "unknown mirror 'hf-mirorr' (did you mean 'hf-mirror'?)",
                 "hf-mirror (https://hf-mirror.com)", id="typo"),
    pytest.param({"endpoint": "hf-mirror.com"}, "--endpoint must be an http(s) URL", "https://hf-mirror.com",
                 id="no-scheme"),
])
def test_resolve_endpoint_errors(kw: dict[str, str], message: str, hint: str) -> None:
    with pytest.raises(UsageError) as e:
        download.resolve_endpoint(environ={}, **kw)
    assert message in e.value.message and hint in (e.value.hint or "")


@pytest.mark.parametrize(("endpoint", "location", "verdict"), [
    pytest.param("https://hf-mirror.com", "https://hf-mirror.com/acme/x/resolve/main/a", "ok", id="same-host"),
    pytest.param("https://hf-mirror.com", "https://cdn-lfs.hf-mirror.com/repos/ab/cd", "ok", id="mirror-cdn"),
    pytest.param("https://huggingface.co", "https://cas-bridge.xethub.hf.co/xet-bridge/ab", "ok", id="hub-cdn"),
    pytest.param("https://hf-mirror.com", "https://cas-bridge.xethub.hf.co/xet-bridge/ab", "hub", id="mirror-to-hub"),
    pytest.param("https://hf-mirror.com", "https://cdn-lfs.huggingface.co/repos/ab", "hub", id="mirror-to-hub-lfs"),
    pytest.param("http://127.0.0.1:8000", "http://localhost:8000/cdn/x", "foreign", id="other-host"),
    pytest.param("http://127.0.0.1:8000", "http://127.0.0.2:8000/cdn/x", "foreign", id="ip-is-exact"),
])
def test_data_host_verdict(endpoint: str, location: str, verdict: str) -> None:
    assert download.data_host_verdict(Endpoint(endpoint, "--endpoint"), location) == verdict


def test_worker_env_pins_endpoint_and_turns_xet_off_in_huggingface_hub() -> None:
    """The child's huggingface_hub really reads the endpoint and the xet switch (import-time constants)."""
    env = download.worker_env(dict(os.environ), Endpoint("http://127.0.0.1:9", "--endpoint"))
    code = ("import huggingface_hub.constants as c\n"
            "from huggingface_hub.utils._runtime import is_xet_available\n"
            "print(c.ENDPOINT, c.HF_HUB_DISABLE_XET, is_xet_available())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["http://127.0.0.1:9", "True", "False"]


def test_hf_cache_dir_follows_huggingface_hub_precedence(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert download.hf_cache_dir(home) == tmp_path / ".cache/huggingface/hub"
    assert download.hf_cache_dir({**home, "XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")
    assert download.hf_cache_dir({**home, "HF_HOME": "/h"}) == Path("/h/hub")
    assert download.hf_cache_dir({**home, "HF_HOME": "/h", "HF_HUB_CACHE": "/c"}) == Path("/c")


# ---------------------------------------------------------------------------- downloads

def test_full_download_into_the_cache(online: None, hub: HubServer, hub_repo: Repo, isolated_home: Path) -> None:
    result = cli("model", "download", REPO, "--endpoint", hub.url)
    assert result.exit_code == 0, result.output
    snap = snapshot(isolated_home, hub_repo)
    assert {p.name for p in snap.iterdir()} == LOAD_SET
    for name in LOAD_SET:
        assert sha((snap / name).read_bytes()) == sha(hub_repo.files[name])
    refs = snap.parent.parent / "refs" / "main"
    assert refs.read_text() == hub_repo.commit
    assert f"{REPO}: 8 file(s) in {snap}" in result.stdout
    assert "skipped 8 file(s)" in result.stderr and "model-q4_k_m.gguf" in result.stderr
    assert "(--endpoint, HTTP, xet off)" in result.stderr
    # Skipped formats never travel.
    assert not any(name.endswith((".gguf", ".bin", ".onnx", ".h5", ".msgpack")) for name, _ in resolve_gets(hub))
    assert "Traceback" not in result.output


def test_local_dir_download_then_rerun_is_a_no_op(online: None, hub: HubServer, hub_repo: Repo,
                                                  tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny"
    result = cli("model", "download", REPO, "--endpoint", hub.url, "--local-dir", str(target))
    assert result.exit_code == 0, result.output
    assert {p.name for p in target.iterdir() if p.name != ".cache"} == LOAD_SET
    assert (target / "model.safetensors").read_bytes() == hub_repo.files["model.safetensors"]
    assert not list(target.rglob("*.incomplete"))
    gets_before = len(resolve_gets(hub))
    again = cli("model", "download", REPO, "--endpoint", hub.url, "--local-dir", str(target))
    assert again.exit_code == 0, again.output
    assert "0 file(s), 0 B to fetch" in again.stderr and "8 file(s) already complete" in again.stderr
    assert len(resolve_gets(hub)) == gets_before


def test_a_branch_that_moves_during_the_download_is_not_recorded(online: None, hub: HubServer, hub_repo: Repo,
                                                                isolated_home: Path) -> None:
    """Files are pinned to the planned commit; huggingface_hub records refs/main only while main still
    names it, so the cache never maps main to a snapshot it does not hold."""
    plan = download.plan_download(REPO, endpoint=hub.url, environ=dict(os.environ))
    hub_repo.branches["main"] = "f" * 40            # a push between the plan and the transfer
    result = download.apply(plan)
    assert result.path == snapshot(isolated_home, hub_repo)
    assert (result.path / "model.safetensors").read_bytes() == hub_repo.files["model.safetensors"]
    assert not (result.path.parent.parent / "refs" / "main").exists()
    assert download.find_cached_snapshot(REPO, revision=hub_repo.commit, environ=dict(os.environ)) == result.path
    assert download.find_cached_snapshot(REPO, revision=None, environ=dict(os.environ)) is None


def test_hf_endpoint_environment_variable_is_honoured(online: None, hub: HubServer, hub_repo: Repo,
                                                      isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    result = cli("model", "download", REPO)
    assert result.exit_code == 0, result.output
    assert f"from {hub.url} (HF_ENDPOINT" in result.stderr
    assert (snapshot(isolated_home, hub_repo) / "model.safetensors").is_file()


def test_dropped_connection_resumes_with_a_range_request(online: None, hub: HubServer, hub_repo: Repo,
                                                         isolated_home: Path) -> None:
    hub.drop_after["model.safetensors"] = CUT
    result = cli("model", "download", REPO, "--endpoint", hub.url)
    assert result.exit_code == 0, result.output
    weights = [rng for name, rng in resolve_gets(hub) if name == "model.safetensors"]
    # Each received byte is written at once: the same run asks for exactly the rest.
    assert weights == [None, f"bytes={CUT}-"]
    data = (snapshot(isolated_home, hub_repo) / "model.safetensors").read_bytes()
    assert sha(data) == sha(hub_repo.files["model.safetensors"])


def test_a_server_that_ignores_the_range_sends_the_whole_file_again(online: None, hub: HubServer, hub_repo: Repo,
                                                                   isolated_home: Path) -> None:
    """A partial file from an earlier run, and a server answering `Range` with 200 and every byte: the
    partial is restarted, not appended to, and the file is whole."""
    data = hub_repo.files["model.safetensors"]
    f = RepoFile("model.safetensors", len(data), hub_repo.etag("model.safetensors"))
    partial = partial_path(cache_dir(isolated_home), REPO, f, False)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:CUT])
    hub.ignore_range = True
    result = cli("model", "download", REPO, "--endpoint", hub.url)
    assert result.exit_code == 0, result.output
    assert f"({units.human_bytes(CUT)} already on disk, resumed)" in result.stderr
    assert [rng for name, rng in resolve_gets(hub) if name == "model.safetensors"] == [f"bytes={CUT}-"]
    assert sha((snapshot(isolated_home, hub_repo) / "model.safetensors").read_bytes()) == sha(data)


# ---------------------------------------------------------------------------- progress events

Events = dict[str, list[tuple[int, "int | None"]]]


def recorder(events: Events) -> download.Progress:
    """An `on_progress` that keeps every event, per file, in order."""
    def on_progress(name: str, done: int, total: int | None) -> None:
        events.setdefault(name, []).append((done, total))
    return on_progress


def test_every_file_reports_its_bytes_in_order_up_to_its_size(online: None, hub: HubServer, hub_repo: Repo,
                                                              isolated_home: Path) -> None:
    """apply(on_progress=...) hears from each file: `done` starts at 0, never goes back, and ends at the
    file's size, which it reaches once (the file is in place). The hub drops the weights at 12 MiB and
    the worker waits before it resumes, so the same file also reports bytes past the cut."""
    hub.drop_after["model.safetensors"] = CUT
    plan = download.plan_download(REPO, endpoint=hub.url, environ=dict(os.environ))
    events: Events = {}
    result = download.apply(plan, on_progress=recorder(events))
    assert set(events) == {f.path for f in plan.files} == LOAD_SET
    for name, seen in events.items():
        size = len(hub_repo.files[name])
        done = [d for d, _ in seen]
        assert done == sorted(done) and done[0] == 0 and done[-1] == size, (name, seen)
        assert {t for _, t in seen} == {size} and done.count(size) == 1, (name, seen)
    weights = len(hub_repo.files["model.safetensors"])
    assert any(CUT < d < weights for d, _ in events["model.safetensors"])
    assert sha((result.path / "model.safetensors").read_bytes()) == sha(hub_repo.files["model.safetensors"])


def test_a_resumed_file_reports_from_the_bytes_already_on_disk(online: None, hub: HubServer, hub_repo: Repo,
                                                               isolated_home: Path) -> None:
    data = hub_repo.files["model.safetensors"]
    f = RepoFile("model.safetensors", len(data), hub_repo.etag("model.safetensors"))
    partial = partial_path(cache_dir(isolated_home), REPO, f, False)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:CUT])
    events: Events = {}
    download.apply(download.plan_download(REPO, endpoint=hub.url, environ=dict(os.environ)),
                   on_progress=recorder(events))
    seen = events["model.safetensors"]
    assert seen[0] == (CUT, len(data)) and seen[-1] == (len(data), len(data))


def test_a_failed_download_reports_no_file_as_finished(online: None, hub: HubServer, hub_repo: Repo,
                                                       isolated_home: Path) -> None:
    """A weight file whose bytes do not match the hub's sha256 is never reported at its full size."""
    plan = download.plan_download(REPO, endpoint=hub.url, environ=dict(os.environ))
    hub_repo.files["model.safetensors"] = bytes(len(hub_repo.files["model.safetensors"]))   # same size, other bytes
    events: Events = {}
    with pytest.raises(ProvisionError, match="do not match the sha256"):
        download.apply(plan, on_progress=recorder(events))
    assert all(done < total for done, total in events["model.safetensors"] if total is not None)


def _signal_mid_file(sig: signal.Signals, hub: HubServer, hub_repo: Repo, home: Path,
                     provision_cmd: list[str]) -> tuple[subprocess.Popen[str], str, Path]:
    """`model download` stalled by the hub after 12 MiB; `sig` to its process group once those
    12 MiB are on disk. (the finished process, its stderr, the partial file)"""
    hub.stall_after["model.safetensors"] = CUT
    blob = hub_repo.etag("model.safetensors")
    partial = cache_dir(home) / "models--acme--tiny-qwen2" / "blobs" / f"{blob}.incomplete"
    run = subprocess.Popen([*provision_cmd, "model", "download", REPO, "--endpoint", hub.url], env=dict(os.environ),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert hub.stalled.wait(30), "the transfer never started"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (partial.is_file() and partial.stat().st_size >= CUT):
            time.sleep(0.05)
        os.killpg(run.pid, sig)
        _out, err = run.communicate(timeout=30)
    finally:
        hub.release()
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    return run, err, partial


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_download_is_never_complete_and_the_next_run_resumes(
        sig: signal.Signals, online: None, hub: HubServer, hub_repo: Repo, isolated_home: Path,
        provision_cmd: list[str]) -> None:
    """SIGTERM / SIGKILL to the process group mid-file (no handler runs): no file appears complete,
    and the same command again resumes from what reached the disk."""
    run, _err, partial = _signal_mid_file(sig, hub, hub_repo, isolated_home, provision_cmd)
    assert run.returncode == -sig
    assert not (snapshot(isolated_home, hub_repo) / "model.safetensors").exists()
    kept = partial.stat().st_size if partial.exists() else 0
    result = cli("model", "download", REPO, "--endpoint", hub.url)
    assert result.exit_code == 0, result.output
    if kept:
        assert [rng for name, rng in resolve_gets(hub) if name == "model.safetensors"][-1] == f"bytes={kept}-"
    data = (snapshot(isolated_home, hub_repo) / "model.safetensors").read_bytes()
    assert sha(data) == sha(hub_repo.files["model.safetensors"])


def test_interrupted_download_keeps_its_bytes_and_the_next_run_resumes(
        online: None, hub: HubServer, hub_repo: Repo, isolated_home: Path, provision_cmd: list[str]) -> None:
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) mid-file, then the same command again."""
    cut = CUT
    run, err, partial = _signal_mid_file(signal.SIGINT, hub, hub_repo, isolated_home, provision_cmd)
    assert run.returncode == 130, err
    assert "error: download interrupted" in err
    assert "hint: run the same command again: it resumes" in err
    assert "Traceback" not in err
    assert partial.stat().st_size == cut
    assert not (snapshot(isolated_home, hub_repo) / "model.safetensors").exists()

    result = cli("model", "download", REPO, "--endpoint", hub.url)
    assert result.exit_code == 0, result.output
    assert f"({units.human_bytes(cut)} already on disk, resumed)" in result.stderr
    assert [rng for name, rng in resolve_gets(hub) if name == "model.safetensors"][-1] == f"bytes={cut}-"
    data = (snapshot(isolated_home, hub_repo) / "model.safetensors").read_bytes()
    assert sha(data) == sha(hub_repo.files["model.safetensors"])
    assert not partial.exists()


def test_disk_full_is_refused_before_the_first_byte(online: None, hub: HubServer, hub_repo: Repo,
                                                    isolated_home: Path) -> None:
    """The free-space figure is injected: a genuinely full filesystem needs root (tmpfs/loop mount)."""
    with pytest.raises(ProvisionError) as e:
        download.plan_download(REPO, endpoint=hub.url, environ=dict(os.environ), disk_free=lambda _p: 5 << 20)
    need = units.human_bytes(sum(len(hub_repo.files[f]) for f in LOAD_SET))
    assert e.value.message.startswith(f"not enough disk space for {REPO}: {need} to download into ")
    assert "5.0 MiB free" in e.value.message
    assert "--local-dir DIR on a bigger disk" in (e.value.hint or "")
    assert resolve_gets(hub) == []
    assert not cache_dir(isolated_home).exists()


@pytest.mark.parametrize(("setup", "args", "message", "hint"), [
    pytest.param("missing", (), "error: repository acme/tiny-qwen2 not found on {url} (HTTP 404)",
                 "hint: check the id (org/name); a private repo also needs a token", id="404-repo"),
    pytest.param(None, ("--revision", "v9"), "error: revision 'v9' not found in acme/tiny-qwen2",
                 "hint: pass a branch, tag or full commit hash that exists", id="404-revision"),
    pytest.param("gated-401", (), "error: acme/tiny-qwen2 is gated: {url} answered 401 because you are not logged in",
                 "hint: accept the licence at {url}/acme/tiny-qwen2, then log in: `hf auth login`", id="gated-401"),
    pytest.param("gated-403", (), "error: acme/tiny-qwen2 is gated and your token has not been granted access "
                 "({url} answered 403)", "hint: accept the licence at {url}/acme/tiny-qwen2 with the account",
                 id="gated-403"),
    pytest.param("redirect-to-hub", (), "error: {url} hands model.safetensors to cdn-lfs.huggingface.co: the bytes "
                 "would come from Hugging Face, not from the mirror", "hint: use a mirror that serves files itself",
                 id="mirror-bypass"),
])
def test_hub_errors_are_explained(online: None, hub: HubServer, hub_repo: Repo, isolated_home: Path,
                                  setup: str | None, args: tuple[str, ...], message: str, hint: str) -> None:
    if setup == "missing":
        hub.missing.add(REPO)
    elif setup and setup.startswith("gated"):
        hub_repo.gated = int(setup.split("-")[1])
    elif setup == "redirect-to-hub":
        hub.redirect_lfs_to = "https://cdn-lfs.huggingface.co"
    result = cli("model", "download", REPO, "--endpoint", hub.url, *args)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == message.format(url=hub.url)
    assert lines[1].startswith(hint.format(url=hub.url))
    assert "Traceback" not in result.output
    assert resolve_gets(hub) == []                     # refused before any file byte moved
    assert not snapshot(isolated_home, hub_repo).exists()


def test_unreachable_endpoint_suggests_mirrors(online: None) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("model", "download", REPO, "--endpoint", url)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach {url} (--endpoint): ")
    assert "hint: check the URL and the network; known mirrors: --mirror hf-mirror (https://hf-mirror.com)" \
        in result.stderr
    assert "Traceback" not in result.output


def test_unreachable_hub_hint_names_the_mirror() -> None:
    err = download._error({"kind": "unreachable", "message": "[Errno -2] Name or service not known"},
                          endpoint=Endpoint(download.DEFAULT_ENDPOINT, "default"), repo=REPO, revision="main")
    assert err.message == "cannot reach https://huggingface.co (default): [Errno -2] Name or service not known"
    assert "--mirror hf-mirror (or export HF_ENDPOINT=https://hf-mirror.com)" in (err.hint or "")


def test_redirect_to_another_host_is_reported_and_followed(online: None, hub: HubServer, hub_repo: Repo,
                                                           isolated_home: Path) -> None:
    hub.redirect_lfs_to = f"http://localhost:{hub.port}"
    result = cli("model", "download", REPO, "--endpoint", hub.url)
    assert result.exit_code == 0, result.output
    size = units.human_bytes(len(hub_repo.files["model.safetensors"]))
    assert f"+ model.safetensors  {size} via localhost" in result.stderr
    assert "warning: model.safetensors is served by localhost, not by 127.0.0.1" in result.stderr
    assert ("model.safetensors", None) not in resolve_gets(hub)      # bytes came from the "CDN" path
    assert (snapshot(isolated_home, hub_repo) / "model.safetensors").read_bytes() == \
        hub_repo.files["model.safetensors"]


def test_offline_mode_refuses_with_the_variable_named(hub: HubServer) -> None:
    result = cli("model", "download", REPO, "--endpoint", hub.url)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "error: HF_HUB_OFFLINE=1 is set, so downloads are switched off"
    assert hub.requests == []


def test_dry_run_and_json(online: None, hub: HubServer, hub_repo: Repo, isolated_home: Path) -> None:
    result = cli("model", "download", REPO, "--endpoint", hub.url, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Download {REPO} @ main (commit {hub_repo.commit[:12]}) from {hub.url}")
    assert f"+ model.safetensors  {units.human_bytes(len(hub_repo.files['model.safetensors']))}" in result.stdout
    assert resolve_gets(hub) == [] and not cache_dir(isolated_home).exists()
    doc = CliRunner().invoke(main, ["--json", "model", "download", REPO, "--endpoint", hub.url, "--dry-run"])
    import json

    data = json.loads(doc.stdout)
    assert data["commit"] == hub_repo.commit and data["dry_run"] is True
    assert set(data["files"]) == LOAD_SET and data["bytes"] == sum(len(hub_repo.files[f]) for f in LOAD_SET)


def test_not_a_repo_id_is_a_usage_error() -> None:
    result = cli("model", "download", "qwen2.5-7b-instruct")
    assert result.exit_code == 2
    assert "error: 'qwen2.5-7b-instruct' is not a hub repository id" in result.stderr


def test_target_that_cannot_be_a_folder_is_refused_before_the_first_byte(
        online: None, hub: HubServer, hub_repo: Repo, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("model", "download", REPO, "--endpoint", hub.url, "--local-dir", str(blocker / "model"))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: cannot make {blocker / 'model'}: {blocker} is not a folder",
                                          "hint: choose another folder (--local-dir or HF_HUB_CACHE)"]
    assert resolve_gets(hub) == []


def test_write_failure_during_the_download_is_explained(online: None, hub: HubServer, hub_repo: Repo,
                                                        tmp_path: Path) -> None:
    """The folder is writable, but huggingface_hub's bookkeeping path inside it is blocked by a file."""
    target = tmp_path / "tiny"
    target.mkdir()
    (target / ".cache").write_text("")
    result = cli("model", "download", REPO, "--endpoint", hub.url, "--local-dir", str(target))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[-2].startswith(f"error: cannot write the files of {REPO}: [Errno 20] Not a directory: ")
    assert lines[-1] == ("hint: download into a folder you can write: --local-dir DIR (or set HF_HUB_CACHE); "
                         "then run the same command again")
    assert "Traceback" not in result.output


@pytest.mark.parametrize("repo_id", ["a/b.", "../x", "a/--b", "org/na..me", "o" * 120 + "/x", "a/b.git", "a/é",
                                     "a/b/c", "/x", "x/"])
def test_invalid_repo_ids_are_one_usage_error_before_anything(repo_id: str, tmp_path: Path) -> None:
    # The hub client would raise HFValidationError as a traceback, even with --dry-run.
    done = subprocess.run([sys.executable, "-m", "provisioner", "model", "download", repo_id, "--dry-run"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 2, done.stderr
    assert f"error: '{repo_id}' is not a hub repository id" in done.stderr and "hint: a hub id is org/name" in done.stderr
    assert "Traceback" not in done.stderr


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet="ab_-.é9", max_size=8), st.text(alphabet="ab_-.Z9", min_size=0, max_size=100))
def test_the_repo_id_rule_is_the_hubs(org: str, name: str) -> None:
    """The same verdict as the installed hub client; at most stricter where huggingface_hub < 2.0
    still let non-ASCII letters through (2.0 added re.ASCII to REPO_ID_REGEX), as the hub itself
    refuses them."""
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from packaging.version import Version

    repo_id = f"{org}/{name}"
    try:
        validate_repo_id(repo_id)
        hub_ok = True
    except HFValidationError:
        hub_ok = False
    ours_ok = hub.repo_id_problem(repo_id) is None
    if ours_ok != hub_ok:
        assert hub_ok and not repo_id.isascii() and Version(huggingface_hub.__version__) < Version("2"), repo_id
