"""`provision chat` command (Click layer only)."""
from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
