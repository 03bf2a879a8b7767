"""Object storage: one interface, a local directory or an S3-compatible server behind it."""

from taisu_etl.storage.base import ObjectInfo, ObjectStore, PutResult, image_key, validate_key
from taisu_etl.storage.local import LocalObjectStore
from taisu_etl.storage.s3 import S3ObjectStore

__all__ = [
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "PutResult",
    "S3ObjectStore",
    "image_key",
    "validate_key",
]
