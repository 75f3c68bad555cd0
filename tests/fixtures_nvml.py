"""Fixtures for the nvml tests (registered in conftest.pytest_plugins)."""
from __future__ import annotations
