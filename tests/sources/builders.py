"""Builders of real-shaped inputs: Wukong CSVs, LAION Parquet, TaiSu archives and captions."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

from PIL import Image


def jpeg(seed: int = 0, size: int = 16, noise: bool = False) -> bytes:
    """A small real JPEG; `noise` makes it incompressible so archive offsets are predictable."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    if noise:
        img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size * size)])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes | None]], mode: str = "w:gz") -> Path:
    """Members as (name, bytes); bytes None makes a directory entry."""
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_650_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path
