"""A task that Airflow runs on a Celery worker can start the image stages' worker processes.

Celery's prefork pool processes are daemonic billiard processes, and billiard makes each one the
standard library's `multiprocessing.current_process()` too; Airflow's task supervisor forks the
task process from such a pool process, so the task inherits `daemon=True`, and multiprocessing
refuses to start children from it ("daemonic processes are not allowed to have children"): on the
production deployment every fetch task failed that way before its first download. Here the same
shape without a deployment: a billiard pool process forks a child (the task), which starts a
`DecodePool` (fetch) and a pool from `worker_context()` (score, caption) and uses them.
"""

from __future__ import annotations

import os
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

billiard = pytest.importorskip("billiard", reason="Celery (and billiard) come with the airflow extra")

from taisu_etl.images import DecodePool, NormalisedImage  # noqa: E402
from taisu_etl.images._launch import worker_context  # noqa: E402
from tests.sources.builders import jpeg  # noqa: E402


def _square(n: int) -> int:
    return n * n


def _task(image: bytes, report: str) -> None:
    """The task process's work: decode through a DecodePool, compute in a worker_context pool."""
    with DecodePool(workers=1) as pool:
        decoded = pool.map([image])[0]
    assert isinstance(decoded, NormalisedImage), decoded
    with ProcessPoolExecutor(1, mp_context=worker_context()) as executor:
        assert executor.submit(_square, 7).result(timeout=60) == 49
    Path(report).write_text("ok")


def _fork_task_like_the_supervisor(image: bytes, report: str) -> tuple[bool, int]:
    """Runs in a billiard pool process: fork the task as Airflow's supervisor does, wait for it."""
    import multiprocessing

    daemonic = multiprocessing.current_process().daemon
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _task(image, report)
            code = 0
        except BaseException:  # noqa: BLE001 - the parent reads why from the report
            Path(report).write_text(traceback.format_exc())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return daemonic, os.waitstatus_to_exitcode(status)


def test_a_task_forked_from_a_celery_pool_process_starts_its_image_workers(tmp_path: Path) -> None:
    # A fork server of this (test) process first: the task inherits the record of a server that is
    # not its child, as any process forked after its parent started one does.
    from taisu_etl.images._launch import start_fork_server

    start_fork_server()
    report = tmp_path / "report.txt"
    pool = billiard.Pool(1)
    try:
        daemonic, code = pool.apply_async(_fork_task_like_the_supervisor, (jpeg(5, 128), str(report))).get(timeout=120)
    finally:
        pool.terminate()
        pool.join()
    assert daemonic, "billiard no longer marks its pool processes as multiprocessing daemons: this test proves nothing"
    assert code == 0, report.read_text() if report.exists() else f"the task exited with {code}"
    assert report.read_text() == "ok"
