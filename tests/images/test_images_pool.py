"""DecodePool: results in order, and a crashing or hanging decoder costs one sample only."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from PIL import Image

from taisu_etl.images import (
    DecodePool,
    ImageConfig,
    ImageRejection,
    NormalisedImage,
    normalise_image,
)
from tests.images.pool_fns import CRASH, HANG, RAISE, big_answer, crash_or_hang, exit_at_start
from tests.images.support import encode

CONFIG = ImageConfig(min_side=1)
# Every map() here is bounded, so a pool bug fails the test instead of hanging the whole suite.
LIMIT = 60.0


def _images(n: int, offset: int = 0) -> list[bytes]:
    return [encode(Image.new("RGB", (240, 200), (offset + i * 7 % 256, 80, 160)), "JPEG") for i in range(n)]


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    with DecodePool(CONFIG, workers=2, fn=crash_or_hang, timeout_s=2.0, chunk_size=4) as p:
        yield p


def test_results_match_in_process_decoding(pool: DecodePool) -> None:
    datas = _images(20) + [b"<html>", encode(Image.new("RGB", (300, 300)), "PNG")[:100]]
    expected = [normalise_image(d, CONFIG) for d in datas]
    assert pool.map(datas, LIMIT) == expected
    assert isinstance(expected[-2], ImageRejection) and expected[-2].reason == "not_image"


def test_crash_and_hang_cost_one_sample_each(pool: DecodePool) -> None:
    # 16 inputs over 2 workers go out in chunks of 4: the crash and the hang each open a chunk,
    # so the three images beside each must be sent again, alone, and not blamed.
    good = _images(14)
    datas = [CRASH] + good[:3] + [HANG] + good[3:]
    crashed_before, timed_out_before = pool.stats.crashed, pool.stats.timed_out
    retried_before = pool.stats.retried
    started = time.monotonic()
    results = pool.map(datas, LIMIT)
    assert time.monotonic() - started < 20
    assert len(results) == len(datas)
    crash, hang = results[0], results[4]
    assert isinstance(crash, ImageRejection) and crash.reason == "decode_error"
    assert crash.detail.startswith("decoder crashed") and "SIGSEGV" in crash.detail
    assert isinstance(hang, ImageRejection) and hang.reason == "decode_error"
    assert hang.detail == "decoder timed out after 2 s"
    rest = results[1:4] + results[5:]
    assert [r.sha256 for r in rest] == [normalise_image(d, CONFIG).sha256 for d in good]  # type: ignore[union-attr]
    assert pool.stats.crashed == crashed_before + 1
    assert pool.stats.timed_out == timed_out_before + 1
    assert pool.stats.retried >= retried_before + 4  # the crash opened a chunk of 4: all 4 went round again
    # The pool replaced its workers and goes on.
    after = pool.map(_images(6, offset=50), LIMIT)
    assert all(isinstance(r, NormalisedImage) for r in after)


def test_several_crashes_in_one_chunk() -> None:
    # One worker, chunks of 8: the first crash sends its whole chunk round again, image by image;
    # each crasher then dies alone and is blamed, and the chunk after it is a normal one.
    good = _images(14, offset=100)
    datas = [CRASH, good[0], good[1], CRASH] + good[2:]
    with DecodePool(CONFIG, workers=1, fn=crash_or_hang, chunk_size=8, initializer=None) as pool:
        results = pool.map(datas, LIMIT)
        assert pool.stats.crashed == 2 and pool.stats.retried == 8
        assert pool.stats.workers_started == 1 + 3  # the chunk's death, then each crasher's
    crashed = [i for i, r in enumerate(results) if isinstance(r, ImageRejection)]
    assert crashed == [0, 3]
    assert all(r.detail.startswith("decoder crashed") for r in results if isinstance(r, ImageRejection))
    ok = [r.sha256 for r in results if isinstance(r, NormalisedImage)]
    assert ok == [normalise_image(d, CONFIG).sha256 for d in good]  # type: ignore[union-attr]


def test_raising_decoder(pool: DecodePool) -> None:
    result = pool.submit(RAISE).result(timeout=LIMIT)
    assert isinstance(result, ImageRejection) and result.reason == "decode_error"
    assert result.detail == "decoder raised RuntimeError: decoder bug"


def test_asyncio(pool: DecodePool) -> None:
    datas = _images(6, offset=30)

    async def main() -> list[object]:
        return await asyncio.gather(*(pool.decode(d) for d in datas))

    results = asyncio.run(main())
    assert [r.sha256 for r in results] == [normalise_image(d, CONFIG).sha256 for d in datas]  # type: ignore[attr-defined]


def test_workers_are_recycled() -> None:
    datas = _images(6)
    with DecodePool(CONFIG, workers=1, max_tasks_per_worker=3, initializer=None) as pool:
        results = pool.map(datas, LIMIT)
        assert pool.stats.workers_started >= 2
        assert pool.stats.crashed == pool.stats.retried == 0
    assert [r.sha256 for r in results] == [normalise_image(d, CONFIG).sha256 for d in datas]  # type: ignore[union-attr]


def test_workers_that_cannot_start_fail_loudly() -> None:
    pool = DecodePool(CONFIG, workers=1, initializer=exit_at_start)
    future = pool.submit(_images(1)[0])
    with pytest.raises(RuntimeError, match="die at start-up"):
        future.result(timeout=60)
    with pytest.raises(RuntimeError):
        pool.submit(b"x")
    pool.close()


def test_close() -> None:
    pool = DecodePool(CONFIG, workers=1, initializer=None)
    future = pool.submit(_images(1)[0])
    pool.close()  # finishes what was queued
    assert isinstance(future.result(timeout=0), NormalisedImage)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(b"x")


def test_no_lost_wake_ups() -> None:
    # Submits coalesce their wake-up bytes; one after another (each waiting for the previous
    # result, so the dispatcher is asleep every time) and from several threads at once, every
    # image must still be picked up.
    datas = _images(8, offset=70)
    with DecodePool(CONFIG, workers=2, initializer=None) as pool:
        for i in range(300):
            assert isinstance(pool.submit(datas[i % 8]).result(timeout=LIMIT), NormalisedImage)

        def burst(k: int) -> list[object]:
            return [f.result(timeout=LIMIT) for f in [pool.submit(datas[(k + j) % 8]) for j in range(25)]]

        with ThreadPoolExecutor(4) as threads:
            results = [r for batch in threads.map(burst, range(8)) for r in batch]
        assert len(results) == 200 and all(isinstance(r, NormalisedImage) for r in results)


def test_a_submit_during_the_wake_up_drain_is_not_lost() -> None:
    # The narrow race behind a hang once seen in the fetch stage: an image submitted while the
    # dispatcher reads its wake-up socket. Forced here by submitting from inside that read.
    datas = _images(3, offset=90)
    with DecodePool(CONFIG, workers=1, initializer=None) as pool:
        real = pool._wake_r
        injected: list[Future[object]] = []

        class DrainHook:
            def recv(self, n: int) -> bytes:
                if not injected:
                    injected.append(pool.submit(datas[1]))  # type: ignore[arg-type]
                return real.recv(n)

            def close(self) -> None:
                real.close()

        pool._wake_r = DrainHook()  # type: ignore[assignment]
        assert isinstance(pool.submit(datas[0]).result(timeout=LIMIT), NormalisedImage)
        assert isinstance(injected[0].result(timeout=LIMIT), NormalisedImage)
        time.sleep(0.5)  # the dispatcher is asleep; a lost wake-up would leave this one queued forever
        assert isinstance(pool.submit(datas[2]).result(timeout=10), NormalisedImage)


_SCRIPT = """
import os, sys
if __name__ != "__main__":  # what a worker that re-runs this script would see
    open(os.environ["MARKER"], "a").write(__name__ + "\\n")
