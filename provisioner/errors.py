"""One error type for user-facing failures: a message, a hint, and an exit code."""
from __future__ import annotations


class ProvisionError(Exception):
    """A problem the user can fix. Rendered as `error: ...` / `hint: ...`, never a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ProfileError(ProvisionError):
    """A profile file is invalid (exit 2, like a usage error)."""

    exit_code = 2


class UsageError(ProvisionError):
    """Bad command-line input (exit 2, as Click's usage errors)."""

    exit_code = 2


class CommandError(ProvisionError):
    """An external command could not be run, timed out, or failed."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        returncode: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class PermissionDenied(ProvisionError):
    """The user lacks permission for a system change (exit 4: re-run with sudo)."""

    exit_code = 4


class Interrupted(ProvisionError):
    """The user pressed Ctrl-C (exit 130, as shells report SIGINT)."""

    exit_code = 130
