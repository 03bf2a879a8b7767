"""Helpers shared by the storage tests and their fixtures."""

from __future__ import annotations

import asyncio
import socket
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def read_http_request(reader: asyncio.StreamReader) -> bytes:
    """One whole HTTP/1.1 request (head and Content-Length body), for the raw test servers."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return head + await reader.readexactly(length)