from taisu_etl.images import DecodePool, ImageConfig, NormalisedImage
if __name__ == "__main__":
    data = bytes.fromhex(sys.argv[2])
    ctx = None if sys.argv[1] == "default" else sys.argv[1]
    with DecodePool(ImageConfig(min_side=1), workers=2, mp_context=ctx) as pool:
        assert all(isinstance(r, NormalisedImage) for r in pool.map([data] * 4, timeout=60))
        print(pool._ctx.get_start_method(), type(pool._workers[0].process).__name__)
"""


@pytest.mark.parametrize("method", ["default", "spawn"])
def test_workers_do_not_rerun_the_callers_script(method: str, tmp_path: Path) -> None:
    # A spawn worker re-runs the parent's main script (for bench/fetch.py ~1.8 s of imports, per
    # worker); workers from the pool's fork server import only the decode code.
    import os
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(_SCRIPT)
    marker = tmp_path / "marker"
    env = {**os.environ, "MARKER": str(marker), "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(script), method, _images(1)[0].hex()], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    reruns = marker.read_text().split() if marker.exists() else []
    if method == "spawn":
        assert reruns == ["__mp_main__", "__mp_main__"]  # the check itself works
    else:
        assert out.stdout.split() == ["forkserver", "LeanForkServerProcess"]
        assert reruns == []


def test_a_decoder_defined_in_main_keeps_the_standard_launch() -> None:
    from taisu_etl.images import _launch

    def in_main(data: bytes, config: ImageConfig) -> object:
        return data

    in_main.__module__ = "__main__"
    _, cls = _launch.process_factory(None, in_main, None)
    assert cls is not _launch.LeanForkServerProcess
    _, cls = _launch.process_factory(None, normalise_image, None)
    assert cls is _launch.LeanForkServerProcess
    _, cls = _launch.process_factory("spawn", normalise_image, None)
    assert cls.__name__ == "SpawnProcess"


_EARLY_SCRIPT = """
import sys, time
from multiprocessing import forkserver
from taisu_etl.images._launch import start_fork_server
start_fork_server()
server = forkserver._forkserver._forkserver_pid
assert server is not None, "no fork server after start_fork_server()"
# It imports the decode stack by itself, while this process goes on: Pillow's C module shows up
# in its memory map before any pool exists.
deadline = time.monotonic() + 60
while b"_imaging" not in open(f"/proc/{server}/maps", "rb").read():
    assert time.monotonic() < deadline, "the fork server never loaded Pillow"
    time.sleep(0.05)
