"""Decode images in worker processes, so a decoder that crashes or hangs costs one sample.

Pillow's decoders are C code fed with untrusted bytes. A segfault, an abort or an endless loop
in one of them must not take the fetch worker down, so `normalise_image` runs in child
processes that the pool owns one by one (not a `ProcessPoolExecutor`, which can neither say
which task broke it nor stop one task that hangs):

- each worker gets a short chunk of images over its own pipe and answers the whole chunk in one
  message (one wake-up of the pool per chunk, not per image; the S3 PUTs that follow leave in
  bursts too); a next chunk of up to 64 KB (small images) already waits in its pipe while it
  decodes one (`chunks_per_worker`, default 2), so it does not idle while its answer is read;
- each chunk has a deadline of `timeout_s`; past it the worker is killed and replaced;
- a chunk whose worker dies or passes its deadline goes back to the front of the queue image
  by image, each alone in a chunk of its own, so the image that crashes or hangs a worker on
  its own is the one blamed (`ImageRejection("decode_error", "decoder crashed ...")` or
  `"decoder timed out ..."`) and the others are decoded again: a bad image costs its own
  sample, one extra worker start, and a re-decode of the few images that shared its chunk;
- a worker is also replaced after `max_tasks_per_worker` images, which bounds what a slow leak
  or heap fragmentation from large images can cost.

Only bytes travel to a worker and only the result travels back. By default a dispatcher thread
does all the bookkeeping, so `submit` can be called from any thread and awaited from asyncio.
Given an event loop (`DecodePool(..., loop=asyncio.get_running_loop())`), the pool runs on that
loop instead: the loop's own selector reads the workers' pipes (never blocking on an answer that
is still arriving: see `_Inbox`) and results resolve asyncio futures directly. Same isolation, same chunks, same deadlines; what goes is the hand-off between
the thread and the loop (a wake-up byte per submit batch, a `call_soon_threadsafe` per result,
and both threads taking turns at the GIL). Measured in the fetch stage's shape (64 awaiting
coroutines, 2 workers, 4,000 256x256 JPEGs, three rounds each way: `python bench/decode_pool.py`),
the calling process spent 0.070-0.074 ms of CPU per image with the thread and 0.039-0.040 ms on
the loop, the awaiting coroutines' own cost included, and the pool decoded 15% more images/s.
(Before workers answered a chunk at once: 0.145-0.150 and 0.091-0.093 ms, 18% more images/s.)
"""

from __future__ import annotations

import asyncio
import os
import pickle
import selectors
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, Final, TypeAlias

from taisu_etl.images._launch import process_factory
from taisu_etl.images.config import ImageConfig
from taisu_etl.images.decode import normalise_image, warm_up
from taisu_etl.images.results import ImageRejection, NormalisedImage

DecodeResult: TypeAlias = NormalisedImage | ImageRejection
DecodeFn: TypeAlias = Callable[[bytes, ImageConfig], DecodeResult]

# A chunk queued behind the one a worker decodes is sent only when it fits in the socket's buffer
# (Linux's default is ~208 KB) without the worker reading it: the send blocks this process, and a
# worker writing a large answer meanwhile waits for this process to read it. 1.7 MB of photos
# queued that way deadlocked both. Photos go one chunk at a time; each already takes tens of ms.
_QUEUED_CHUNK_BYTES: Final = 64 << 10

# Workers that die before saying "ready" this many times in a row mean a broken environment
# (an import error, no memory), not a bad image; the pool stops instead of respawning forever.
_MAX_STARTUP_FAILURES: Final = 3
_READY: Final = "ready"


@dataclass
class _Task:
    data: bytes
    future: Future[DecodeResult] | asyncio.Future[DecodeResult]
    suspect: bool = False  # was in a chunk whose worker died or hung: goes alone next time


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    inflight: deque[_Task] = field(default_factory=deque)  # the chunks sent and not yet answered, in order
    chunks: deque[int] = field(default_factory=deque)  # their sizes: the head one is being decoded
    head_started: float = 0.0  # monotonic time the head chunk started (was sent, or its forerunner answered)
    done: int = 0
    inbox: _Inbox | None = None  # loop mode: reads the worker's answers without blocking


