"""``trialfed run``: run an analysis plan and write results.json (and the MLflow run)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analysis.base import json_safe
from analysis.errors import UserError
from analysis.kinds.format import LANGUAGES
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


def describe_sites(paths: list[Path]) -> list[dict[str, Any]]:
    """Each bundle's public description from its ``site.toml``: id, name, country, folder.

    The report and MLflow list sites by id; an entry without one (a bare folder path) would be
    a phantom site, so a bundle whose ``site.toml`` does not parse is refused here."""
    from sites.bundle import read_site_toml

    described = []
    for path in paths:
        site, problems = read_site_toml(path / "site.toml")
        if problems:
            raise UserError(f"{path / 'site.toml'}: " + "; ".join(problems))
        described.append({k: site[k] for k in ("id", "name", "country")} | {"path": str(path)})
    return described


def synthetic_bundles(paths: list[Path]) -> bool:
    """The bundles were written by ``trialfed synth``: it leaves ``truth.json`` beside the
    ``sites/`` folder that holds them."""
    return bool(paths) and all((p.parent.parent / "truth.json").is_file() for p in paths)


def run_languages(value: str | None, plan: Plan) -> list[str]:
    """``--lang en,ja`` as a list (the first renders the console and report.html); default:
    the plan's ``[study] language``, else English."""
    from experiments import fonts

    chosen = [v.strip() for v in (value or "").split(",") if v.strip()]
    chosen = chosen or [str(getattr(plan, "language", "") or "en")]
    for lang in chosen:
        if lang not in LANGUAGES:
            raise UserError(f"--lang must be one of {', '.join(LANGUAGES)}; got {lang!r}")
        fonts.require(lang)
    return list(dict.fromkeys(chosen))


def build_results(
    plan: Plan, outcome: Any, engine: str, seconds: float, *, synthetic: bool = False
) -> dict[str, Any]:
    """The results.json document (docs/design.md); ``plan`` holds the plan's canonical
    tables (the report reads the reference levels from them), ``synthetic`` marks generated
    data."""
    study: dict[str, Any] = {"id": plan.study_id, "title": plan.title}
    for key in ("language", "primary", "time_unit"):  # plan keys proposed for [study]
        if getattr(plan, key, None):
            study[key] = getattr(plan, key)
    return json_safe(
        {
            "study": study,
            "synthetic": synthetic,
            "plan": plan.canonical(),
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
    on_submit: Callable[[int], None] | None = None,
) -> Any:
    """Run the plan on the chosen engine and return the protocol outcome.

    The simulation engine may still be winding down when this returns (it overlaps the output
    writing); :func:`main_run` waits for it before exiting.
    """
    if sites is not None:
        from federation.simulation import run_simulated

        return run_simulated(plan, sites, progress=_progress, backend=backend, wait=False)
    from experiments.deploy import run_deployed

    return run_deployed(plan, coordinator or "", ca, progress=_progress, on_submit=on_submit)


DEPLOYMENT_TAG = "trialfed.deployment_run"


def deployment_run_tag(ca: Path, run_id: int) -> str:
    """The MLflow tag value naming a deployed run: the federation's CA fingerprint + run id."""
    digest = hashlib.sha256(ca.read_bytes()).hexdigest()[:16]
    return f"{digest}/{run_id}"


def _tagger(run: Any, ca: Path | None) -> Callable[[int], None] | None:
    """Tags the MLflow run with the deployed run it tracks, so that ``trialfed results`` finds
    it again instead of creating another."""
    if ca is None:
        return None
    authority = ca

    def tag(run_id: int) -> None:
        run.tag(DEPLOYMENT_TAG, deployment_run_tag(authority, run_id))

    return tag


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

    site_info = describe_sites(sites) if sites else []
    languages = run_languages(getattr(args, "lang", None), plan)
    synthetic = synthetic_bundles(sites or [])
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
            plan_name=Path(args.plan).stem,
            languages=languages,
        ) as run:
            outcome = execute(
                plan, sites, args.coordinator, args.ca, backend, _tagger(run, args.ca)
            )
            seconds = time.perf_counter() - start
            results = build_results(plan, outcome, engine, seconds, synthetic=synthetic)
            run.complete(results, out_dir)
    except RunFailed as exc:
        print(f"trialfed: run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        _engine_stopped(sites is not None)
    results = json.loads((out_dir / "results.json").read_text())
    print(format_results(results, languages[0]))
    print(f"\nresults: {out_dir / 'results.json'}", file=sys.stderr)
    return 0
