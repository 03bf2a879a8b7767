"""Models for the retrieval filter and the captioner: open_clip CLIP and CoCa, plus tiny built-ins.

Importing this package does not import torch: `ModelSpec`, `builtin_spec` and `ModelError` are
plain Python, and the torch-backed names (`ClipScorer`, `CaptionGenerator`, `choose_device`) load
on first use, so the Airflow scheduler and the CLI stay light. `retrieval` needs only numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taisu_etl.models.errors import ModelError
from taisu_etl.models.spec import ModelSpec, builtin_spec, parse_spec

if TYPE_CHECKING:
    from taisu_etl.models._loading import choose_device
    from taisu_etl.models.captioner import CaptionGenerator
    from taisu_etl.models.scorer import ClipScorer

__all__ = ["CaptionGenerator", "ClipScorer", "ModelError", "ModelSpec", "builtin_spec", "choose_device", "parse_spec"]

_LAZY = {
    "ClipScorer": "taisu_etl.models.scorer",
    "CaptionGenerator": "taisu_etl.models.captioner",
    "choose_device": "taisu_etl.models._loading",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
