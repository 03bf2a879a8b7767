"""Stored images to model-ready tensors, decoded ahead of the model so that it never waits.

Reading from the object store is I/O: threads. Decoding and preprocessing is CPU: worker
processes (forked from a clean fork server, so no inherited database connections or locks, and
never re-running the caller's main script: see `taisu_etl.images._launch`), each handed a whole batch
so that the per-task overhead is paid once per batch. Up to `prefetch` batches are in flight
while the caller runs the model on the current one.

A worker ends itself when the process that owns the pool is gone. A `ProcessPoolExecutor` worker
holds both ends of its call queue, so it never sees the owner's death: after a SIGKILL of a
score or caption command (an OOM kill, a task killed on timeout) the worker, with torch loaded,
and through it the fork server and the resource tracker, would wait forever. The owner is not
the worker's parent (the fork server is), so this is a watch on the owner's pid and start time.
"""

from __future__ import annotations

import io
import os
import pickle
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from taisu_etl.images._launch import worker_context
from taisu_etl.procfs import start_ticks
from taisu_etl.storage import ObjectStore

Preprocess = Callable[[Image.Image], Any]

_READ_THREADS = 16
_OWNER_CHECK_S = 1.0  # how soon a worker notices that the pool's owner is gone


@dataclass
class ImageBatch:
    """One batch: the rows whose image decoded, one array per preprocess, and the rows that failed."""

    rows: list[dict[str, Any]]
    pixels: list[np.ndarray]
    failed: list[tuple[dict[str, Any], str]]


_PREPROCESSES: Sequence[Preprocess] = ()
_DRAFT: int | None = None


def _exit_when_gone(owner: int, ticks: int | None) -> None:
    """A daemon thread that ends this worker once process `owner` (started at `ticks`) is gone,
    a zombie, or its pid belongs to another process."""
    if ticks is None:  # no /proc to tell: nothing to watch
        return

    def watch() -> None:
        while start_ticks(owner) == ticks:
            time.sleep(_OWNER_CHECK_S)
        os._exit(0)  # nothing of the owner's is left to hand results to

    threading.Thread(target=watch, name="taisu-owner-watch", daemon=True).start()


def _init_worker(pickled_preprocesses: bytes, draft: int | None, owner: int = 0, owner_ticks: int | None = None) -> None:
    global _PREPROCESSES, _DRAFT
    _exit_when_gone(owner, owner_ticks)
    _DRAFT = draft
    # The transforms are unpickled only after the torchvision shim is in place: on a CPU-only
    # torch, importing torchvision (which unpickling a transform does) fails without it.
    import pickle

    import taisu_etl.models._torchvision_shim  # noqa: F401

    _PREPROCESSES = pickle.loads(pickled_preprocesses)
    try:
        import torch

        torch.set_num_threads(1)  # the model's process owns the cores; a worker is one of them
    except ImportError:  # pragma: no cover - preprocess without torch
        pass


def _prepare(
    datas: Sequence[bytes | None], preprocesses: Sequence[Preprocess] | None = None, draft: int | None = None,
) -> tuple[list[np.ndarray], list[int], list[tuple[int, str]]]:
    """Decode and preprocess one batch: (arrays per preprocess, indices kept, (index, why) failed)."""
    if preprocesses is None:
        preprocesses, draft = _PREPROCESSES, _DRAFT
    outs: list[list[np.ndarray]] = [[] for _ in preprocesses]
    kept: list[int] = []
    failed: list[tuple[int, str]] = []
    for i, data in enumerate(datas):
        if data is None:
            failed.append((i, "object missing from the store"))
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:
                if draft:
                    # JPEG DCT scaling: decode at 1/2, 1/4 or 1/8 size, never below what the model
                    # needs. A 64-px model reads a 256-px JPEG four times faster this way.
                    im.draft("RGB", (draft, draft))
                im = im.convert("RGB")
                arrays = [np.asarray(p(im), dtype=np.float32) for p in preprocesses]
        except Exception as exc:  # a stored image that does not decode costs that sample only
            failed.append((i, f"{type(exc).__name__}: {exc}"[:200]))
            continue
        for out, arr in zip(outs, arrays):
            out.append(arr)
        kept.append(i)
    return [np.stack(o) if o else np.zeros((0,), np.float32) for o in outs], kept, failed


class ImageBatches:
    """Iterate `rows` (each with an `object_key`) as decoded, preprocessed batches, in order."""

    def __init__(
        self, store: ObjectStore, preprocesses: Sequence[Preprocess], *, batch_size: int, workers: int, prefetch: int = 4,
        draft: int | None = None,
    ) -> None:
        """`draft`: the largest input side of the models fed; JPEGs are decoded at no less than it."""
        self.store = store
        self.draft = draft
        self.preprocesses = list(preprocesses)
        self.batch_size = batch_size
        self.prefetch = max(1, prefetch)
        self._reader = ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="taisu-read")
        self._dispatch = ThreadPoolExecutor(self.prefetch, thread_name_prefix="taisu-batch")
        self._pool: ProcessPoolExecutor | None = None
        if workers > 0:
            owner = os.getpid()
            self._pool = ProcessPoolExecutor(
                workers, mp_context=worker_context(), initializer=_init_worker,
                initargs=(pickle.dumps(self.preprocesses), draft, owner, start_ticks(owner)),
            )

    def __enter__(self) -> "ImageBatches":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._dispatch.shutdown(wait=True, cancel_futures=True)
        self._reader.shutdown(wait=True, cancel_futures=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _read(self, key: str | None) -> bytes | None:
        if not key:
            return None
        try:
            return self.store.get(key)
        except Exception:  # reported per sample by _prepare as missing
            return None

    def _load(self, rows: list[dict[str, Any]]) -> tuple[list[np.ndarray], list[int], list[tuple[int, str]]]:
        datas = list(self._reader.map(self._read, (r.get("object_key") for r in rows)))
        if self._pool is None:
            return _prepare(datas, self.preprocesses, self.draft)
        return self._pool.submit(_prepare, datas).result()

    def _submit(self, rows: list[dict[str, Any]]) -> Future:
        # Reading and handing over run on a dispatcher thread, so the caller's model loop only
        # ever waits for a batch that is genuinely not ready yet.
        return self._dispatch.submit(self._load, rows)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> Iterator[ImageBatch]:
        chunks = [list(rows[i:i + self.batch_size]) for i in range(0, len(rows), self.batch_size)]
        pending: deque[tuple[list[dict[str, Any]], Future]] = deque()
        nxt = 0
        while nxt < len(chunks) or pending:
            while nxt < len(chunks) and len(pending) < self.prefetch:
                pending.append((chunks[nxt], self._submit(chunks[nxt])))
                nxt += 1
            batch_rows, future = pending.popleft()
            arrays, kept, failed = future.result()
            yield ImageBatch(
                rows=[batch_rows[i] for i in kept],
                pixels=arrays,
                failed=[(batch_rows[i], why) for i, why in failed],
            )
