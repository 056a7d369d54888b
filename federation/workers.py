"""Site worker processes for the simulation engine: one virtual site always on the same process.

A :class:`WorkerPool` runs a fixed number of Python processes started by the standard library's
``forkserver`` (a clean interpreter that imports the site code once, then forks a worker per
slot), so a worker holds no coordinator state, no MLflow connection and no thread of the parent.
Each worker builds the ClientApp once from an importable factory, optionally warms up (loads
the bundles of the sites it serves, while the coordinator is still starting), then answers
``(message, context)`` jobs over a pipe. Virtual site ``p`` always goes to worker ``p % size``:
its parsed bundle, joined endpoint data and prepared Cox designs stay in that process from round
to round.

Workers never import the launcher's ``__main__`` module (what ``spawn`` and ``forkserver``
children otherwise do), so a script or notebook that starts a run needs no ``__main__`` guard
and the launcher's code never runs twice.

This module imports no Flower code, so the launcher can start the fork server first and let it
import the site code while the coordinator imports Flower.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing import forkserver, spawn
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

PRELOAD = ["federation.client_app", "sites.prepared", "sites.answers"]
"""Modules the fork server imports once, before it forks the workers."""
POLL_SECONDS = 0.2
"""How often a waiting caller checks whether the pool was closed."""
STOP_SECONDS = 5.0
"""How long a worker may take to exit before it is killed."""
THREAD_LIMITS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""One compute thread per worker (BLAS; Arrow's pool follows ``OMP_NUM_THREADS``) unless the
user set these: the pool already runs one worker per CPU, and OpenBLAS threads that spin while
another process holds the core cost a 1e6-subject run about 20 % of its wall time."""


