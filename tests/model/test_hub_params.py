"""`provision model fit ORG/NAME` for hub models outside the table: exact counts from the safetensors
headers (HfApi.get_safetensors_metadata, answered by tests/hubserver.py), config arithmetic otherwise."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from provisioner.cli import main
from provisioner.model import info as modelinfo
from tests.hubserver import (TINY_CONFIG, HubServer, Repo, safetensors_bytes, sharded_repo, tiny_repo,
                             tiny_tensors)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTRA = 2500     # 1-element tensors that push a header past the 100,000 bytes the first request reads


def _with(repo_id: str, **files: bytes) -> Repo:
    base = {k: v for k, v in tiny_repo(repo_id).files.items() if k != "model.safetensors"}
    return Repo(repo_id, {**base, **{k.replace("__", "."): v for k, v in files.items()}})


def _config(**extra: Any) -> bytes:
    return json.dumps({**TINY_CONFIG, **extra}).encode()


WIDE = {**tiny_tensors(), **{f"model.extra.{i}.scale": ("BF16", [1]) for i in range(EXTRA)}}
BASE = sum(math.prod(shape) for _dtype, shape in tiny_tensors().values())


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A local hub with one repo per case, named as HF_ENDPOINT; the hub is switched on."""
    repos = [
        tiny_repo("acme/single"),
        sharded_repo("acme/sharded", shards=3),
        _with("acme/wide", model__safetensors=safetensors_bytes(WIDE)),
        _with("acme/bin-only", pytorch_model__bin=b"\0" * 4096),
        _with("acme/quantized", config__json=_config(quantization_config={"quant_method": "bitsandbytes"}),
              model__safetensors=safetensors_bytes(tiny_tensors())),
        _with("acme/garbage", model__safetensors=b"\xff" * 64),
    ]
    server = HubServer(repos)
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    try:
        yield server
    finally:
        server.stop()


def fit(*args: str) -> Result:
    return CliRunner().invoke(main, ["model", "fit", *args, "--gpu-memory", "1"])


def fit_json(model: str) -> dict[str, Any]:
    result = fit(model, "--json")
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def ranged_gets(hub: HubServer) -> dict[str, list[str | None]]:
    """safetensors file -> the Range header of every GET of it."""
    out: dict[str, list[str | None]] = {}
    for method, path, rng in hub.requests:
        if method == "GET" and path.endswith(".safetensors"):
            out.setdefault(path.rsplit("/", 1)[-1], []).append(rng)
    return out


@pytest.mark.parametrize(("model", "params"), [
    pytest.param("acme/single", BASE, id="single-file"),
    pytest.param("acme/sharded", BASE, id="sharded"),
    pytest.param("acme/wide", BASE + EXTRA, id="header-over-100kB"),
])
def test_exact_counts_come_from_the_safetensors_headers_without_the_weights(hub: HubServer, model: str,
                                                                            params: int) -> None:
    doc = fit_json(model)
    assert doc["params"] == params
    assert doc["params_source"] == "safetensors header"
    assert doc["params_source_note"] == f"read from {hub.url}"
    repo = hub.repos[model]
    shards = {p for p in repo.files if p.endswith(".safetensors")}
    gets = ranged_gets(hub)
    assert set(gets) == shards                                   # every header was read ...
    for ranges in gets.values():                                 # ... and only the header
        assert ranges[0] == "bytes=0-100000"
        assert all(r is not None and (r == "bytes=0-100000" or r.startswith("bytes=8-")) for r in ranges)
    assert any(len(r) == 2 for r in gets.values()) == (model == "acme/wide")


def test_exact_counts_split_like_the_config_arithmetic(hub: HubServer) -> None:
    """The tiny model is a plain Qwen2: the headers and config.json must agree on every count."""
    environ = dict(os.environ)
    from_config = modelinfo.spec_from_config(TINY_CONFIG, name="x")
    for model in ("acme/single", "acme/sharded"):
        spec = modelinfo.resolve(model, environ=environ)
        assert spec.source == "safetensors" and spec.path is None
        for field in ("params", "quantizable_params", "other_params", "quantizable_tensors", "quantizable_rows",
                      "kv_heads", "head_dim", "dtype"):
            assert getattr(spec, field) == getattr(from_config, field), (model, field)


def test_text_output_names_the_source(hub: HubServer) -> None:
    result = fit("acme/sharded")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first == f"acme/sharded: {BASE / 1e9:.2f} B parameters (safetensors header, exact, read from {hub.url})"


@pytest.mark.parametrize(("model", "note"), [
    pytest.param("acme/bin-only", "the repository has no model.safetensors or model.safetensors.index.json",
                 id="no-safetensors"),
    pytest.param("acme/quantized", "the checkpoint is quantized (quantization_config), so its headers hold "
                 "packed weights", id="quantized"),
    pytest.param("acme/garbage", "a safetensors header could not be parsed (", id="unparsable-header"),
])
def test_config_arithmetic_when_the_headers_cannot_count(hub: HubServer, model: str, note: str) -> None:
    doc = fit_json(model)
    assert doc["params"] == modelinfo.spec_from_config(TINY_CONFIG, name=model).params
    assert doc["params_source"] == "config arithmetic"
    assert doc["params_source_note"].startswith(note)
    text = fit(model)
    assert text.exit_code == 0 and "Traceback" not in text.output
    assert text.stdout.splitlines()[0].startswith(
        f"{model}: {doc['params'] / 1e9:.2f} B parameters (config arithmetic from config.json; {note}")


def test_offline_with_a_cached_config_falls_back_and_says_why(hub: HubServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert fit_json("acme/single")["params_source"] == "safetensors header"      # caches config.json
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    doc = fit_json("acme/single")
    assert doc["params_source"] == "config arithmetic"
    assert doc["params_source_note"] == "the hub is switched off (HF_HUB_OFFLINE)"
    assert len(hub.requests) == before


def test_a_config_only_snapshot_in_the_cache_does_not_hide_the_headers(hub: HubServer) -> None:
    """The first fit leaves config.json (and the shard index) in the cache; the second still counts
    exactly instead of taking that partial snapshot for a download."""
    first, second = fit_json("acme/sharded"), fit_json("acme/sharded")
    assert first["params_source"] == second["params_source"] == "safetensors header"
    assert second["params"] == BASE


def test_the_hub_is_only_imported_by_the_worker(hub: HubServer) -> None:
    """A whole `model fit ORG/NAME` in a fresh interpreter: huggingface_hub stays in the child process."""
    code = ("import sys\n"
            "from provisioner.cli import main\n"
            "try:\n"
            "    main(['model', 'fit', 'acme/single', '--json', '--gpu-memory', '1'])\n"
            "except SystemExit as e:\n"
            "    print('exit', e.code, 'huggingface_hub' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), cwd=REPO_ROOT)
    assert done.stderr.splitlines()[-1] == "exit 0 False", done.stderr
    assert json.loads(done.stdout)["params_source"] == "safetensors header"
