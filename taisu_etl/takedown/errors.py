"""Errors of the takedown workflow that a user can fix: printed as one `error:` line."""

from __future__ import annotations

from taisu_etl.errors import TaisuError


class TakedownError(TaisuError):
    """A bad request, an unknown request id, or a takedown that could not be completed."""
