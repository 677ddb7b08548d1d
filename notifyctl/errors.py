"""The error tree: every error a user can cause carries its exit code.

Only ``cli.main`` turns these into ``error: …`` lines and exit codes.
"""

from __future__ import annotations

from enum import IntEnum, unique


@unique
class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    DATABASE = 4
    INTERRUPTED = 130  # what a shell reports for Ctrl-C


class NotifyctlError(Exception):
    """Base of every expected error; ``details`` are extra lines shown under it."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidInput(NotifyctlError):
    """Bad options, times, recipients, files: exit 2, nothing written."""

    exit_code = ExitCode.USAGE


class NotFound(InvalidInput):
    """A booking or reminder id that is not in the store."""


class ConfigError(NotifyctlError):
    """Missing or rejected credentials, bad URLs: exit 3."""

    exit_code = ExitCode.CONFIG


class DatabaseError(NotifyctlError):
    """Store unreachable, or its schema is not at head: exit 4."""

    exit_code = ExitCode.DATABASE


class SchemaNotCurrent(DatabaseError):
    """The database exists but needs ``notifyctl migrate``."""


class RunFailed(NotifyctlError):
    """A dispatch run ended with an error its report carries, with that report's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(exit_code)


class CheckFailed(NotifyctlError):
    """``migrate --check`` found the database behind: exit 1 by the spec."""

    exit_code = ExitCode.INTERNAL


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters: an error names a bad value, whole
    or not (a value may be a megabyte long, and every line of an error is read by a person).
    """
    text = repr(value) if isinstance(value, str) else repr(str(value))
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 1, 8)]}…' ({len(str(value))} characters)"