class _Inbox:
    """The parent's end of a worker's pipe, read without ever blocking the event loop.

    `Connection.recv` blocks until a whole message is in, and a chunk's answer (pickled images,
    tens of KB for small JPEGs, megabytes for photos) arrives in several writes as the worker
    fills the socket buffer. Read that way, the fetch stage's loop sat in `read` waiting for a
    worker to be scheduled again: 1.1 s of a 6.4 s run against nginx on two busy cores (1,932
    reads, 0.56 ms each), with 64 requests and the other decode worker waiting on the loop. Here
    the loop takes what the socket holds (MSG_DONTWAIT on a duplicate of the descriptor, whose
    blocking mode `send` still needs), keeps the partial message, and unpickles whole ones; the
    framing is `multiprocessing.connection`'s (a 4-byte big-endian length, or -1 and 8 bytes).
    """

    __slots__ = ("_sock", "_head", "_body", "_view", "_got")

    def __init__(self, conn: Connection) -> None:
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._head = b""  # the length prefix read so far
        self._body: bytearray | None = None  # the message being read, allocated at its full size
        self._view: memoryview | None = None
        self._got = 0

    def messages(self) -> list[Any]:
        """Every whole message readable now; raises EOFError once the worker's end is closed
        and nothing whole is left. The body is read straight into a buffer of its own size
        (`recv(1 MB)` allocated and shrank a megabyte per call: 0.47 ms each)."""
        out: list[Any] = []
        try:
            while True:
                if self._body is None:
                    need = (4 if len(self._head) < 4 else 12) - len(self._head)
                    data = self._sock.recv(need, socket.MSG_DONTWAIT)
                    if not data:
                        break
                    self._head += data
                    if len(self._head) == 4:
                        (size,) = struct.unpack("!i", self._head)
                        if size == -1:
                            continue  # an 8-byte length follows
                    elif len(self._head) == 12:
                        (size,) = struct.unpack("!Q", self._head[4:])
                    else:
                        continue
                    self._body = bytearray(size)
                    self._view = memoryview(self._body)
                    self._got = 0
                assert self._view is not None
                if self._got < len(self._body):
                    n = self._sock.recv_into(self._view[self._got:], 0, socket.MSG_DONTWAIT)
                    if n == 0:
                        break
                    self._got += n
                if self._got == len(self._body):
                    self._view.release()
                    out.append(ForkingPickler.loads(self._body))
                    self._head, self._body, self._view, self._got = b"", None, None, 0
            # only an end of file leaves the loop here
            if not out:
                raise EOFError
        except (BlockingIOError, InterruptedError):
            pass
        return out

    def close(self) -> None:
        self._sock.close()


@dataclass
class PoolStats:
    """Counters for reports: how often isolation was needed."""

    completed: int = 0
    crashed: int = 0
    timed_out: int = 0
    retried: int = 0  # images sent again, alone, because their chunk's worker died or hung
    workers_started: int = 0


