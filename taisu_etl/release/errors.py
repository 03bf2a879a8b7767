"""Errors of the release commands: one line each, saying what to do (they reach the CLI as `error: ...`)."""

from __future__ import annotations

from taisu_etl.errors import TaisuError


class ReleaseError(TaisuError):
    """A release cannot be built, read or compared as asked."""


class ReleaseExistsError(ReleaseError):
    """The name is already published; published releases are immutable."""


class ReleaseNotFoundError(ReleaseError):
    """No published release (no manifest) under that name."""
