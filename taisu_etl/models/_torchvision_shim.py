"""Lets `import torchvision` (and so `import open_clip`) work with a CPU torch.

PyPI's torchvision 0.28.0 is linked against CUDA torch; with the CPU build of torch 2.13.0 its
compiled `_C` extension fails to load, and `torchvision/_meta_registrations.py` then dies with
"operator torchvision::nms does not exist" while registering fake kernels for ops that were never
defined. Defining just the two op *schemas* it touches lets the import finish. Only
`torchvision.ops` stays unusable (nothing here or in open_clip needs it).

Import this module before torchvision or open_clip; it is a no-op where `_C` loads normally.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_LIB: torch.library.Library | None = None  # kept alive: the definitions vanish with the object


def _torchvision_c_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision at all: nothing to patch, the import error will say so
    folder = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(str(candidates[0]))
    except (OSError, RuntimeError):
        return False
    return True


def install() -> None:
    global _LIB
    if _LIB is not None:
        return
    # Already defined (torchvision imported fine, or another copy of this shim ran): leave it.
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
        try:
            torch.ops.torchvision.nms.default  # noqa: B018 - raises if the op is not registered
            return
        except (AttributeError, RuntimeError):
            pass
    if _torchvision_c_loads():
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB = lib


install()
