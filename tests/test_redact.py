"""Secrets never leave in a report: tokens by variable name and by shape, URL credentials."""
from __future__ import annotations

import pytest

from provisioner import redact

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
