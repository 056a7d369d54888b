"""``trialfed run``: run an analysis plan and write results.json (and the MLflow run)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from analysis.base import json_safe
from analysis.errors import UserError
from analysis.plan import Plan
from experiments.console import format_results
from experiments.plan import load_plan
from experiments.tracking import package_versions


class RunError(Exception):
    """A run that failed for a reason other than the user's input (exit status 1)."""


def check_bundle_paths(paths: list[Path]) -> list[Path]:
    """Cheap coordinator-side check before the engine starts: each path is a site bundle."""
    resolved = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path}: site bundle folder not found")
        if not (path / "site.toml").is_file():
            raise UserError(f"{path}: not a site bundle (no site.toml in it)")
        resolved.append(path.resolve())
    if len(set(resolved)) != len(resolved):
        raise UserError("--sites names the same bundle folder twice")
    return resolved


def build_results(plan: Plan, outcome: Any, engine: str, seconds: float) -> dict[str, Any]:
    """The results.json document (docs/design.md)."""
    return json_safe(
        {
            "study": {"id": plan.study_id, "title": plan.title},
            "plan_sha256": plan.sha256,
            "engine": engine,
            "sites": outcome.sites,
            "sites_missing": outcome.sites_missing,
            "rounds": outcome.rounds,
            "seconds": seconds,
            "round_seconds": outcome.round_seconds,
            "versions": {"python": sys.version.split()[0], **package_versions()},
            "refusals": getattr(outcome, "refusals", []),
            "disclosure": getattr(outcome, "disclosure", []),
            "analyses": outcome.analyses,
            **({"secure_aggregation": outcome.secure} if getattr(outcome, "secure", None) else {}),
        }
    )


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def execute(
    plan: Plan,
    sites: list[Path] | None,
    coordinator: str | None,
    ca: Path | None,
    backend: str = "process",
) -> Any:
    """Run the plan on the chosen engine and return the protocol outcome.

    The simulation engine may still be winding down when this returns (it overlaps the output
    writing); :func:`main_run` waits for it before exiting.
    """
    if sites is not None:
        from federation.simulation import run_simulated

        return run_simulated(plan, sites, progress=_progress, backend=backend, wait=False)
    from experiments.deploy import run_deployed

    return run_deployed(plan, coordinator or "", ca, progress=_progress)


def _engine_stopped(simulated: bool) -> None:
    """Wait for the simulation engine's processes to end (a run leaves none behind)."""
    if simulated and "federation.simulation" in sys.modules:
        from federation.simulation import STOP_SECONDS, wait_stopped

        if not wait_stopped(STOP_SECONDS):
            print("trialfed: warning: the simulation engine did not stop in time", file=sys.stderr)


def main_run(args: argparse.Namespace) -> int:
    """Entry point of ``trialfed run``."""
    plan = load_plan(args.plan)
    sites = check_bundle_paths(list(args.sites)) if args.sites else None
    backend = getattr(args, "backend", "process")
    if sites is not None and backend == "process":
        from federation import workers

        workers.prestart()  # the site workers' imports overlap the coordinator's from here on
    from federation.protocol import RunFailed

    engine = "simulation" if sites is not None else "deployment"
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"trialfed: running plan {plan.study_id} ({len(plan.analyses)} analyses) on "
        f"{len(sites) if sites else 'the federation at ' + str(args.coordinator)}"
        f"{' sites' if sites else ''} [{engine}]",
        file=sys.stderr,
    )
    from experiments.tracking import tracked_run

    site_info = [{"path": str(p)} for p in sites] if sites else []
    start = time.perf_counter()
    try:
        with tracked_run(
            study_id=plan.study_id,
            study_title=plan.title,
            plan_text=plan.text,
            plan_sha256=plan.sha256,
            sites=site_info,
            engine=engine,
            enabled=not args.no_tracking,
        ) as run:
            outcome = execute(plan, sites, args.coordinator, args.ca, backend)
            results = build_results(plan, outcome, engine, time.perf_counter() - start)
            run.complete(results, out_dir)
    except RunFailed as exc:
        print(f"trialfed: run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        _engine_stopped(sites is not None)
    results = json.loads((out_dir / "results.json").read_text())
    print(format_results(results))
    print(f"\nresults: {out_dir / 'results.json'}", file=sys.stderr)
    return 0
