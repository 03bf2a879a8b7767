"""check_dimensions and ImageConfig: Wukong's size rules at their exact boundaries."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from taisu_etl.images import ImageConfig, check_dimensions


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [
        (200, 200, None),
        (199, 400, "too_small"),
        (400, 199, "too_small"),
        (199, 199, "too_small"),
        (1, 1, "too_small"),
        (200, 600, None),  # ratio exactly 3.0
        (600, 200, None),
        (200, 601, "bad_aspect"),  # 3.005
        (300, 900, None),  # 3.0
        (300, 903, "bad_aspect"),  # 3.01
        (903, 300, "bad_aspect"),
        (150, 1000, "too_small"),  # both fail: the side is named
        (4000, 3000, None),
    ],
)
def test_default_boundaries(width: int, height: int, reason: str | None) -> None:
    result = check_dimensions(width, height, ImageConfig())
    assert (result.reason if result else None) == reason
    if result:
        assert f"{width}x{height}" in result.detail


def test_configured_limits() -> None:
    config = ImageConfig(min_side=64, max_aspect=1.5)
    assert check_dimensions(64, 96, config) is None
    assert check_dimensions(63, 63, config).reason == "too_small"  # type: ignore[union-attr]
    assert check_dimensions(64, 97, config).reason == "bad_aspect"  # type: ignore[union-attr]


def test_defaults_are_the_documented_ones() -> None:
    c = ImageConfig()
    assert (c.min_side, c.max_aspect, c.max_pixels, c.phash_distance) == (200, 3.0, 50_000_000, 4)
    assert (c.resize_longest, c.jpeg_quality, c.decode_timeout_s, c.color_manage) == (None, 90, 10.0, True)
    assert c.allowed_formats == ("jpeg", "png", "webp", "gif")


@pytest.mark.parametrize(
    "bad",
    [
        {"allowed_formats": ()},
        {"allowed_formats": ("jpeg", "jpeg")},
        {"allowed_formats": ("jpeg", "bmp")},
        {"max_aspect": 0.5},
        {"min_side": 0},
        {"max_pixels": 0},
        {"jpeg_quality": 100},
        {"resize_longest": 100},  # below min_side
        {"decode_timeout_s": 0},
        {"phash_distance": 64},
        {"unknown": 1},
    ],
)
def test_invalid_configs(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ImageConfig(**bad)  # type: ignore[arg-type]


def test_config_is_frozen_and_reads_a_recipe_table() -> None:
    import tomllib

    table = tomllib.loads(
        """
        [image]
        max_pixels = 40_000_000
        resize_longest = 1024
        allowed_formats = ["jpeg", "png"]
        """
    )["image"]
    config = ImageConfig.model_validate(table)
    assert config.allowed_formats == ("jpeg", "png") and config.resize_longest == 1024
    with pytest.raises(ValidationError):
        config.min_side = 1  # type: ignore[misc]
