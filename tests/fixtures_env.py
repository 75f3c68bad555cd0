"""Fixtures for the env tests (registered in conftest.pytest_plugins)."""
from __future__ import annotations
