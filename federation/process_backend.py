"""A Flower Simulation Runtime backend that runs ClientApps in local worker processes.

Flower's simulation runtime (``flwr.server.superlink.fleet.vce``: in-memory LinkState, the
worker threads of ``run_api``) hands each message to a :class:`~flwr.server.superlink.fleet.vce.
backend.Backend`. Flower 1.42 ships one, Ray's, whose start and stop cost 10-15 s on a 2-core
machine (a Ray cluster of seven processes) before the first message. This backend implements the
same interface over :class:`federation.workers.WorkerPool`: plain processes, forked by a server
that has already imported the site code, each virtual site pinned to one process.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from federation.flower_internals import (
    PARTITION_ID_KEY,
    Backend,
    BackendConfig,
    ClientAppException,
)
from federation.workers import WorkerError, WorkerPool

THREADS_PER_WORKER = 2
"""Runtime threads per worker process: while one waits on a busy worker, another can feed an
idle one."""


class ProcessBackend(Backend):
    """Runs each message in the worker process that owns the message's virtual site.

    Parameters
    ----------
    pool : WorkerPool
        Started by the launcher (it outlives :meth:`build`; :meth:`terminate` closes it).
    backend_config : BackendConfig, optional
        Accepted for interface compatibility; the pool's size is the backend's parallelism.
    """

    def __init__(self, pool: WorkerPool, backend_config: BackendConfig | None = None) -> None:
        super().__init__(backend_config or {})
        self.pool = pool

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """Nothing to build: the workers construct the ClientApp from the pool's factory."""

    @property
    def num_workers(self) -> int:
        """Messages processed concurrently by the runtime's threads."""
        return self.pool.size * THREADS_PER_WORKER

    def is_worker_idle(self) -> bool:
        """Always true: a job waits for its site's worker inside :meth:`process_message`."""
        return True

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        """Run the ClientApp on ``message`` in the site's worker; returns reply and context."""
        partition = int(context.node_config[PARTITION_ID_KEY])
        try:
            return self.pool.run(partition, message, context)
        except WorkerError as exc:
            raise ClientAppException(str(exc)) from exc

    def terminate(self) -> None:
        """Stop every worker process."""
        self.pool.close()
