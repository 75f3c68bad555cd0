"""YAML documents parsed by libyaml where PyYAML was built with it (its wheels are), else in Python.

The profiles, the compatibility tables and the message catalogue are read on every `verify`: the C
parser reads them in about a tenth of the pure-Python parser's time (80 ms of a repeated `verify` on
the 2-core CI kind). Same safe subset, same `yaml.MarkedYAMLError` (with line and column) on bad input.
"""
from __future__ import annotations

from typing import Any

import yaml

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str) -> Any:
    """`yaml.safe_load(text)`, with the C loader when there is one."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader, C or Python
