"""Runs the real `open_clip_train.main` inside the training environment (`make train-env`, .venv-train).

    .venv-train/bin/python tests/release/open_clip_train_launcher.py --model-config CFG.json -- ARGS...

It does the two things open_clip_train's own command line cannot do here: it imports the project's
torchvision shim first (PyPI's torchvision 0.28.0 is CUDA-linked and fails to import next to the
CPU torch; see taisu_etl/models/_torchvision_shim.py), and registers model configs that are not
among open_clip's built-in ones. The shim is loaded from its file, not as `taisu_etl.models...`:
the training environment holds open_clip's pins only, not this project. Everything after `--` goes
to open_clip_train unchanged.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

SHIM = Path(__file__).resolve().parents[2] / "taisu_etl" / "models" / "_torchvision_shim.py"


def load_torchvision_shim() -> None:
    spec = importlib.util.spec_from_file_location("_taisu_torchvision_shim", SHIM)
    assert spec is not None and spec.loader is not None, f"cannot load {SHIM}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # keeps its torch.library.Library (and so the op schemas) alive
    spec.loader.exec_module(module)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", action="append", default=[], type=Path,
                        help="an open_clip model config JSON; its file stem becomes a --model name (repeatable)")
    split = argv.index("--") if "--" in argv else len(argv)
    ours, rest = parser.parse_args(argv[:split]), argv[split + 1:]
    load_torchvision_shim()
    import open_clip
    from open_clip_train import main as train_main

    for path in ours.model_config:
        open_clip.add_model_config(path)
    train_main.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
