"""Size checks of an image, as Wukong applied them: shortest side and aspect ratio.

They judge the source image (first frame, after EXIF orientation), not the stored copy: a resize
is a storage decision of the recipe and must not turn a 1200x400 photo into a rejection, and the
source is what Wukong measured. Both checks are symmetric in width and height.
"""

from __future__ import annotations

from taisu_etl.images.config import ImageConfig
from taisu_etl.images.results import ImageRejection


def check_dimensions(width: int, height: int, config: ImageConfig) -> ImageRejection | None:
    """too_small if the shorter side is below `min_side`; bad_aspect if long/short > `max_aspect`."""
    short, long = min(width, height), max(width, height)
    if short < config.min_side:
        return ImageRejection("too_small", f"{width}x{height}: shorter side below {config.min_side}")
    # Compare by multiplication: exact for integers and the ratio boundary (3.0 passes).
    if long > config.max_aspect * short:
        return ImageRejection(
            "bad_aspect", f"{width}x{height}: aspect {long / short:.2f} above {config.max_aspect:g}"
        )
    return None