start_fork_server()  # a second call keeps the running server
assert forkserver._forkserver._forkserver_pid == server
from taisu_etl.images import DecodePool, ImageConfig, NormalisedImage
with DecodePool(ImageConfig(min_side=1), workers=2) as pool:
    assert all(isinstance(r, NormalisedImage) for r in pool.map([bytes.fromhex(sys.argv[1])] * 4, timeout=60))
    parents = {int(open(f"/proc/{w.process.pid}/stat").read().rsplit(")", 1)[1].split()[1]) for w in pool._workers}
assert parents == {server}, (parents, server)
print("ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_fork_server_started_early_serves_the_pool(tmp_path: Path) -> None:
    # The CLI starts it before its own imports, so the two overlap; the pool must then use it.
    import os
    import subprocess

    script = tmp_path / "early.py"
    script.write_text(_EARLY_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(script), _images(1)[0].hex()], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok"]


# -- on an event loop (what the fetch stage uses): the same isolation without the thread ------


def _on_loop(body, *args: object, **pool_args: object) -> object:
    """Run `body(pool, *args)` in a fresh event loop with a pool attached to that loop."""

    async def main() -> object:
        opts = {"workers": 2, "initializer": None, **pool_args}
        with DecodePool(CONFIG, loop=asyncio.get_running_loop(), **opts) as pool:  # type: ignore[arg-type]
            return await asyncio.wait_for(body(pool, *args), LIMIT)

    return asyncio.run(main())


def test_on_a_loop_results_match_in_process_decoding() -> None:
    datas = _images(30, offset=10) + [b"<html>"]

    async def body(pool: DecodePool) -> list[object]:
        return list(await asyncio.gather(*(pool.decode(d) for d in datas)))

    assert _on_loop(body) == [normalise_image(d, CONFIG) for d in datas]


def test_on_uvloop_answers_bigger_than_a_socket_buffer_are_read_whole() -> None:
    # uvloop makes a descriptor it watches non-blocking. A 1 MiB answer arrives in several
    # writes; reading it without blocking once failed half-way, the pool took that for a dead
    # worker, replaced it and decoded the chunk again (and again).
    uvloop = pytest.importorskip("uvloop")
    datas = _images(8, offset=70)

    async def main() -> tuple[list[object], object]:
        with DecodePool(CONFIG, loop=asyncio.get_running_loop(), workers=2, initializer=None,
                        fn=big_answer, chunk_size=2) as pool:
            results = await asyncio.wait_for(asyncio.gather(*(pool.decode(d) for d in datas)), LIMIT)
            return list(results), pool.stats

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results, stats = runner.run(main())
    assert [r.jpeg[: -(1 << 20)] for r in results] == [normalise_image(d, CONFIG).jpeg for d in datas]  # type: ignore[attr-defined]
    assert stats.workers_started == 2 and stats.crashed == 0  # type: ignore[attr-defined]


def test_on_a_loop_crash_and_hang_cost_one_sample_each() -> None:
    good = _images(14, offset=40)
    datas = [CRASH] + good[:3] + [HANG] + good[3:] + [RAISE]

    async def body(pool: DecodePool) -> tuple[list[object], list[object], object]:
        started = time.monotonic()
        results = list(await asyncio.gather(*(pool.decode(d) for d in datas)))
        assert time.monotonic() - started < 20
        after = list(await asyncio.gather(*(pool.decode(d) for d in _images(6, offset=60))))
        return results, after, pool.stats

    results, after, stats = _on_loop(body, fn=crash_or_hang, timeout_s=2.0, chunk_size=4)  # type: ignore[misc]
    crash, hang, raised = results[0], results[4], results[-1]
    assert isinstance(crash, ImageRejection) and crash.detail.startswith("decoder crashed") and "SIGSEGV" in crash.detail
    assert isinstance(hang, ImageRejection) and hang.detail == "decoder timed out after 2 s"
    assert isinstance(raised, ImageRejection) and raised.detail == "decoder raised RuntimeError: decoder bug"
    assert [r.sha256 for r in results[1:4] + results[5:-1]] == [normalise_image(d, CONFIG).sha256 for d in good]
    assert stats.crashed == 1 and stats.timed_out == 1  # type: ignore[attr-defined]
    assert all(isinstance(r, NormalisedImage) for r in after)


def test_on_a_loop_workers_are_recycled_and_sync_calls_refused() -> None:
    datas = _images(7, offset=80)

    async def body(pool: DecodePool) -> list[object]:
        with pytest.raises(RuntimeError, match="await decode"):
            pool.submit(datas[0])
        with pytest.raises(RuntimeError, match="await decode"):
            pool.map(datas)
        out = [await pool.decode(d) for d in datas]  # one at a time: the loop is idle in between
        assert pool.stats.workers_started >= 3
        return out

    results = _on_loop(body, workers=1, max_tasks_per_worker=3)
    assert [r.sha256 for r in results] == [normalise_image(d, CONFIG).sha256 for d in datas]  # type: ignore[attr-defined]


def test_on_a_loop_a_cancelled_caller_costs_nothing_else() -> None:
    datas = _images(6, offset=120)

    async def body(pool: DecodePool) -> list[object]:
        slow = asyncio.ensure_future(pool.decode(HANG))
        await asyncio.sleep(0.2)
        slow.cancel()  # the worker still holds the image; its result, if any, has no one to go to
        return list(await asyncio.gather(*(pool.decode(d) for d in datas)))

    results = _on_loop(body, fn=crash_or_hang, timeout_s=1.0, workers=1)
    assert all(isinstance(r, NormalisedImage) for r in results)


def test_on_a_loop_workers_that_cannot_start_fail_loudly() -> None:
    async def body(pool: DecodePool) -> None:
        with pytest.raises(RuntimeError, match="die at start-up"):
            await pool.decode(_images(1)[0])
        with pytest.raises(RuntimeError, match="die at start-up"):
            await pool.decode(b"x")

    _on_loop(body, workers=1, initializer=exit_at_start)


def test_on_a_loop_close_cancels_what_is_left() -> None:
    async def main() -> None:
        pool = DecodePool(CONFIG, loop=asyncio.get_running_loop(), workers=1, fn=crash_or_hang, initializer=None)
        waiting = [asyncio.ensure_future(pool.decode(d)) for d in [HANG, *_images(3)]]
        await asyncio.sleep(0.2)
        pool.close()
        pool.close()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        assert not pool._workers
        with pytest.raises(RuntimeError, match="closed"):
            await pool.decode(b"x")

    asyncio.run(asyncio.wait_for(main(), LIMIT))
