"""EXIF orientation applied to a JPEG's DCT coefficients by libjpeg-turbo's `jpegtran`.

Flipping, rotating or transposing the quantised coefficients of every block (and the block grid)
turns the picture upright without a second lossy generation. That is exact only where no
partial MCU at the right or bottom edge would have to move to the left or top: `jpegtran
-perfect` refuses such a transform, and the caller then decodes and re-encodes. `-trim` is
never used: it would cut up to 15 pixels of picture off an edge.

jpegtran is a separate program (Debian's libjpeg-turbo-progs, installed by .ci/system-deps) run
once per rotated image with the bytes on stdin, no file on disk, a deadline and a cap on what it
may write. Where it is not on PATH, every rotated JPEG takes the decode + re-encode path, and the
process says so once in its log.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import subprocess
import time
from functools import lru_cache
from typing import Final

log = logging.getLogger(__name__)

# EXIF orientation -> the jpegtran transform that undoes it (what Pillow's exif_transpose does
# to pixels: 6 is ROTATE_270 counter-clockwise, i.e. 90 degrees clockwise).
_TRANSFORMS: Final[dict[int, tuple[str, ...]]] = {
    2: ("-flip", "horizontal"),
    3: ("-rotate", "180"),
    4: ("-flip", "vertical"),
    5: ("-transpose",),
    6: ("-rotate", "90"),
    7: ("-transverse",),
    8: ("-rotate", "270"),
}
# Which partial edge MCUs each transform would have to move (libjpeg-turbo's
# jtransform_perfect_transform): (width must be whole MCUs, height must be whole MCUs).
_NEEDS_WHOLE_MCUS: Final[dict[int, tuple[bool, bool]]] = {
    2: (True, False),
    3: (True, True),
    4: (False, True),
    5: (False, False),
    6: (False, True),
    7: (True, True),
    8: (True, False),
}
# -perfect: fail rather than leave edge blocks untransformed; -strict: a warning (corrupt
# entropy data, a premature end) is an error, as in the strict decode of the unrotated path;
# -copy none: no APPn/COM survives. No -optimize: fitting Huffman tables to the image saves
# 4-12% of the bytes but made the rotation cost 1.7x a decode + re-encode (bench/orientation.py).
_FIXED_ARGS: Final = ("-perfect", "-strict", "-copy", "none")
_CHUNK: Final = 1 << 16

_missing_logged = False


def can_orient_losslessly(orientation: int, width: int, height: int, mcu: tuple[int, int]) -> bool:
    """Whether jpegtran can undo `orientation` exactly on a width x height image of `mcu` MCUs.

    The same rule as `-perfect` applies, checked here first so that an image it would refuse
    costs no process. A transpose moves no edge block, so orientation 5 always qualifies.
    """
    if orientation not in _TRANSFORMS or jpegtran_path() is None:
        return False
    whole_width, whole_height = _NEEDS_WHOLE_MCUS[orientation]
    return not (whole_width and width % mcu[0]) and not (whole_height and height % mcu[1])


def orient_losslessly(
    jpeg: bytes, orientation: int, *, timeout_s: float, max_output: int
) -> bytes | None:
    """`jpeg` turned upright by jpegtran, or None when that cannot be done losslessly.

    None: jpegtran is missing, refuses (-perfect, -strict, a stream it cannot read), runs past
    `timeout_s`, or writes more than `max_output` bytes. `jpeg` must already have passed
    `jpeg_markers.strip_jpeg`: jpegtran never sees a byte the marker checks did not accept.
    The output carries a JFIF segment of jpegtran's own; the caller strips it again.
    """
    program = jpegtran_path()
    if program is None or orientation not in _TRANSFORMS:
        return None
    return _run_bounded(
        (program, *_FIXED_ARGS, *_TRANSFORMS[orientation]), jpeg, timeout_s, max_output
    )


def jpegtran_path() -> str | None:
    """The jpegtran on PATH (looked up again whenever PATH changes), logging once if missing."""
    global _missing_logged
    found = _which_jpegtran(os.environ.get("PATH", os.defpath))
    if found is None and not _missing_logged:
        _missing_logged = True
        log.warning(
            "jpegtran is not on PATH: EXIF-rotated JPEGs are decoded and re-encoded instead of "
            "rotated losslessly; install the Debian package libjpeg-turbo-progs "
            "(bash .ci/system-deps) to keep their original quality"
        )
    return found


@lru_cache(maxsize=4)
def _which_jpegtran(path: str) -> str | None:
    return shutil.which("jpegtran", path=path)


def _run_bounded(
    command: tuple[str, ...], data: bytes, timeout_s: float, max_output: int
) -> bytes | None:
    """stdout of `command` fed `data` on stdin; None on failure, timeout or too much output.

    Feeds stdin and drains stdout together, so neither side can block the other whatever the
    program does, and stops reading (and kills it) at the cap instead of buffering whatever it
    writes. stderr goes nowhere: the exit status is all the caller acts on.
    """
    try:
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
    except OSError:
        return None
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    view = memoryview(data)
    written = 0
    chunks: list[bytes] = []
    size = 0
    try:
        stdin_fd, stdout_fd = proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(stdin_fd, False)
        with selectors.DefaultSelector() as selector:
            selector.register(stdin_fd, selectors.EVENT_WRITE)
            selector.register(stdout_fd, selectors.EVENT_READ)
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                for key, _ in selector.select(left):
                    if key.fd == stdin_fd:
                        try:
                            written += os.write(stdin_fd, view[written : written + _CHUNK])
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            written = len(data)  # it stopped reading: its exit status says why
                        if written >= len(data):
                            selector.unregister(stdin_fd)
                            proc.stdin.close()
                    else:
                        chunk = os.read(stdout_fd, _CHUNK)
                        if not chunk:
                            selector.unregister(stdout_fd)
                            continue
                        size += len(chunk)
                        if size > max_output:
                            return None
                        chunks.append(chunk)
        status = proc.wait(timeout=max(deadline - time.monotonic(), 0.001))
    except subprocess.TimeoutExpired:
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            pipe.close()
    # jpegtran exits 2 after a warning even without -strict; only a clean 0 is taken.
    return b"".join(chunks) if status == 0 else None
