"""What decoding returns: a normalised image, or a reason-coded rejection."""

from __future__ import annotations

from dataclasses import dataclass

from taisu_etl.images.config import ImageFormat
from taisu_etl.vocab import check_reason


@dataclass(frozen=True, slots=True)
class NormalisedImage:
    """A decoded, re-encoded image ready to store under `sha256`."""

    jpeg: bytes  # the bytes to store
    width: int  # of `jpeg`, after orientation and resize
    height: int
    source_format: ImageFormat  # from the signature, not from the URL or Content-Type
    source_width: int  # of the first frame after EXIF orientation, before resize
    source_height: int
    sha256: str  # hex digest of `jpeg`: the object key
    phash: str  # 16 hex digits, see `perceptual_hash`
    orig_bytes: int  # size of the input as fetched

    def __reduce__(self) -> tuple[type[NormalisedImage], tuple[object, ...]]:
        # Results cross a process boundary per image; the generic state protocol of frozen slots
        # dataclasses calls dataclasses.fields() on every load, which cost more than a small
        # image's whole IPC. Rebuilding through the constructor is several times cheaper.
        return (
            NormalisedImage,
            (
                self.jpeg,
                self.width,
                self.height,
                self.source_format,
                self.source_width,
                self.source_height,
                self.sha256,
                self.phash,
                self.orig_bytes,
            ),
        )


@dataclass(frozen=True, slots=True)
class ImageRejection:
    """Why an image was refused: a reason code from `taisu_etl.vocab` and a short detail."""

    reason: str
    detail: str

    def __post_init__(self) -> None:
        check_reason(self.reason)

    def __reduce__(self) -> tuple[type[ImageRejection], tuple[str, str]]:
        return (ImageRejection, (self.reason, self.detail))
