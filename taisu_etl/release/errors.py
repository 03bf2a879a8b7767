"""Errors of the release commands: one line each, saying what to do (they reach the CLI as `error: ...`)."""

from __future__ import annotations

from taisu_etl.errors import TaisuError


class ReleaseError(TaisuError):
    """A release cannot be built, read or compared as asked."""


class ReleaseExistsError(ReleaseError):
    """The name is already published; published releases are immutable."""


class ReleaseNotFoundError(ReleaseError):
    """No published release (no manifest) under that name."""


class ReleaseBusyError(ReleaseError):
    """Another run, alive as far as anyone can tell, is creating a release of that name."""


class ReleaseTakenOverError(ReleaseError):
    """This run lost its claim on the release (another run took it over): it must not publish."""
