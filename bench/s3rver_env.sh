#!/usr/bin/env bash
# Build the S3 stand-in for bench/fetch.py: s3rver (npm, a Node S3 server that stores real files)
# in bench/.s3rver/, kept apart from the project (no package.json at the repository root).
# MinIO is what production uses, but no MinIO binary can be installed on these machines; moto's
# server (Python, one GIL) accepts ~380 PUT/s here and caps the fetch benchmark, s3rver ~1,000.
# Safe to run again: it does nothing when the pinned version is already installed.
#
#     bash bench/s3rver_env.sh
#
# bench/fetch.py then starts it itself: node bench/.s3rver/node_modules/.bin/s3rver -d DIR
# -a 127.0.0.1 -p PORT --configure-bucket BUCKET (credentials S3RVER / S3RVER).
set -euo pipefail

S3RVER_VERSION="${S3RVER_VERSION:-3.7.1}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="$HERE/.s3rver"
BIN="$PREFIX/node_modules/.bin/s3rver"

command -v node >/dev/null || { echo "error: node is not installed (s3rver needs node >= 8.3)" >&2; exit 1; }
command -v npm >/dev/null || { echo "error: npm is not installed" >&2; exit 1; }

installed_version() {
    node -e 'console.log(require(process.argv[1]).version)' "$PREFIX/node_modules/s3rver/package.json" 2>/dev/null || true
}

if [[ -x "$BIN" && "$(installed_version)" == "$S3RVER_VERSION" ]]; then
    echo "s3rver $S3RVER_VERSION already installed in $PREFIX"
    exit 0
fi

start=$(date +%s)
mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "s3rver@$S3RVER_VERSION"
[[ -x "$BIN" ]] || { echo "error: $BIN missing after npm install" >&2; exit 1; }
echo "s3rver $(installed_version) installed in $PREFIX ($(( $(date +%s) - start ))s)"
