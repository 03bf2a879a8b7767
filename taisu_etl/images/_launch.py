"""How DecodePool starts its workers: forked from a clean fork server, without the caller's script.

A `spawn` worker is a fresh interpreter that imports Pillow, numpy and scipy (~1 s of CPU) and
then, like every spawned multiprocessing child, re-runs the parent's main script as `__mp_main__`.
That second part costs whatever the script imports: ~1.8 s for bench/fetch.py, more for
Airflow's entry point. On a small machine that was a third of a 3,000-image fetch's CPU.

`forkserver` fixes the first part: one server process is started once per parent process (a
fresh interpreter, single-threaded, so forking it copies no other thread's locks, which is why
plain `fork` is not used), imports the decode stack once, and forks each worker from itself in
milliseconds; crash replacements and recycling become just as cheap. For the second part,
CPython up to 3.13 still makes every forkserver child re-run the main script (the server's
`'__main__'` preload looks for a key that `get_preparation_data` never sets), so the `Popen`
below drops the main-module entry from what the child is told. The worker then runs only code
it imports by module name: `_worker_main`, the decode function and the initializer. A decode
function or initializer defined in `__main__` itself keeps the standard launch (which imports
the script), since the child could not find it otherwise.

Nothing changes in isolation: every worker is still its own process with its own pipe, killed
and replaced by the pool on a crash or a hang, and the fork server never decodes anything.

Under a Celery worker the caller inherits a daemon flag it does not have: Celery's prefork pool
processes are daemonic billiard processes, billiard makes each one the standard library's
`current_process()` as well, and Airflow's task supervisor forks the task process from it, so
the task believes it is a daemon and multiprocessing refuses to start any worker ("daemonic
processes are not allowed to have children"); its authentication key is billiard's type, which
the standard library's start-up data cannot pickle. `_allow_workers` puts both right before a
pool starts (see there why that is safe).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from multiprocessing import context as mp_context
from multiprocessing import forkserver, reduction, spawn, util
from multiprocessing.context import BaseContext
from typing import Any, Final

# Imported once in the fork server, so every worker starts with them loaded.
PRELOAD: Final = (
    "taisu_etl.images.decode",
    "taisu_etl.images.pool",
    "PIL.JpegImagePlugin",
    "PIL.PngImagePlugin",
    "PIL.GifImagePlugin",
    "PIL.WebPImagePlugin",
    "scipy.fftpack",  # perceptual_hash imports it on first use
)

_MAIN_KEYS: Final = ("init_main_from_path", "init_main_from_name")


def _lean_supported() -> bool:
    try:
        from multiprocessing import popen_forkserver  # noqa: F401 - POSIX only
    except ImportError:
        return False
    return (
        "forkserver" in multiprocessing.get_all_start_methods()
        and hasattr(forkserver, "connect_to_new_process")
        and hasattr(forkserver, "read_signed")
        and hasattr(spawn, "get_preparation_data")
    )


def _defined_in_main(fn: Any) -> bool:
    while hasattr(fn, "func"):  # functools.partial
        fn = fn.func
    return getattr(fn, "__module__", None) == "__main__"


if _lean_supported():
    from multiprocessing import popen_forkserver

    class _LeanPopen(popen_forkserver.Popen):  # type: ignore[misc]
        """`popen_forkserver.Popen._launch`, minus the parent's main module in the preparation data."""

        def _launch(self, process_obj: Any) -> None:
            prep_data = spawn.get_preparation_data(process_obj._name)
            for key in _MAIN_KEYS:
                prep_data.pop(key, None)
            buf = io.BytesIO()
            mp_context.set_spawning_popen(self)
            try:
                reduction.dump(prep_data, buf)
                reduction.dump(process_obj, buf)
            finally:
                mp_context.set_spawning_popen(None)
            self.sentinel, w = forkserver.connect_to_new_process(self._fds)
            _parent_w = os.dup(w)
            self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    class LeanForkServerProcess(mp_context.ForkServerProcess):  # type: ignore[misc,valid-type]
        _start_method = "forkserver"

        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            return _LeanPopen(process_obj)

