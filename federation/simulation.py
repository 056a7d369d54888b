"""The embedded default engine: Flower's Simulation Runtime, in this process.

The choice of Flower entry point lives here alone. Two backends run the virtual SuperNodes'
ClientApps:

- ``"process"`` (default): Flower's Simulation Runtime as ``run_simulation`` builds it (an
  in-memory LinkState, an :class:`~flwr.superlink.grid.InMemoryGrid` for the ServerApp, the
  runtime's ``run_api`` worker loop) with :class:`federation.process_backend.ProcessBackend`:
  local worker processes, each virtual site pinned to one. Nothing but the backend differs from
  Flower's own path, and the ServerApp and ClientApp are the same objects.
- ``"ray"``: ``flwr.simulation.run_simulation`` with Flower's Ray backend. Ray's start and stop
  cost 10-15 s on a 2-core machine; kept for setups that want Ray's resource scheduling.

``flwr run`` is not used: it leaves a detached simulation SuperLink running after the run (see
docs/design.md); in-process keeps a run self-contained and leaves no process behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.errors import UserError
from federation import workers

if TYPE_CHECKING:  # imported where used: the site workers start before the coordinator's imports
    from analysis.plan import Plan
    from federation.protocol import Outcome, Progress

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences a FutureWarning on CPU-only runs
}.items():
    os.environ.setdefault(_key, _value)

BACKENDS = ("process", "ray")
"""Simulation backends (see the module notes)."""
STOP_SECONDS = 30.0
"""How long the runtime may take to wind down after the ServerApp has finished."""
START_SECONDS = 120.0
"""How long the site worker processes may take to start."""
PULL_SECONDS = 0.01
"""How often the ServerApp's in-memory Grid looks for replies (Flower's default: 0.1 s)."""
OBJECT_STORE_BYTES = 512 * 2**20
"""Ray object store size: messages are aggregates (kilobytes), so the default (30 % of the
machine's memory, reserved in /dev/shm) is far more than a run needs."""


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`; UserError naming the allowed set otherwise."""
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {set(BACKENDS)}; got {backend!r}")
    return backend


def run_simulated(
    plan: Plan,
    bundles: Sequence[Path],
    progress: Progress | None = None,
    cpus: int | None = None,
    backend: str = "process",
    wait: bool = True,
) -> Outcome:
    """Run ``plan`` over one virtual SuperNode per site bundle; return the protocol outcome.

    Parameters
    ----------
    plan : Plan
    bundles : sequence of Path
        One site bundle folder per virtual SuperNode (partition id = position).
    progress : callable, optional
        Receives one line per round.
    cpus : int, optional
        Parallel ClientApps (worker processes or Ray actors); default: one per site, at most the
        machine's CPUs.
    backend : {"process", "ray"}
    wait : bool
        Return only once the engine has stopped (every worker process ended). With ``False``
        the process backend winds down on a thread while the caller writes its outputs; call
        :func:`wait_stopped` before exiting.
    """
    from federation.protocol import RunFailed

    check_backend(backend)
    cpus = cpus or min(len(bundles), os.cpu_count() or 1)
    sink: list[Any] = []
    with _quiet_flower(progress):
        if backend == "ray":
            with _run_cache(len(bundles) > cpus):
                _run_ray(plan, bundles, sink, cpus)
        else:
            _run_processes(plan, bundles, sink, cpus)
    if wait:
        wait_runtime_stopped()
    if not sink:
        raise RunFailed("the simulation ended without a result from the ServerApp")
    if isinstance(sink[0], BaseException):
        raise sink[0]
    outcome: Outcome = sink[0]
    return outcome


_STOPPING: list[threading.Thread] = []
_RUNTIMES: list[threading.Thread] = []


def wait_stopped(timeout: float = STOP_SECONDS) -> bool:
    """Wait for engines that are winding down (see ``run_simulated(wait=False)``).

    Returns False when one is still running after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while _STOPPING:
        thread = _STOPPING.pop(0)
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
    return True


def wait_runtime_stopped(timeout: float = STOP_SECONDS) -> bool:
    """Wait for the Simulation Runtime's threads too (about a second after a run ends)."""
    deadline = time.monotonic() + timeout
    while _RUNTIMES:
        _RUNTIMES.pop(0).join(max(0.0, deadline - time.monotonic()))
    return wait_stopped(max(0.0, deadline - time.monotonic()))


def _wind_down(pool: workers.WorkerPool, runtime: threading.Thread | None) -> None:
    """Stop the worker processes and the fork server, on a thread of its own.

    The caller writes its outputs meanwhile; :func:`wait_stopped` waits for this thread. The
    runtime's own threads (daemon threads) notice the stop flag within about a second, at their
    queue timeouts, and end by themselves: no process or file is left to them.
    """

    def stop() -> None:
        pool.close()
        workers.stop_fork_server()

    thread = threading.Thread(target=stop, name="trialfed-simulation-stop")
    thread.start()
    _STOPPING.append(thread)
    if runtime is not None:
        _RUNTIMES.append(runtime)


def _run_processes(plan: Plan, bundles: Sequence[Path], sink: list[Any], cpus: int) -> None:
    """Flower's Simulation Runtime with the process backend (mirrors ``run_simulation``)."""
    paths = [str(Path(b).resolve()) for b in bundles]
    # The workers start (and load their sites' bundles) while this thread imports Flower.
    pending = workers.start_pool_in_background(
        cpus, "federation.client_app:make_client_app", (paths,), "federation.client_app:warm_sites"
    )
    try:
        from federation import flower_internals as flower
        from federation.client_app import make_client_app
        from federation.linkstate import NodeIndexedLinkStateFactory
        from federation.process_backend import ProcessBackend
        from federation.server_app import make_server_app
    except BaseException:  # an incomplete install: the workers must not outlive the run
        _wind_down(pending.result(START_SECONDS), None)
        raise

    pool = pending.result(START_SECONDS)
    runtime: threading.Thread | None = None
    try:
        state_factory = flower.in_memory_state_factory(NodeIndexedLinkStateFactory)
        run = flower.create_run(state_factory.state())
        grid = flower.in_memory_grid(state_factory, run, PULL_SECONDS)
        nodes, stores = flower.register_virtual_nodes(len(paths), state_factory, run)
        server_app = make_server_app(plan, expected_nodes=len(paths), sink=sink)
        client_app = make_client_app(paths)  # built in each worker; here for the interface
        stop = threading.Event()
        backend = ProcessBackend(pool)
        runtime = threading.Thread(
            target=flower.run_runtime,
            args=(client_app, backend, nodes, state_factory, stores, stop),
            name="trialfed-simulation-runtime",
            daemon=True,
        )
        runtime.start()
        try:
            flower.serve(grid, run, server_app)
        except BaseException as exc:  # e.g. a Flower error outside the ServerApp's own
            sink.append(exc)
        finally:
            stop.set()
    finally:
        _wind_down(pool, runtime)


@contextlib.contextmanager
def _quiet_flower(progress: Progress | None) -> Iterator[None]:
    """Flower's own INFO lines off; trialfed's progress lines to ``progress``."""
    logger = logging.getLogger("trialfed")
    handler = _ProgressHandler(progress) if progress else None
    if handler:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)  # Flower's own INFO lines and deprecation notice
    try:
        yield
    finally:
        flwr_logger.setLevel(level)
        if handler:
            logger.removeHandler(handler)


def ray_init_args(cpus: int) -> dict[str, Any]:
    """Arguments of ``ray.init`` for a simulation on ``cpus`` CPUs."""
    return {
        "num_cpus": cpus,
        "include_dashboard": False,
        "object_store_memory": OBJECT_STORE_BYTES,
        "logging_level": logging.WARNING,  # no "Started a local Ray instance" line
    }


def _start_ray(init_args: dict[str, Any]) -> None:
    """Start Ray before Flower does, without a ``runtime_env``.

    Flower's backend calls ``ray.init(runtime_env={"env_vars": {"PYTHONPATH": ...}})`` unless
    Ray is already initialised; a runtime_env makes Ray set up every worker through its runtime
    env agent (about 2 s more before the first round on 2 cores). The same PYTHONPATH reaches the
    workers here by inheritance. Must run on the main thread: Ray ties its processes to the
    lifetime of the thread that started them.
    """
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    import ray

    if not ray.is_initialized():
        ray.init(**init_args)


@contextlib.contextmanager
def _run_cache(wanted: bool) -> Iterator[None]:
    """A parsed-bundle cache (:mod:`sites.cache`) in a temporary folder for a Ray run.

    Ray hands a virtual node's message to whichever actor is idle, so with more sites than
    actors a site moves between actor processes from round to round, and each process would
    parse its files again. With the cache a process reads the validated tables as Parquet
    instead. Only when ``wanted`` and the user has not set a cache (``TRIALFED_BUNDLE_CACHE``).
    """
    from sites.cache import CACHE_ENV  # here: it imports pandas, which the launcher defers

    if not wanted or os.environ.get(CACHE_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="trialfed-bundles-") as folder:
        os.environ[CACHE_ENV] = folder  # inherited by Ray's worker processes
        try:
            yield
        finally:
            os.environ.pop(CACHE_ENV, None)


def _run_ray(plan: Plan, bundles: Sequence[Path], sink: list[Any], cpus: int) -> None:
    init_args = ray_init_args(cpus)
    _start_ray(init_args)
    from flwr.simulation import run_simulation

    from federation.client_app import make_client_app
    from federation.server_app import make_server_app

    try:
        run_simulation(
            server_app=make_server_app(plan, expected_nodes=len(bundles), sink=sink),
            client_app=make_client_app(list(bundles)),
            num_supernodes=len(bundles),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": init_args,
            },
        )
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():  # Flower shuts it down on a normal end
            ray.shutdown()


class _ProgressHandler(logging.Handler):
    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress(record.getMessage())
