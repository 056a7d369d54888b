"""The embedded default engine: Flower's simulation runtime, in this process.

The choice of Flower entry point lives here alone. ``flwr.simulation.run_simulation`` is
deprecated in Flower 1.42 in favour of ``flwr run``, but ``flwr run`` leaves a detached
simulation SuperLink running after the run (see docs/design.md); in-process keeps a run
self-contained and leaves no process behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from experiments.plan import Plan
from federation.client_app import make_client_app
from federation.protocol import Outcome, Progress, RunFailed
from federation.server_app import make_server_app
from sites.cache import CACHE_ENV

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences a FutureWarning on CPU-only runs
}.items():
    os.environ.setdefault(_key, _value)


OBJECT_STORE_BYTES = 512 * 2**20
"""Ray object store size: messages are aggregates (kilobytes), so the default (30 % of the
machine's memory, reserved in /dev/shm) is far more than a run needs."""


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


def _import_flower() -> None:
    import flwr.simulation  # noqa: F401


def run_simulated(
    plan: Plan, bundles: Sequence[Path], progress: Progress | None = None, cpus: int | None = None
) -> Outcome:
    """Run ``plan`` over one virtual SuperNode per site bundle; return the protocol outcome."""
    cpus = cpus or min(len(bundles), os.cpu_count() or 1)
    init_args = ray_init_args(cpus)
    with _run_cache(len(bundles) > cpus):
        return _run(plan, bundles, progress, init_args)


@contextlib.contextmanager
def _run_cache(wanted: bool) -> Iterator[None]:
    """A parsed-bundle cache (:mod:`sites.cache`) in a temporary folder for this run.

    Flower hands a virtual node's message to whichever actor is idle, so with more sites than
    actors a site moves between actor processes from round to round, and each process would
    parse its CSV files again. With the cache a process reads the validated tables as Parquet
    instead. Only when ``wanted`` and the user has not set a cache (``TRIALFED_BUNDLE_CACHE``).
    """
    if not wanted or os.environ.get(CACHE_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="trialfed-bundles-") as folder:
        os.environ[CACHE_ENV] = folder  # inherited by Ray's worker processes
        try:
            yield
        finally:
            os.environ.pop(CACHE_ENV, None)


def _run(
    plan: Plan, bundles: Sequence[Path], progress: Progress | None, init_args: dict[str, Any]
) -> Outcome:
    # Flower's imports (about 1 s) overlap Ray's start-up (several processes, seconds)
    importer = threading.Thread(target=_import_flower, daemon=True)
    importer.start()
    try:
        _start_ray(init_args)
    finally:
        importer.join()
    from flwr.simulation import run_simulation

    sink: list[Any] = []
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": init_args,
    }
    logger = logging.getLogger("trialfed")
    handler = _ProgressHandler(progress) if progress else None
    if handler:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)  # Flower's own INFO lines and deprecation notice
    try:
        run_simulation(
            server_app=make_server_app(plan, expected_nodes=len(bundles), sink=sink),
            client_app=make_client_app(list(bundles)),
            num_supernodes=len(bundles),
            backend_config=backend_config,
        )
    finally:
        flwr_logger.setLevel(level)
        if handler:
            logger.removeHandler(handler)
        _stop_ray()
    if not sink:
        raise RunFailed("the simulation ended without a result from the ServerApp")
    if isinstance(sink[0], BaseException):
        raise sink[0]
    outcome: Outcome = sink[0]
    return outcome


def _stop_ray() -> None:
    """Shut Ray down if Flower did not (it does when the run ends normally)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


class _ProgressHandler(logging.Handler):
    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress(record.getMessage())