else:  # pragma: no cover - Windows, or a CPython whose forkserver internals moved
    LeanForkServerProcess = None  # type: ignore[assignment,misc]


def _allow_workers() -> None:
    """Let this process start worker processes when it inherited a Celery pool process's identity.

    multiprocessing refuses children to a daemonic process because it would leave them orphaned
    when it is terminated. The flag only ever comes from a parent here: a Celery pool process
    (see the module docstring) whose forked Airflow task runs this code is no multiprocessing
    daemon of anyone. Its pools stop their workers themselves, and every worker is itself a
    daemon of this process, ended at its exit; the change lives in this process's memory alone,
    so the Celery pool process that forked it keeps its own flag.

    billiard's authentication key refuses to be pickled unless billiard itself is starting a
    process; the standard library's key type, with the same bytes, pickles while the standard
    library starts one (and only then), which is all the fork server's start-up data needs.
    """
    current = multiprocessing.current_process()
    config = current._config  # the `daemon` setter refuses a started process: its config holds the flag
    if config.get("daemon"):
        config["daemon"] = False
    key = config.get("authkey")
    if key is not None and type(key) is not multiprocessing.process.AuthenticationString:
        config["authkey"] = multiprocessing.process.AuthenticationString(bytes(key))


def _forget_inherited_fork_server() -> None:
    """Drop the record of a fork server that is not this process's child, so the next pool starts its own.

    A process forked after its parent started a fork server (a test runner, a Celery pool process,
    Airflow's supervisor forking the task) inherits the parent's record of it; the standard
    library then checks on the server with `waitpid`, which fails for a process that is not its
    child (ChildProcessError). A server of our own that has exited is forgotten the same way.
    """
    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    with server._lock:
        pid = server._forkserver_pid
        if pid is None:
            return
        try:
            gone = os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            gone = True  # an ancestor's server
        if gone:
            if server._forkserver_alive_fd is not None:
                os.close(server._forkserver_alive_fd)  # our copy of the descriptor: the ancestor keeps its own
            server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None


def default_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def start_fork_server() -> None:
    """Start the fork server now, so that it imports the decode stack (~0.9 s of CPU) while the
    caller goes on with its own start-up (imports, the ledger connection) instead of after it.

    Optional: the first pool starts it anyway. Without a fork server, or with one running, a no-op.
    """
    if default_start_method() != "forkserver":
        return
    _forget_inherited_fork_server()
    forkserver.set_forkserver_preload(list(PRELOAD))
    forkserver.ensure_running()


def worker_context(start_method: str | None = None) -> BaseContext:
    """A multiprocessing context whose workers start like DecodePool's: forked from the clean fork
    server, never re-running the caller's main script. For pools that take a context (a
    `ProcessPoolExecutor`), whose worker code must be importable by module name.

    Under Airflow's task runner the main script is the `airflow` command: a spawned child that
    re-imports it fails on the runner's blocked metadata connection, and the pool breaks.
    """
    _allow_workers()
    _forget_inherited_fork_server()
    method = start_method or default_start_method()
    ctx = multiprocessing.get_context(method)
    if method != "forkserver" or LeanForkServerProcess is None:
        return ctx
    forkserver.set_forkserver_preload(list(PRELOAD))
    return _LeanForkServerContext()


if LeanForkServerProcess is not None:

    class _LeanForkServerContext(mp_context.ForkServerContext):  # type: ignore[misc,valid-type]
        Process = LeanForkServerProcess


def process_factory(start_method: str | None, *code: Any) -> tuple[BaseContext, Any]:
    """The multiprocessing context for `start_method` (default: forkserver where there is one)
    and the Process class to start workers with. `code`: the callables the worker must find."""
    _allow_workers()
    _forget_inherited_fork_server()
    method = start_method or default_start_method()
    ctx = multiprocessing.get_context(method)
    if method != "forkserver":
        return ctx, ctx.Process
    # Ignored by a fork server that already runs (another pool started it): its workers then
    # import what they need themselves, which is slower but the same.
    forkserver.set_forkserver_preload(list(PRELOAD))
    if LeanForkServerProcess is None or any(_defined_in_main(c) for c in code if c is not None):
        return ctx, ctx.Process
    return ctx, LeanForkServerProcess
