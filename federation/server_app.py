"""The trialfed ServerApp: runs the round protocol of an analysis plan over the Grid.

Deployment: the plan travels as TOML text in the run config key ``plan-toml``, the roster's
site ids in ``expected-site-ids`` (comma-separated; used when the plan names no sites); the
outcome travels back in the run's log (``federation/runlog.py``).
Simulation: :func:`make_server_app` is given the validated plan and a list to put the outcome in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from analysis.kinds import REGISTRY
from analysis.plan import Plan, parse_plan
from federation.deployment.processes import STOCK_POLLING_ENV
from federation.deployment.state import ROSTER_ENV
from federation.flower_internals import (
    COORDINATOR_GRID,
    use_prompt_object_pulls,
    use_round_bounded_object_pulls,
)
from federation.protocol import run_plan
from federation.runlog import emit_failure, emit_outcome, emit_progress
from federation.secure import SecureGridTransport
from federation.secure_protocol import run_secure

log = logging.getLogger("trialfed")
REPLY_OBJECT_RETRY_S = (0.02, 0.1)
"""A site's reply is visible before its objects; ask again for a missing one after 20 ms,
doubling to 0.1 s (Flower: 1 s doubling to 10 s, a second of every deployed round)."""


def train(plan: Plan, grid: Grid, outcome: Any, progress: Any) -> None:
    """Run the plan's training analyses (Flower's strategies) over the sites that answered."""
    trained = [s for s in plan.analyses if REGISTRY[s.kind].engine == "training"]
    if not trained:
        return
    from federation.training import run_training  # torch: only for plans that train

    for spec in trained:
        result = run_training(
            grid,
            plan.text or plan.to_toml(),
            spec.name,
            timeout=plan.run.round_timeout,
            expected_nodes=len(outcome.sites),
            progress=progress,
            site_nodes=outcome.site_nodes,
        )
        outcome.analyses[spec.name] = result.to_dict()
        outcome.disclosure = [*outcome.disclosure, *result.disclosure]


def roster(context: Context) -> tuple[list[str], dict[int, str]]:
    """The sites a deployed run expects and the node id each enrolled as: the run config's
    ``expected-site-ids`` and ``roster-nodes`` (``NODE=SITE,...``), else the coordinator's roster
    file (``TRIALFED_ROSTER``, set by ``trialfed coordinator start``), so a run submitted from
    elsewhere is held to the roster too. Empty in the simulation engine."""
    config = context.run_config
    sites = [s.strip() for s in str(config.get("expected-site-ids", "")).split(",") if s.strip()]
    nodes: dict[int, str] = {}
    for pair in str(config.get("roster-nodes", "")).split(","):
        if "=" in pair:
            node, site = pair.split("=", 1)
            nodes[int(node)] = site.strip()
    path = os.environ.get(ROSTER_ENV)
    if not sites and not nodes and path and Path(path).is_file():
        from federation.deployment.roster import Roster

        enrolled = Roster(Path(path).parent).sites()
        sites = [s.site_id for s in enrolled]
        nodes = {s.node_id: s.site_id for s in enrolled if s.node_id}
    return sites, nodes


def make_server_app(
    plan: Plan | None = None, expected_nodes: int = 0, sink: list[Any] | None = None
) -> ServerApp:
    """A ServerApp that runs ``plan`` (or the run config's plan) and records the outcome."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        progress = log.info if sink is not None else emit_progress
        if sink is None:  # deployed: a reply whose data never comes costs one round at most
            use_round_bounded_object_pulls(COORDINATOR_GRID)
            if os.environ.get(STOCK_POLLING_ENV) != "1":
                use_prompt_object_pulls(COORDINATOR_GRID, *REPLY_OBJECT_RETRY_S)
        try:
            current = plan or parse_plan(str(context.run_config["plan-toml"]), "run config")
            expected = expected_nodes or int(context.run_config.get("expected-sites", 0))
            transport = SecureGridTransport(grid, expected_nodes=expected)
            sites, nodes = roster(context)
            runner = run_secure if current.run.secure_aggregation else run_plan
            outcome: Any = runner(
                current, transport, progress=progress, expected_sites=sites, node_sites=nodes
            )
            train(current, grid, outcome, progress)
        except Exception as exc:  # handed to the launcher, which reports it
            if sink is None:
                emit_failure(exc)
                raise
            outcome = exc
        if sink is not None:
            sink.append(outcome)
        else:
            emit_outcome(outcome)

    return app


app = make_server_app()
