#!/usr/bin/env bash
# Build the peer environment for bench/fetch.py: img2dataset from PyPI in its own venv,
# bench/.venv-img2dataset, kept apart from the project's .venv (its pins -- opencv, albumentations,
# pandas, wandb -- have nothing to do with ours). Safe to run again: it does nothing when the pinned
# version is already installed.
#
#     bash bench/peer_env.sh
#
# img2dataset needs no torch and pulls none (no CUDA wheels either); the check at the end fails
# loudly if that ever changes.
set -euo pipefail

IMG2DATASET_VERSION="${IMG2DATASET_VERSION:-1.47.0}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-img2dataset"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"

installed_version() {
    "$PY" -c 'import importlib.metadata as m; print(m.version("img2dataset"))' 2>/dev/null || true
}

# Bytecode as pip writes it at install (uv does not by default): without it, and with
# PYTHONDONTWRITEBYTECODE set as on these machines, every img2dataset run would compile pandas,
# pyarrow and the rest from source, and the benchmark would time that instead of the tool.
BYTECODE_STAMP="$VENV/.bytecode-compiled"

if [[ -x "$PY" && "$(installed_version)" == "$IMG2DATASET_VERSION" && -x "$VENV/bin/img2dataset" && -f "$BYTECODE_STAMP" ]]; then
    echo "img2dataset $IMG2DATASET_VERSION already installed in $VENV"
    exit 0
fi

start=$(date +%s)
[[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"

# uv resolves and installs the ~55 wheels in seconds; it reads neither pip.conf nor its find-links
# (/opt/wheels holds a local torch build), so everything comes from PyPI.
if "$PY" -m pip install --quiet uv && "$VENV/bin/uv" pip install --compile-bytecode --python "$PY" "img2dataset==$IMG2DATASET_VERSION"; then
    :
else
    echo "uv install failed; falling back to pip" >&2
    "$PY" -m pip install "img2dataset==$IMG2DATASET_VERSION"
fi

# Refuse an environment that grew torch or CUDA wheels.
if "$PY" -m pip list --format=freeze 2>/dev/null | grep -i -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+)==' >&2; then
    echo "error: the img2dataset environment pulled torch/CUDA packages (listed above); pin them out" >&2
    exit 1
fi

"$PY" -m compileall -q -j0 "$VENV/lib" >/dev/null  # a no-op where uv already compiled
touch "$BYTECODE_STAMP"
echo "img2dataset $(installed_version) installed in $VENV ($(( $(date +%s) - start ))s)"
