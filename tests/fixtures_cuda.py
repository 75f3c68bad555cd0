"""Fixtures for the cuda tests (registered in conftest.pytest_plugins)."""
from __future__ import annotations
