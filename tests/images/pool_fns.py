"""Decoder stand-ins for the pool tests. They live in the test suite, not in the package: the
pool takes its worker function as a parameter, so production code carries no test hooks.

Module-level so that spawned workers can import them by name.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import signal
import time

from taisu_etl.images import ImageConfig, ImageRejection, NormalisedImage, normalise_image

CRASH = b"CRASH"
HANG = b"HANG"
RAISE = b"RAISE"


def crash_or_hang(data: bytes, config: ImageConfig) -> NormalisedImage | ImageRejection:
    """normalise_image, except that some magic payloads segfault or never return."""
    if data.startswith(CRASH):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the checkout
        os.kill(os.getpid(), signal.SIGSEGV)
    if data.startswith(HANG):
        time.sleep(3600)
    if data.startswith(RAISE):
        raise RuntimeError("decoder bug")
    return normalise_image(data, config)


def exit_at_start() -> None:
    """An initializer standing for a worker that cannot start (broken install, no memory)."""
    os._exit(3)


def big_answer(data: bytes, config: ImageConfig) -> NormalisedImage | ImageRejection:
    """normalise_image with 1 MiB of padding on the JPEG: an answer far larger than a socket
    buffer, so the worker writes it in several goes and the pool reads it while it is written."""
    result = normalise_image(data, config)
    if isinstance(result, NormalisedImage):
        return dataclasses.replace(result, jpeg=result.jpeg + bytes(1 << 20))
    return result
