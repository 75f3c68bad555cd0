"""Secrets never leave in a report: tokens by variable name and by shape, URL credentials."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import redact, state

TOKEN = "hf_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        pytest.param(f"token is {TOKEN}", TOKEN, id="hf-token-shape"),
        pytest.param("https://alice:s3cretpw@mirror.example/simple", "s3cretpw", id="url-password"),
        pytest.param("https://alice:s3cretpw@mirror.example/simple", "alice", id="url-user"),
        pytest.param("Authorization: Bearer abcdef123456", "abcdef123456", id="auth-header"),
        pytest.param("ghp_" + "Z" * 36, "ghp_" + "Z" * 36, id="github-token"),
    ],
)
def test_shapes_are_masked(text: str, leaked: str) -> None:
    out = redact.redact_text(text)
    assert leaked not in out
    assert redact.MASK in out


def test_secret_variables_are_masked_everywhere() -> None:
    environ = {"HF_TOKEN": "plain-looking-value-42", "MY_API_KEY": "k-9999", "PATH": "/usr/bin"}
    doc = {"environment_variables": dict(environ),
           "log": ["curl failed with plain-looking-value-42 in header", "key k-9999"],
           "nested": {"PIP_INDEX_URL": "https://bob:pw1234@idx.example/simple"}}
    out = redact.redact(doc, environ)
    flat = repr(out)
    assert "plain-looking-value-42" not in flat
    assert "k-9999" not in flat
    assert "pw1234" not in flat and "bob" not in flat
    assert out["environment_variables"]["PATH"] == "/usr/bin"
    assert out["environment_variables"]["HF_TOKEN"] == redact.MASK


def test_plain_text_is_kept() -> None:
    text = "torch 2.13.0+cpu, CUDA 12.6, https://mirror.example/simple"
    assert redact.redact_text(text, {"PATH": "/bin"}) == text


def test_package_names_that_contain_the_words_are_not_secrets() -> None:
    doc = {"packages": {"tokenizers": "0.21.1", "keyring": "25.6.0", "SecretStorage": "3.3.3",
                        "authlib": "1.6.0", "passlib": "1.7.4"},
           "HF_TOKEN": "hf_" + "a" * 30, "api_key": "k-123456", "password": "pw", "GITHUB_AUTH": "x"}
    out = redact.redact(doc, {})
    assert out["packages"] == doc["packages"]
    assert out["HF_TOKEN"] == out["api_key"] == out["password"] == out["GITHUB_AUTH"] == redact.MASK


def test_plans_and_dry_runs_never_print_index_credentials(tmp_path: Path) -> None:
    url = "https://builder:hunter2secret@wheels.example/simple"
    for extra in ([], ["--json"]):
        done = subprocess.run([sys.executable, "-m", "provisioner", "--root", str(tmp_path), *extra, "env", "create",
                               "--profile", "cpu", "--index-url", url, "--dry-run", "--prefix", str(tmp_path / "e")],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PROVISION_NVML_LIBRARY=str(tmp_path / "none.so")))
        assert done.returncode == 0, done.stderr
        assert "hunter2secret" not in done.stdout + done.stderr
        assert "https://***@wheels.example/simple" in done.stdout


def test_stored_failures_are_redacted_like_the_report(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path), "HOME": str(tmp_path), "MY_TOKEN": "s3cr3t-value"}
    state.record_failure(environ, ["provision", "env", "create"],
                         "pip exited 1 fetching https://u:pw@idx.example/simple",
                         None, "401 for s3cr3t-value\nAuthorization: Bearer abcdef")
    text = state.path(environ, state.LAST_FAILURE).read_text()
    assert "pw@" not in text and "s3cr3t-value" not in text and "abcdef" not in text
    assert "https://***@idx.example/simple" in text