def default_workers() -> int:
    """CPUs this process may run on (not the machine's count, which is wrong in containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class DecodePool:
    """Run `fn(data, config)` (default `normalise_image`) in isolated worker processes.

        with DecodePool(config) as pool:
            results = pool.map(list_of_bytes)          # in order, one result per input
            result = await pool.decode(data)           # from asyncio
            future = pool.submit(data)                 # concurrent.futures.Future

    A result is always a `NormalisedImage` or an `ImageRejection`; a crashed or hung decoder
    becomes `ImageRejection("decode_error", ...)` for that one input. `fn` must be picklable
    (a module-level function): the workers import it by name.
    """

    def __init__(
        self,
        config: ImageConfig | None = None,
        *,
        workers: int | None = None,
        fn: DecodeFn = normalise_image,
        timeout_s: float | None = None,
        chunk_size: int = 8,
        chunk_bytes: int = 8 << 20,
        max_tasks_per_worker: int | None = 10_000,
        chunks_per_worker: int = 2,
        initializer: Callable[[], Any] | None = warm_up,
        mp_context: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if chunks_per_worker < 1:
            raise ValueError("chunks_per_worker must be at least 1")
        self.config = config or ImageConfig()
        self.workers = workers or default_workers()
        self.timeout_s = timeout_s if timeout_s is not None else self.config.decode_timeout_s
        self.stats = PoolStats()
        self._fn = fn
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes
        self._max_tasks = max_tasks_per_worker
        self._depth = chunks_per_worker
        self._initializer = initializer
        # Workers come from a fork server (see `_launch`): a clean single-threaded process that
        # imported the decode stack once and forks each worker in milliseconds. Plain fork would
        # copy the caller's threads' locks (aiohttp, the dispatcher itself) into the child, and
        # spawn costs a fresh interpreter per worker (Pillow, numpy, scipy: ~1 s of CPU) plus a
        # re-run of the caller's main script. `mp_context="spawn"` still gives that; there, a
        # script that builds a pool needs the `if __name__ == "__main__":` guard.
        self._ctx, self._process_cls = process_factory(mp_context, fn, initializer)

        self._loop = loop
        self._dispatch_soon = False  # loop mode: a _dispatch is scheduled for this loop turn
        self._timer: asyncio.TimerHandle | None = None  # loop mode: the next deadline check
        self._lock = threading.Lock()
        self._pending: deque[_Task] = deque()
        self._closing = False
        self._broken: str | None = None
        self._wake_sent = False  # a submit's wake-up byte is unread (guarded by _lock)
        if loop is None:  # the dispatcher thread's own wake-up socket and selector
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            # One selector for the pool's life: rebuilding a poll set per wait (what
            # multiprocessing.connection.wait does) cost more than decoding a small image.
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._workers: list[_Worker] = []
        self._startup_failures = 0
        for _ in range(self.workers):
            self._add_worker()
        self._thread: threading.Thread | None = None
        if loop is None:
            self._thread = threading.Thread(target=self._run, name="decode-pool", daemon=True)
            self._thread.start()

    # -- public API ---------------------------------------------------------------------------

    def submit(self, data: bytes) -> Future[DecodeResult]:
        """Queue one image; the future resolves to its result (never to a decoder exception)."""
        self._not_on_loop("submit")
        return self._submit_many([data])[0]  # type: ignore[return-value]

    def map(self, datas: Iterable[bytes], timeout: float | None = None) -> list[DecodeResult]:
        """Decode all inputs and return their results in input order.

        `timeout` bounds the whole call (TimeoutError); per-image limits are the pool's own.
        """
        self._not_on_loop("map")
        futures: list[Future[DecodeResult]] = self._submit_many(datas)  # type: ignore[assignment]
        if timeout is None:
            return [f.result() for f in futures]
        deadline = time.monotonic() + timeout
        return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]

    async def decode(self, data: bytes) -> DecodeResult:
        """`submit` for asyncio code: awaits without blocking the event loop."""
        if self._loop is None:
            return await asyncio.wrap_future(self.submit(data))
        return await self._submit_many([data])[0]

    def close(self, *, cancel_pending: bool = False) -> None:
        """Finish queued work (or cancel it) and stop the workers. Idempotent.

        On a loop the pool cannot wait for work from inside a synchronous call: whatever is
        still queued or in a worker then is cancelled (the fetch stage closes it only once every
        decode it started has been awaited).
        """
        if self._loop is not None:
            self._close_on_loop()
            return
        with self._lock:
            self._closing = True
            if cancel_pending:
                while self._pending:
                    self._pending.popleft().future.cancel()
        self._wake()
        if self._thread is not threading.current_thread():
            assert self._thread is not None
            self._thread.join()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel_pending=exc[0] is not None)

    # -- submission ---------------------------------------------------------------------------

    def _submit_many(self, datas: Iterable[bytes]) -> list[Future[DecodeResult] | asyncio.Future[DecodeResult]]:
        if self._loop is not None:
            return self._submit_on_loop(datas)
        tasks = [_Task(bytes(d), Future()) for d in datas]
        with self._lock:
            if self._closing:
                raise RuntimeError("DecodePool is closed")
            if self._broken:
                raise RuntimeError(self._broken)
            self._pending.extend(tasks)
            # One wake-up byte per dispatcher wake, not per image: while one is unread the
            # dispatcher will look at the queue anyway (it clears the flag before it does).
            wake = not self._wake_sent
            self._wake_sent = True
        if wake:
            self._wake()
        return [t.future for t in tasks]

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already a wake-up byte waiting, or closed

    def _not_on_loop(self, what: str) -> None:
        if self._loop is not None:
            raise RuntimeError(f"a DecodePool on an event loop has no {what}(): await decode() instead")

    # -- loop mode ----------------------------------------------------------------------------

    def _submit_on_loop(self, datas: Iterable[bytes]) -> list[asyncio.Future[DecodeResult]]:
        assert self._loop is not None
        if self._broken:  # checked first: a broken pool on a loop has closed itself too
            raise RuntimeError(self._broken)
        if self._closing:
            raise RuntimeError("DecodePool is closed")
        tasks = [_Task(bytes(d), self._loop.create_future()) for d in datas]
        with self._lock:
            self._pending.extend(tasks)
        # One dispatch per loop turn, so the submits of one turn can share a chunk.
        if not self._dispatch_soon:
            self._dispatch_soon = True
            self._loop.call_soon(self._on_loop_event, self._after_submits, None)
        return [t.future for t in tasks]  # type: ignore[misc]

    def _after_submits(self) -> None:
        self._dispatch_soon = False

    def _on_loop_event(self, handler: Callable[..., None], w: _Worker | None) -> None:
        """Run one event's bookkeeping on the loop, then hand out work and re-arm the deadline
        check: the loop-mode counterpart of one round of `_run`."""
        if w is not None and w not in self._workers:
            return  # replaced earlier in this same loop turn
        try:
            if w is None:
                handler()
            else:
                handler(w)
            self._dispatch()
            self._arm_timer()
        except _PoolBroken:
            self._close_on_loop()  # callers already have their error from _fail_everything
        except BaseException as exc:  # noqa: BLE001 - never leave callers waiting forever
            self._fail_everything(f"decode pool stopped: {type(exc).__name__}: {exc}")
            self._close_on_loop()

    def _arm_timer(self) -> None:
        """Schedule the next deadline check, unless one is scheduled (it re-arms when it runs:
        deadlines only move later, so an early check costs one look and nothing else)."""
        if self._timer is not None or self._loop is None:
            return
        deadlines = [w.head_started + self.timeout_s for w in self._workers if w.inflight]
        if deadlines:
            # loop.time() need not be time.monotonic() (uvloop's is not): convert the delay.
            when = self._loop.time() + max(0.0, min(deadlines) - time.monotonic())
            self._timer = self._loop.call_at(when, self._on_loop_event, self._on_timer, None)

    def _on_timer(self) -> None:
        self._timer = None
        self._check_deadlines()

    def _close_on_loop(self) -> None:
        if self._closing and not self._workers:
            return
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            tasks = list(self._pending)
            self._pending.clear()
        for w in self._workers:
            tasks.extend(w.inflight)
            w.inflight.clear()
            w.chunks.clear()
            if w.process.is_alive():
                w.process.kill()  # its chunk is cancelled: no need to wait for it
        for t in tasks:
            t.future.cancel()
        self._stop_workers()

    # -- dispatcher thread --------------------------------------------------------------------

    def _add_worker(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._process_cls(
            target=_worker_main,
            args=(child, self._fn, self.config, self._initializer),
            name="taisu-decode",
            daemon=True,
        )
        process.start()
        child.close()
        self.stats.workers_started += 1
        w = _Worker(process, parent)
        if self._loop is not None:
            w.inbox = _Inbox(parent)
            self._loop.add_reader(parent.fileno(), self._on_loop_event, self._receive, w)
            self._loop.add_reader(process.sentinel, self._on_loop_event, self._on_death, w)
            # uvloop (libuv's uv_poll_init) makes a watched descriptor non-blocking; `send` to
            # the worker must block (a chunk is written whole), and reads go through the inbox.
            os.set_blocking(parent.fileno(), True)
        else:
            self._selector.register(parent, selectors.EVENT_READ, ("conn", w))
            self._selector.register(process.sentinel, selectors.EVENT_READ, ("died", w))
        self._workers.append(w)

    def _remove_worker(self, w: _Worker) -> None:
        """Forget a worker, killing it if it still runs. Unregister before closing: a closed
        descriptor's number may be reused by the next pipe."""
        self._workers.remove(w)
        if self._loop is not None:
            self._loop.remove_reader(w.conn.fileno())
            self._loop.remove_reader(w.process.sentinel)
        else:
            self._selector.unregister(w.conn)
            self._selector.unregister(w.process.sentinel)
        w.conn.close()
        if w.inbox is not None:
            w.inbox.close()
        if w.process.is_alive():
            w.process.kill()
        w.process.join(timeout=5.0)

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing and not self._pending and not self._busy():
                        break
                self._dispatch()
                self._wait_once()
        except _PoolBroken:
            pass  # callers already have their error from _fail_everything
        except BaseException as exc:  # noqa: BLE001 - never leave callers waiting forever
            self._fail_everything(f"decode pool stopped: {type(exc).__name__}: {exc}")
        finally:
            self._stop_workers()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _busy(self) -> bool:
        return any(w.inflight for w in self._workers)

    def _dispatch(self) -> None:
        """Give each ready worker a chunk sized to spread the queue over all workers: first to the
        idle ones, then a next chunk to each busy one, up to `chunks_per_worker`.

        The next chunk waits in the worker's pipe while it decodes the one before, so it goes
        straight on instead of idling until this process reads its answer and sends more: on a
        busy event loop that round trip took milliseconds, and against nginx on two cores the
        two workers sat idle for 10-28% of the run with images queued for them. A worker
        decodes its chunks in order, so the one running when it dies or hangs is the head one:
        that chunk is blamed as before and the chunks behind it, never started, go back as they were.
        """
        for depth in range(self._depth):
            for w in list(self._workers):  # _replace swaps entries
                if not w.ready or len(w.chunks) != depth:
                    continue
                if depth and self._max_tasks is not None and w.done + len(w.inflight) >= self._max_tasks:
                    continue  # due to retire once its chunks are answered: nothing more for it
                size = 0
                first = len(w.inflight)
                most = self._chunk_bytes if depth == 0 else _QUEUED_CHUNK_BYTES
                with self._lock:
                    if not self._pending:
                        return
                    n = max(1, min(self._chunk_size, len(self._pending) // (2 * len(self._workers))))
                    # A task moves straight from the queue to the worker's in-flight list, so at
                    # every moment it is in one of the two and `_fail_everything` can find it.
                    while self._pending and len(w.inflight) - first < n and (len(w.inflight) == first or size < most):
                        if self._pending[0].suspect and w.inflight:
                            break  # a suspect goes alone, so that it alone answers for what happens
                        if depth and size + len(self._pending[0].data) > most:
                            break  # must fit the socket's buffer unread (see _QUEUED_CHUNK_BYTES)
                        task = self._pending.popleft()
                        if _start(task.future):
                            w.inflight.append(task)
                            size += len(task.data)
                            if task.suspect:
                                break
                new = [w.inflight[i] for i in range(first, len(w.inflight))]
                if not new:
                    continue
                if not w.chunks:
                    w.head_started = time.monotonic()
                w.chunks.append(len(new))
                try:
                    w.conn.send([t.data for t in new])
                except (OSError, ValueError):
                    # Died before reading this chunk: nothing of it was attempted, so nothing is its fault.
                    for _ in new:
                        w.inflight.pop()
                    w.chunks.pop()
                    self._requeue(new, retried=0)
                    if w.chunks:
                        self._on_death(w)  # the chunks before it: answered, or the head one blamed
                    else:
                        self._replace(w)

    def _wait_once(self) -> None:
        now = time.monotonic()
        deadlines = [w.head_started + self.timeout_s for w in self._workers if w.inflight]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._drain_wake()
                continue
            kind, w = key.data
            if w not in self._workers:
                continue  # replaced earlier in this same batch of events
            if kind == "conn":
                self._receive(w)
            else:
                self._on_death(w)
        self._check_deadlines()

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if w.inflight and now >= w.head_started + self.timeout_s:
                self._on_timeout(w)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        # Cleared after reading, never before: a submit that saw the flag set sent no byte of
        # its own, and its task is already queued for the `_dispatch` that follows this wait.
        # Cleared first, a byte sent in between would be read here and the flag left set with
        # nothing in the socket, so a later submit would wait for a wake-up that never comes.
        with self._lock:
            self._wake_sent = False

    def _receive(self, w: _Worker) -> None:
        # One message per wake-up: Connection.poll() builds a new selector per call, which
        # costs more than going round the loop to the pool's epoll. On a loop, whatever whole
        # messages the inbox holds (none yet when only part of an answer is in).
        try:
            messages = w.inbox.messages() if w.inbox is not None else [w.conn.recv()]
            for message in messages:
                if message == _READY:
                    w.ready = True
                    self._startup_failures = 0
                else:
                    self._complete(w, message)
        except (EOFError, OSError):
            self._on_death(w)
            return
        if (
            not w.inflight
            and self._max_tasks is not None
            and w.done >= self._max_tasks
            and not self._closing
        ):
            self._retire(w)

    def _complete(self, w: _Worker, results: list[DecodeResult]) -> None:
        """A worker's answer to its head chunk, in chunk order."""
        n = w.chunks[0] if w.chunks else 0
        if len(results) != n:
            raise RuntimeError(f"a decode worker answered {len(results)} results for a chunk of {n}")
        w.chunks.popleft()
        self._startup_failures = 0
        for result in results:
            _resolve(w.inflight.popleft().future, result)
        w.done += len(results)
        self.stats.completed += len(results)
        if w.chunks:
            w.head_started = time.monotonic()  # the next chunk was waiting in the pipe: it runs now

    def _on_death(self, w: _Worker) -> None:
        # An answer written before the worker died is still in the pipe: collect it first.
        try:
            if w.inbox is not None:
                for message in w.inbox.messages() if w.inflight else ():
                    if message == _READY:
                        w.ready = True
                        continue
                    self._complete(w, message)
            while w.inbox is None and w.inflight and w.conn.poll():
                message = w.conn.recv()
                if message == _READY:
                    w.ready = True
                    continue
                self._complete(w, message)
        except (EOFError, OSError):
            pass
        w.process.join(timeout=1.0)
        if w.inflight:
            self._blame_or_retry(w, f"decoder crashed ({_exit_text(w.process.exitcode)})", timed_out=False)
        elif not w.ready:
            self._startup_failures += 1
            if self._startup_failures >= _MAX_STARTUP_FAILURES:
                self._remove_worker(w)
                self._fail_everything(
                    f"decode workers die at start-up ({_exit_text(w.process.exitcode)}); "
                    "see their stderr"
                )
                raise _PoolBroken
        self._replace(w)

    def _on_timeout(self, w: _Worker) -> None:
        w.process.kill()
        w.process.join(timeout=5.0)
        self._blame_or_retry(w, f"decoder timed out after {self.timeout_s:g} s", timed_out=True)
        self._replace(w)

    def _blame_or_retry(self, w: _Worker, why: str, *, timed_out: bool) -> None:
        """A chunk's worker died or hung while on its head chunk. Alone in its chunk, the image
        is the cause; among others, any of them may be, so each goes round again on its own.
        The chunks queued behind it were never started: they go back as they were."""
        head = [w.inflight.popleft() for _ in range(min(w.chunks[0] if w.chunks else len(w.inflight), len(w.inflight)))]
        behind = list(w.inflight)
        w.inflight.clear()
        w.chunks.clear()
        if len(head) == 1:
            if timed_out:
                self.stats.timed_out += 1
            else:
                self.stats.crashed += 1
            _resolve(head[0].future, ImageRejection("decode_error", why))
            head = []
        for task in head:
            task.suspect = True
        if head or behind:
            self._requeue(head + behind, retried=len(head))

    def _requeue(self, tasks: Iterable[_Task], *, retried: int | None = None) -> None:
        """Put tasks back at the front of the queue, in their original order; `retried` of them
        (default all) count as sent again."""
        tasks = list(tasks)
        self.stats.retried += len(tasks) if retried is None else retried
        with self._lock:
            self._pending.extendleft(reversed(tasks))

    def _replace(self, w: _Worker) -> None:
        self._remove_worker(w)
        self._add_worker()

    def _retire(self, w: _Worker) -> None:
        """Swap a worker that has done its share for a fresh one, without blaming anything."""
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
        w.process.join(timeout=2.0)
        self._replace(w)

    def _fail_everything(self, why: str) -> None:
        with self._lock:
            self._broken = why
            tasks = list(self._pending)
            self._pending.clear()
        for w in self._workers:
            tasks.extend(w.inflight)
            w.inflight.clear()
            w.chunks.clear()
        for t in tasks:
            future = t.future
            if future.done():
                continue
            # A task still queued was never started; a concurrent Future must be marked running
            # before it takes a result.
            if isinstance(future, Future) and not future.running() and not future.set_running_or_notify_cancel():
                continue
            future.set_exception(RuntimeError(why))

    def _stop_workers(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5.0
        for w in self._workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for w in list(self._workers):
            self._remove_worker(w)


class _PoolBroken(Exception):
    """Raised inside the dispatcher to stop it after `_fail_everything`."""


def _start(future: Future[DecodeResult] | asyncio.Future[DecodeResult]) -> bool:
    """Mark a task as handed to a worker; False when its caller cancelled it while it queued.
    A task sent round again after a crash is already running."""
    if isinstance(future, Future):
        return future.running() or future.set_running_or_notify_cancel()
    return not future.done()


def _resolve(future: Future[DecodeResult] | asyncio.Future[DecodeResult], result: DecodeResult) -> None:
    # An asyncio caller may have been cancelled while its image was in a worker.
    if not future.done():
        future.set_result(result)


def _worker_main(
    conn: Connection,
    fn: DecodeFn,
    config: ImageConfig,
    initializer: Callable[[], Any] | None,
) -> None:
    # Ctrl-C goes to the whole process group; the parent decides what happens to its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()
    conn.send(_READY)
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        results: list[object] = []
        for data in chunk:
            try:
                results.append(fn(data, config))
            except Exception as exc:  # noqa: BLE001 - a raising fn costs this sample only
                results.append(ImageRejection("decode_error", f"decoder raised {type(exc).__name__}: {exc}"[:200]))
        try:
            conn.send(results)
        except Exception:  # noqa: BLE001 - e.g. an unpicklable result: find it, send the rest
            conn.send([_sendable(r) for r in results])


def _sendable(result: object) -> object:
    try:
        pickle.dumps(result)
    except Exception as exc:  # noqa: BLE001
        return ImageRejection("decode_error", f"result not sendable: {type(exc).__name__}")
    return result


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
