"""The embedded default engine: Flower's simulation runtime, in this process.

The choice of Flower entry point lives here alone. ``flwr.simulation.run_simulation`` is
deprecated in Flower 1.42 in favour of ``flwr run``, but ``flwr run`` leaves a detached
simulation SuperLink running after the run (see docs/design.md); in-process keeps a run
self-contained and leaves no process behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.plan import Plan
from federation.client_app import make_client_app
from federation.protocol import Outcome, Progress, RunFailed
from federation.server_app import make_server_app

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences a FutureWarning on CPU-only runs
}.items():
    os.environ.setdefault(_key, _value)


def run_simulated(
    plan: Plan, bundles: Sequence[Path], progress: Progress | None = None, cpus: int | None = None
) -> Outcome:
    """Run ``plan`` over one virtual SuperNode per site bundle; return the protocol outcome."""
    from flwr.simulation import run_simulation

    sink: list[Any] = []
    cpus = cpus or min(len(bundles), os.cpu_count() or 1)
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False},
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
    if not sink:
        raise RunFailed("the simulation ended without a result from the ServerApp")
    if isinstance(sink[0], BaseException):
        raise sink[0]
    outcome: Outcome = sink[0]
    return outcome


class _ProgressHandler(logging.Handler):
    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress(record.getMessage())
