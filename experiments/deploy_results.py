"""``trialfed results RUN_ID --out DIR``: the results of an earlier deployed run, rebuilt from
the coordinator alone: the outcome from the run's log, the plan from the run's config.

``results.json``, the report, tables and plots are written as ``trialfed run`` writes them; the
MLflow run is created unless a FINISHED one tagged with this deployed run
(:data:`DEPLOYMENT_TAG`: the federation's CA fingerprint and the run id) exists already.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from experiments.deploy import find_target
from experiments.launch import DEPLOYMENT_TAG, deployment_run_tag
from federation.deployment.control import Control
from federation.protocol import RunFailed
from federation.runlog import decode_log


def _existing_mlflow_run(study_id: str, tag: str) -> str | None:
    """The FINISHED MLflow run already holding this deployed run's results, if any."""
    from mlflow.tracking import MlflowClient

    from experiments.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(study_id)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{DEPLOYMENT_TAG}` = '{tag}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return str(found[0].info.run_id) if found else None


def rebuild_results(
    control: Control,
    ca: Path,
    run_id: int,
    out: Path,
    *,
    tracking: bool,
    say: Callable[[str], None],
) -> int:
    """Write ``results.json`` (and the MLflow run, unless one exists) of deployed run ``run_id``.

    The outcome comes from the run's log at the coordinator, the plan from its run config.
    """
    from analysis.plan import parse_plan
    from experiments.launch import build_results
    from experiments.tracking import tracked_run
    from federation.deployment.flower_site import run_config

    status = control.status(run_id)
    report = decode_log(control.log(run_id))
    if report.outcome is None:
        if report.failure is not None:
            say(f"run {run_id} ended as {status.status}: {report.failure}")
            return 1
        raise RunFailed(f"run {run_id} ({status.status or 'unknown'}) has no outcome in its log")
    config = run_config(control.coordinator, ca, run_id) or {}
    plan = parse_plan(str(config.get("plan-toml", "")), f"run {run_id}'s run config")
    outcome = report.outcome
    results = build_results(plan, outcome, "deployment", outcome.seconds)
    tag = deployment_run_tag(ca, run_id)
    existing = _existing_mlflow_run(plan.study_id, tag) if tracking else None
    if existing is not None:
        results["mlflow_run_id"] = existing
        say(f"run {run_id}: MLflow run {existing} already holds these results")
    with tracked_run(
        study_id=plan.study_id,
        study_title=plan.title,
        plan_text=plan.text,
        plan_sha256=plan.sha256,
        sites=[],
        engine="deployment",
        enabled=tracking and existing is None,
    ) as run:
        run.complete(results, out)
    if run.run_id is not None:
        from mlflow.tracking import MlflowClient

        MlflowClient(run.tracking_uri).set_tag(run.run_id, DEPLOYMENT_TAG, tag)
        say(f"run {run_id}: MLflow run {run.run_id} created")
    print(f"results of run {run_id} ({status.status}): {out / 'results.json'}", file=sys.stderr)
    return 0


def main_results(args: argparse.Namespace) -> int:
    """``trialfed results RUN_ID --out DIR [--state DIR | --coordinator H:P --ca CA]``."""
    target = find_target(args.coordinator, args.ca, args.state)

    def say(message: str) -> None:
        print(f"trialfed: {message}", file=sys.stderr, flush=True)

    return rebuild_results(
        target.client(), target.ca, args.run_id, args.out, tracking=not args.no_tracking, say=say
    )
