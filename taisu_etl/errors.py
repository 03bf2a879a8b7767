"""Errors a user can act on.

Every error that reaches the command line as a single line derives from `TaisuError`; its
message says what is wrong and what to do. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TaisuError(Exception):
    """An error caused by configuration, input or a service, with a one-line fix in its message."""


class ConfigError(TaisuError):
    """Bad settings or recipe file."""


class LedgerError(TaisuError):
    """The ledger database cannot be reached or used."""


class StorageError(TaisuError):
    """The object store cannot be reached or used."""


class InputError(TaisuError):
    """An input file is not what it claims to be (names the file and, where known, the line)."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
