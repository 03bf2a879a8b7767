"""Where settings meet implementations: the ledger and the object store a command or task uses."""

from __future__ import annotations

from taisu_etl.config import Settings
from taisu_etl.db.ledger import Ledger
from taisu_etl.errors import ConfigError
from taisu_etl.storage import LocalObjectStore, ObjectStore, S3ObjectStore


def open_ledger(settings: Settings, *, require_schema: bool = True) -> Ledger:
    return Ledger.open(
        settings.ledger_url,
        shards=settings.pipeline.shards,
        recipe_version=settings.recipe_version,
        require_schema=require_schema,
        retry_seconds=settings.pipeline.db_retry_seconds,
    )


def open_store(settings: Settings, *, create_bucket: bool | None = None) -> ObjectStore:
    if settings.store == "local":
        return LocalObjectStore(settings.objects_root)
    if not settings.s3_access_key or settings.s3_secret_key is None:
        raise ConfigError("store = 's3' needs TAISU_S3_ACCESS_KEY and TAISU_S3_SECRET_KEY")
    assert settings.s3_endpoint is not None  # Settings validates this
    make = settings.s3_create_bucket if create_bucket is None else create_bucket
    return S3ObjectStore(
        settings.s3_endpoint,
        settings.s3_access_key,
        settings.s3_secret_key.get_secret_value(),
        settings.s3_bucket,
        region=settings.s3_region,
        create_bucket=make,
        versioning=make,
    )
