"""The decode pool the way the fetch stage drives it: answers read off the event loop without
blocking it, and each worker holding its next chunk while it decodes one (see DecodePool._dispatch).
"""

from __future__ import annotations

import asyncio
import threading
import time
from multiprocessing import Pipe

from PIL import Image

from taisu_etl.images import DecodePool, ImageConfig, ImageRejection, NormalisedImage, normalise_image
from taisu_etl.images.pool import _Inbox
from tests.images.pool_fns import CRASH, big_answer, crash_or_hang
from tests.images.support import encode

CONFIG = ImageConfig(min_side=1)
LIMIT = 60.0


def _images(n: int, offset: int = 0) -> list[bytes]:
    return [encode(Image.new("RGB", (200, 160), ((offset + i * 11) % 256, 90, 30)), "JPEG") for i in range(n)]


def test_an_answer_arriving_in_parts_never_blocks_the_reader() -> None:
    """A 6 MB message written while the reader polls: each poll returns at once with what is whole."""
    parent, child = Pipe(duplex=True)
    inbox = _Inbox(parent)
    payload = [bytes([i]) * (2 << 20) for i in range(3)]
    small = {"ready": True}
    writer = threading.Thread(target=lambda: (child.send(small), child.send(payload)))
    writer.start()
    got: list[object] = []
    slowest = 0.0
    deadline = time.monotonic() + LIMIT
    while len(got) < 2 and time.monotonic() < deadline:
        t0 = time.monotonic()
        got.extend(inbox.messages())
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.001)
    writer.join()
    assert got == [small, payload]
    assert slowest < 0.5  # a copy of what is there, never a wait for the writer
    child.close()
    try:
        inbox.messages()
        raise AssertionError("a closed writer must read as EOFError")
    except EOFError:
        pass
    inbox.close()
    parent.close()


def test_big_answers_on_the_loop_match_in_process_decoding() -> None:
    datas = _images(12, offset=5)

    async def main() -> list[object]:
        with DecodePool(CONFIG, workers=2, fn=big_answer, chunk_size=4, loop=asyncio.get_running_loop()) as pool:
            return list(await asyncio.gather(*(pool.decode(d) for d in datas)))

    results = asyncio.run(main())
    want = [normalise_image(d, CONFIG) for d in datas]
    assert [r.sha256 for r in results] == [w.sha256 for w in want]  # type: ignore[union-attr]
    assert all(isinstance(r, NormalisedImage) and len(r.jpeg) > 1 << 20 for r in results)


def test_a_worker_holds_its_next_chunk_and_a_crash_blames_only_the_running_one() -> None:
    """One worker, chunks of 2, two chunks at once: [g0, CRASH] runs while [g1, g2] waits in its
    pipe. The crash sends g0 and CRASH round again alone (2 retried) and blames CRASH; g1 and g2,
    never started, go back as they were (not retried, not suspects)."""
    good = _images(5, offset=40)
    datas = [good[0], CRASH, good[1], good[2], good[3], good[4]]
    with DecodePool(CONFIG, workers=1, fn=crash_or_hang, chunk_size=2, chunks_per_worker=2, initializer=None) as pool:
        results = pool.map(datas, LIMIT)
        assert pool.stats.crashed == 1 and pool.stats.retried == 2, pool.stats
        assert pool.stats.workers_started == 1 + 2  # the chunk's death, then the crasher's alone
    assert isinstance(results[1], ImageRejection) and results[1].detail.startswith("decoder crashed")
    ok = [r.sha256 for r in results if isinstance(r, NormalisedImage)]
    assert ok == [normalise_image(d, CONFIG).sha256 for d in good]  # type: ignore[union-attr]


def test_workers_are_still_retired_after_their_share_with_chunks_queued() -> None:
    datas = _images(40, offset=90)
    with DecodePool(CONFIG, workers=2, chunk_size=2, chunks_per_worker=2, max_tasks_per_worker=8) as pool:
        results = pool.map(datas, LIMIT)
        started = pool.stats.workers_started
    assert [r.sha256 for r in results] == [normalise_image(d, CONFIG).sha256 for d in datas]  # type: ignore[union-attr]
    assert started >= 2 + 40 // 8 - 2  # each worker replaced after about 8 images


def test_large_images_with_large_answers_do_not_deadlock_the_loop() -> None:
    """Photos in, photos out, chunks queued behind chunks: a queued chunk the worker has not read
    must never block the loop while the worker waits for it to read an answer (this hung)."""
    import random

    datas = [encode(Image.frombytes("RGB", (400, 400), random.Random(i).randbytes(400 * 400 * 3)), "JPEG") for i in range(24)]
    assert min(len(d) for d in datas) > 64 << 10  # a chunk of 8 far beyond a socket buffer
    done: list[object] = []

    def scenario() -> None:
        async def main() -> list[object]:
            with DecodePool(CONFIG, workers=1, fn=big_answer, chunk_size=8, chunks_per_worker=2,
                            loop=asyncio.get_running_loop()) as pool:
                return list(await asyncio.gather(*(pool.decode(d) for d in datas)))
        done.extend(asyncio.run(main()))

    runner = threading.Thread(target=scenario, daemon=True)
    runner.start()
    runner.join(LIMIT)
    assert not runner.is_alive(), "the decode pool deadlocked"
    assert [r.sha256 for r in done] == [normalise_image(d, CONFIG).sha256 for d in datas]  # type: ignore[union-attr]
