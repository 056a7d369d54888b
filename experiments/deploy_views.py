"""What ``trialfed coordinator sites``, ``trialfed status`` and ``trialfed results`` print and
write: the roster joined with Flower's view of the nodes, the runs, and an earlier run's results
rebuilt from the coordinator's log."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from federation.deployment.control import Control
from federation.deployment.roster import Roster
from federation.protocol import RunFailed
from federation.runlog import decode_log

DEPLOYMENT_TAG = "trialfed.deployment_run"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        (indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()
        for r in [header, *rows]
    )


def last_contact(node: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(status, last contact)`` of a Flower node as ``flwr supernode ls`` reports it."""
    if node is None:
        return "unknown to Flower", "-"
    status = str(node.get("status", "?"))
    if status == "online":
        return status, f"now (connected since {node.get('online-at')})"
    if status == "offline":
        return status, str(node.get("offline-at") or "-")
    return status, "never"


def sites_table(roster: Roster, nodes: Mapping[int, Mapping[str, Any]]) -> str:
    """The roster with each site's status, last contact, version and key fingerprint."""
    sites = roster.sites()
    rows = []
    for site in sites:
        status, contact = last_contact(nodes.get(site.node_id))
        rows.append(
            [
                site.site_id,
                site.country,
                status,
                contact,
                site.version or "-",
                str(site.last_run) if site.last_run is not None else "-",
                site.fingerprint,
                site.enrolled_at,
            ]
        )
    online = sum(1 for r in rows if r[2] == "online")
    text = f"sites: {len(sites)} enrolled, {online} online"
    if rows:
        header = ["SITE", "COUNTRY", "STATUS", "LAST CONTACT", "VERSION", "LAST RUN"]
        text += "\n" + _table([*header, "FINGERPRINT", "ENROLLED"], rows)
    known = {s.node_id for s in sites}
    gone = ("deleted", "unregistered")
    strays = [n for n, node in nodes.items() if n not in known and node.get("status") not in gone]
    for node_id in sorted(strays):
        text += f"\n  warning: Flower node {node_id} is registered but not on the roster"
    return text


def runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """The coordinator's runs, newest first."""
    if not runs:
        return "runs: none"
    rows = [
        [
            str(r.get("run-id")),
            str(r.get("status")),
            str(r.get("pending-at") or "-"),
            str(r.get("finished-at") or "-"),
            str(r.get("elapsed") or "-"),
        ]
        for r in sorted(runs, key=lambda r: int(r.get("run-id", 0)), reverse=True)
    ]
    header = ["RUN", "STATE", "SUBMITTED", "FINISHED", "ELAPSED"]
    return f"runs: {len(rows)}\n" + _table(header, rows)


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
    from experiments.deploy import deployment_run_tag
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
