"""Image decoding, checks and deduplication: the pure part of the image stage (no I/O).

    from taisu_etl.images import DecodePool, ImageConfig, check_dimensions, normalise_image
    config = ImageConfig(resize_longest=1024)
    result = normalise_image(data, config)          # NormalisedImage | ImageRejection
    with DecodePool(config) as pool:                # the same, isolated in worker processes
        results = pool.map(datas)
    check_dimensions(result.source_width, result.source_height, config)  # ImageRejection | None
"""

from taisu_etl.images.checks import check_dimensions
from taisu_etl.images.config import ALL_FORMATS, ImageConfig, ImageFormat
from taisu_etl.images.decode import normalise_image, perceptual_hash, sniff, warm_up
from taisu_etl.images.dedup import (
    DuplicateIndex,
    DuplicateMatch,
    NearDuplicateIndex,
    hamming,
    phash_bands,
)
from taisu_etl.images.pool import DecodeFn, DecodePool, DecodeResult, PoolStats, default_workers
from taisu_etl.images.results import ImageRejection, NormalisedImage

__all__ = [
    "ALL_FORMATS",
    "DecodeFn",
    "DecodePool",
    "DecodeResult",
    "DuplicateIndex",
    "DuplicateMatch",
    "ImageConfig",
    "ImageFormat",
    "ImageRejection",
    "NearDuplicateIndex",
    "NormalisedImage",
    "PoolStats",
    "check_dimensions",
    "default_workers",
    "hamming",
    "normalise_image",
    "perceptual_hash",
    "phash_bands",
    "sniff",
    "warm_up",
]
