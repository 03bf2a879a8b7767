"""Helpers shared by the storage tests and their fixtures."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from minio import Minio


@dataclass(frozen=True)
class S3Server:
    """The S3-compatible server the tests talk to."""

    endpoint: str  # http://host:port
    access_key: str
    secret_key: str
    is_moto: bool

    def raw_client(self) -> Minio:
        """A bare minio client, for checking what the store did behind its interface."""
        scheme, host = self.endpoint.split("://", 1)
        return Minio(host, self.access_key, self.secret_key, secure=scheme == "https")


def fresh_bucket_name() -> str:
    return f"taisu-test-{uuid.uuid4().hex[:16]}"
