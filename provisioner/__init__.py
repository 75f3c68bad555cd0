"""provision: from "driver installed" to "a quantized Qwen chat model answers"."""
from __future__ import annotations

__version__ = "0.1.0"
