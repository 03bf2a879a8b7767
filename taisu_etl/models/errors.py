"""The models package's one error type (importable without torch)."""

from __future__ import annotations

from taisu_etl.errors import TaisuError


class ModelError(TaisuError):
    """A model, checkpoint or tokenizer cannot be loaded or used; the message names the file and the fix."""
