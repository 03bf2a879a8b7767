"""Many uploads at once from an event loop: what the fetch stage stores its images through.

`ObjectStore.uploader(concurrency)` returns one of these as an async context manager. This base
class runs the store's own blocking `put` in a thread pool, which suits the local directory (a
file write is quick and releases the GIL). `S3Uploader` overrides `put` to send the PUT on the
event loop itself, since a thread per upload costs more CPU than the upload does.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING

from taisu_etl.storage.base import ObjectInfo, PutResult, image_key

if TYPE_CHECKING:
    from taisu_etl.storage.base import ObjectStore


class Uploader:
    """Up to `concurrency` uploads to `store` in flight; use as `async with store.uploader(n) as up`."""

    def __init__(self, store: ObjectStore, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.store = store
        self.concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> Uploader:
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="store-put")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        """Store `data` under `key`, replacing it."""
        return await self._put(key, data, content_type, None)

    async def _put(self, key: str, data: bytes, content_type: str | None, sha256: str | None) -> ObjectInfo:
        """`put`, told the data's sha256 when the caller has it already (an S3 PUT signs it)."""
        if self._pool is None:
            raise RuntimeError("use the uploader inside `async with`")
        call = functools.partial(self.store.put, key, data, content_type)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def put_image(self, data: bytes, ext: str = "jpg", content_type: str | None = None) -> PutResult:
        """Store image bytes under their sha256 without asking first whether they are there.

        The same contract as `ObjectStore.put_image(..., check_existing=False)`: for a caller
        that knows the key is new, or does not mind rewriting equal bytes.
        """
        digest = hashlib.sha256(data).hexdigest()
        key = image_key(digest, ext)
        await self._put(key, data, content_type, digest)
        return PutResult(key=key, sha256=digest, size=len(data), created=True)
