"""Overlap ledger writes with the Python work that prepares the next batch.

The database driver releases the GIL while a statement runs, so one writer thread lets parsing
(or caption rules) of batch k+1 proceed while batch k is written. At most one write is in flight
and one batch waits, so memory stays bounded; the first error stops everything and is re-raised.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class BackgroundWriter:
    """Runs write calls one at a time on a single thread, in submission order."""

    def __init__(self, on_result: Callable[[Any], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._pending: Future[Any] | None = None
        self._on_result = on_result

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> None:
        """Wait for the previous write (re-raising its error), then start this one."""
        self._drain()
        self._pending = self._pool.submit(fn, *args, **kwargs)

    def _drain(self) -> None:
        if self._pending is not None:
            result = self._pending.result()
            self._pending = None
            if self._on_result is not None:
                self._on_result(result)

    def close(self) -> None:
        """Wait for the last write; re-raise its error."""
        try:
            self._drain()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            self.close()
        else:  # the caller failed: let the write in flight finish, but report the caller's error
            self._pool.shutdown(wait=True)
