"""Fixtures for the model tests (registered in conftest.pytest_plugins): tiny random Qwen models, a local hub."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CACHE, _key
from tests.hubserver import HubServer, Repo, tiny_repo

#: Tiny random-weight models covering what the fit arithmetic must get right: tied and untied
#: embeddings, multi-head and grouped-query attention, Qwen2 (q/k/v bias) and Qwen3 (q/k norms, head_dim).
TINY_CONFIGS: dict[str, dict[str, object]] = {
    "qwen2-tied-gqa": dict(family="qwen2", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True),
    "qwen2-untied-mha": dict(family="qwen2", hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, vocab_size=1000,
                             tie_word_embeddings=False),
    "qwen2-untied-gqa": dict(family="qwen2", hidden_size=192, intermediate_size=512, num_hidden_layers=3,
                             num_attention_heads=6, num_key_value_heads=2, vocab_size=2048,
                             tie_word_embeddings=False),
    "qwen3-tied-gqa": dict(family="qwen3", hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=48, vocab_size=1000,
                           tie_word_embeddings=True),
}

# Runs in the chat env: random weights are enough to measure sizes; safetensors written sharded for
# one config so the index path is exercised too.
BUILD_SCRIPT = r'''
import json, sys
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
configs = json.loads(sys.argv[2])
for name, cfg in configs.items():
    cfg = dict(cfg)
    family = cfg.pop("family")
    torch.manual_seed(0)
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(max_position_embeddings=512, **cfg))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=512, **cfg))
    shard = "1MB" if name == "qwen2-untied-gqa" else "50GB"
    model.save_pretrained(f"{sys.argv[1]}/{name}", max_shard_size=shard)
    print(name, sum(p.numel() for p in model.parameters()))
'''


@pytest.fixture(scope="session")
def tiny_models(chat_env_python: Path) -> dict[str, Path]:
    """Folders of the TINY_CONFIGS models, built once into the test cache with the chat env."""
    root = CACHE / f"tiny-fit-models-{_key([json.dumps(TINY_CONFIGS, sort_keys=True), BUILD_SCRIPT])}"
    marker = root / ".complete"
    if not marker.exists():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
        subprocess.run([str(chat_env_python), "-c", BUILD_SCRIPT, str(root), json.dumps(TINY_CONFIGS)],
                       check=True, env=env, capture_output=True, text=True, timeout=600)
        marker.write_text("ok\n")
    return {name: root / name for name in TINY_CONFIGS}


@pytest.fixture
def hub_repo() -> Repo:
    """A tiny model repository as the hub would list it (safetensors, duplicates, extras)."""
    return tiny_repo()


@pytest.fixture
def hub(hub_repo: Repo) -> Iterator[HubServer]:
    """A local hub on 127.0.0.1 serving `hub_repo` (stopped after the test)."""
    server = HubServer([hub_repo])
    server.start()
    try:
        yield server
    finally:
        server.stop()
