"""A synthetic web: meaningful image-caption pairs and a hostile local HTTP server.

    make_pairs(n, seed, mismatch_rate, split) -> [Pair]   coloured shapes with Chinese captions
    SyntheticWeb(pairs, ...)                              serves them on 127.0.0.1 (context manager)
    HOSTILE_CASES                                         the hostile routes and their expected outcome

`python -m taisu_etl.synthweb --pairs 200 --out DIR` writes a URL list and its manifest and
serves until Ctrl-C.
"""

from taisu_etl.synthweb.scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    CaptionFacts,
    Pair,
    Scene,
    caption,
    caption_matches,
    encode_jpeg,
    make_pairs,
    parse_caption,
    random_scene,
    render,
    render_jpegs,
)
from taisu_etl.synthweb.server import (
    DEFAULT_ROBOTS,
    HOST,
    HOSTILE_CASES,
    PRIVATE_TARGETS,
    HostileCase,
    RequestRecord,
    SyntheticWeb,
    UrlList,
    read_manifest,
)

__all__ = [
    "COLOURS",
    "DEFAULT_ROBOTS",
    "HOST",
    "HOSTILE_CASES",
    "POSITIONS",
    "PRIVATE_TARGETS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "CaptionFacts",
    "HostileCase",
    "Pair",
    "RequestRecord",
    "Scene",
    "SyntheticWeb",
    "UrlList",
    "caption",
    "caption_matches",
    "encode_jpeg",
    "make_pairs",
    "parse_caption",
    "random_scene",
    "read_manifest",
    "render",
    "render_jpegs",
]
