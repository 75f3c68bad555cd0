"""Remove secrets (tokens, passwords, credentials in URLs) from text before it leaves the machine."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

#: Environment variable names whose values are secrets.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH)",
                         re.IGNORECASE)
#: Secrets recognisable by shape alone.
SECRET_SHAPES = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),                 # Hugging Face user access tokens
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"),           # GitHub tokens
    re.compile(r"\b(?:sk|pk)-[A-Za-z0-9_-]{20,}\b"),         # common API key prefixes
    re.compile(r"(?i)\b(authorization:\s*(?:bearer|basic|token)\s+)\S+"),
)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<cred>[^/\s:@]+(?::[^/\s@]*)?)@")
#: A mapping key that names a secret: an environment variable (HF_TOKEN) or a setting (api_key,
#: password), never a distribution whose name merely contains the word (tokenizers, keyring).
SECRET_KEY = re.compile(r"(?:^|_)(?:token|secret|password|passwd|api_?key|access_?key|private_?key|"
                        r"credentials?|auth)$", re.IGNORECASE)


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values of secret-looking variables, longest first (so substrings do not leak)."""
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    for value in secret_values(environ or {}):
        text = text.replace(value, MASK)
    text = URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    for shape in SECRET_SHAPES:
        text = shape.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


def secret_key(key: object) -> bool:
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


def mask_urls(obj: Any) -> Any:
    """Credentials in URLs (https://user:pass@host -> https://***@host) inside any JSON-like value:
    what every line and document provision prints goes through this."""
    if isinstance(obj, str):
        return URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", obj) if "@" in obj else obj
    if isinstance(obj, Mapping):
        return {k: mask_urls(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_urls(v) for v in obj]
    return obj


def redact(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Redact every string inside a JSON-like structure."""
    if isinstance(obj, str):
        return redact_text(obj, environ)
    if isinstance(obj, Mapping):
        return {k: (MASK if secret_key(k) and isinstance(v, str) and v
                    else redact(v, environ)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, environ) for v in obj]
    return obj