def context() -> BaseContext:
    """The ``forkserver`` multiprocessing context, its server started with :data:`PRELOAD`."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def worker_environment() -> dict[str, str]:
    """The environment of the fork server and its workers: this process's, with
    :data:`THREAD_LIMITS` where the user has not set them."""
    return {**THREAD_LIMITS, **os.environ}


def prestart() -> None:
    """Start the fork server now, so it imports the site code while the caller does other work."""
    context()
    added = {k: v for k, v in worker_environment().items() if k not in os.environ}
    os.environ.update(added)  # the server inherits it (numpy sizes its BLAS pool on import)
    try:
        forkserver.ensure_running()
    finally:
        for key in added:
            os.environ.pop(key, None)


def stop_fork_server() -> None:
    """Stop the fork server (a later pool starts a new one), so a run leaves no process behind.

    The server gets SIGTERM first, so it ends at once instead of tearing down the modules it
    imported (about 0.3 s); then the standard library's own stop routine (``ForkServer._stop``,
    what CPython's tests call) closes its pipe, reaps it and removes its socket. On a Python
    without that routine the server simply ends with this process.
    """
    server = forkserver._forkserver
    stop = getattr(server, "_stop", None)
    if stop is None:
        return
    pid = getattr(server, "_forkserver_pid", None)
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    stop()


class WorkerError(Exception):
    """A job failed in the worker (the text has the worker's traceback) or the worker died."""


@dataclass(frozen=True)
class AppFactory:
    """An importable ``module:function`` and its arguments; it builds the app in the worker."""

    target: str
    args: tuple[Any, ...] = ()

    def build(self, *extra: Any) -> Any:
        """Import the function and call it with :attr:`args`, then ``extra``."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)(*self.args, *extra)


_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")
_preparation_data = spawn.get_preparation_data


def _preparation_without_main(name: str) -> dict[str, Any]:
    data: dict[str, Any] = _preparation_data(name)
    for key in _MAIN_KEYS:
        data.pop(key, None)
    return data


@contextlib.contextmanager
def _main_not_inherited() -> Iterator[None]:
    """Start children that do not re-import ``__main__`` (see the module notes).

    ``forkserver`` children run the parent's main module again unless the preparation data
    leaves it out; the worker's target lives in this module, so it never needs it.
    """
    spawn.get_preparation_data = _preparation_without_main
    try:
        yield
    finally:
        spawn.get_preparation_data = _preparation_data


def _serve(
    conn: Connection,
    factory: AppFactory,
    warm_up: AppFactory | None,
    slot: int,
    size: int,
    env: dict[str, str],
    cwd: str,
) -> None:
    """Worker main loop: build the app, warm up, answer jobs until the pipe closes.

    The fork server was started earlier, maybe by another run: take the launcher's environment
    and working folder as they are now.
    """
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    app = factory.build()
    if warm_up is not None:
        # what fails here fails again in the first query, which reports it
        with contextlib.suppress(Exception):
            warm_up.build(slot, size)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        message, ctx = job
        try:
            reply = ("ok", app(message=message, context=ctx), ctx)
        except BaseException as exc:  # reported to the caller, which raises it there
            reply = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", None)
        conn.send(reply)


class _Worker:
    def __init__(
        self,
        ctx: BaseContext,
        factory: AppFactory,
        warm_up: AppFactory | None,
        slot: int,
        size: int,
    ) -> None:
        self.ctx = ctx
        self.factory = factory
        self.warm_up = warm_up
        self.slot = slot
        self.size = size
        self.lock = threading.Lock()
        self.conn: Connection | None = None
        self.process: BaseProcess | None = None

    def start(self) -> None:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=_serve,
            args=(
                child,
                self.factory,
                self.warm_up,
                self.slot,
                self.size,
                worker_environment(),
                os.getcwd(),
            ),
            name=f"trialfed-site-worker-{self.slot}",
        )
        process.daemon = True
        with _main_not_inherited():
            process.start()
        child.close()
        self.conn, self.process = parent, process

    def stop(self) -> None:
        conn, process = self.conn, self.process
        self.conn = self.process = None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            conn.close()
        if process is not None:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join(STOP_SECONDS)


class WorkerPool:
    """``size`` worker processes; job ``key`` always runs on worker ``key % size``.

    Parameters
    ----------
    size : int
        Number of worker processes (at least 1).
    factory : AppFactory
        Builds the callable ``app(message=..., context=...)`` in each worker.
    warm_up : AppFactory, optional
        Called as ``warm_up(*args, slot, size)`` in each worker before its first job (and again
        in a restarted worker); what it raises is ignored.
    """

    def __init__(self, size: int, factory: AppFactory, warm_up: AppFactory | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1; got {size}")
        self._closed = threading.Event()
        prestart()  # the fork server, with THREAD_LIMITS, unless it already runs
        ctx = context()
        self._workers = [_Worker(ctx, factory, warm_up, slot, size) for slot in range(size)]
        for worker in self._workers:
            worker.start()

    @property
    def size(self) -> int:
        """Number of worker processes."""
        return len(self._workers)

    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.process.pid for w in self._workers if w.process and w.process.pid]

    def run(self, key: int, message: Any, ctx: Any) -> tuple[Any, Any]:
        """Run one job on worker ``key % size``; returns ``(reply, context)``.

        Raises
        ------
        WorkerError
            The job raised (the message carries the worker's traceback), the worker died (it is
            restarted for the next job) or the pool was closed while waiting.
        """
        worker = self._workers[key % len(self._workers)]
        with worker.lock:
            if self._closed.is_set():
                raise WorkerError("the simulation engine is shutting down")
            if worker.conn is None or worker.process is None or not worker.process.is_alive():
                worker.stop()
                worker.start()
            conn = worker.conn
            assert conn is not None
            try:
                conn.send((message, ctx))
                while not conn.poll(POLL_SECONDS):
                    if self._closed.is_set():
                        raise WorkerError("the simulation engine shut down before the reply")
                status, reply, new_ctx = conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                code = worker.process.exitcode if worker.process else None
                worker.stop()
                raise WorkerError(f"site worker process exited (exit code {code})") from exc
        if status != "ok":
            raise WorkerError(str(reply))
        return reply, new_ctx

    def close(self) -> None:
        """Stop every worker (each asked to exit, killed after :data:`STOP_SECONDS`)."""
        self._closed.set()
        for worker in self._workers:
            # a caller polling for a reply notices the flag within POLL_SECONDS and lets go
            locked = worker.lock.acquire(timeout=4 * POLL_SECONDS)
            try:
                worker.stop()
            finally:
                if locked:
                    worker.lock.release()


def start_pool(
    size: int, target: str, args: Sequence[Any] = (), warm_up: str | None = None
) -> WorkerPool:
    """A :class:`WorkerPool` of ``size`` processes serving ``target(*args)``.

    ``warm_up``: a ``module:function`` called as ``function(*args, slot, size)`` in each worker.
    """
    warm = AppFactory(warm_up, tuple(args)) if warm_up else None
    return WorkerPool(size, AppFactory(target, tuple(args)), warm)


def start_pool_in_background(
    size: int, target: str, args: Sequence[Any] = (), warm_up: str | None = None
) -> Future[WorkerPool]:
    """:func:`start_pool` on a thread: the caller goes on (e.g. importing Flower) while the fork
    server finishes its imports and forks the workers."""
    future: Future[WorkerPool] = Future()

    def start() -> None:
        try:
            future.set_result(start_pool(size, target, args, warm_up))
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=start, name="trialfed-start-site-workers", daemon=True).start()
    return future
