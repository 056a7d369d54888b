"""``python -m tests.training_simulation OUT PLAN BUNDLE...``: one training run on Flower's
Simulation Runtime (Ray backend, one virtual SuperNode per bundle), in a process of its own so
that Ray starts and stops with it. Writes ``OUT/state.npz`` and ``OUT/outcome.json``."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from federation.simulation import ray_init_args  # its import sets Flower's and Ray's env


def main(out: Path, plan: str, bundles: list[str]) -> int:
    """Run the plan's ``risk`` analysis; 0 when an outcome was written."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from federation.training import run_training
    from federation.training_client import training_client_app

    sink: list[Any] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            sink.append(run_training(grid, plan, "risk", timeout=120, expected_nodes=len(bundles)))
        except Exception as exc:  # written out below
            sink.append(exc)

    client = training_client_app(bundles)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # run_simulation is deprecated
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=len(bundles),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": ray_init_args(2),
            },
        )
    if not sink or isinstance(sink[0], Exception):
        print(f"no outcome: {sink!r}", file=sys.stderr)
        return 1
    np.savez(out / "state.npz", **sink[0].state)
    (out / "outcome.json").write_text(json.dumps(sink[0].to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]).read_text(), sys.argv[3:]))
