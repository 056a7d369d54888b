"""Soak of a deployment on loopback: a coordinator and 5 sites as ``trialfed`` processes,
:data:`SOAK_RUNS` consecutive one-round plans, the first site restarted (SIGTERM, started again
at once) during every tenth run. Every run must complete or fail naming the restarted site; the
process and open-file counts of every tree are compared before and after, and the memory (RSS)
of every long-lived process is followed over the runs."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.data import write_sites
from benchmarks.loopback import LoopbackFederation

SOAK_SITES = 5
SOAK_RUNS = 50
RESTART_EVERY = 10
SOAK_PLAN = """# Soak: one round (summary + Kaplan-Meier), repeated.
[study]
id = "BENCH-SOAK"
title = "trialfed benchmark: soak"

[run]
min_sites = 0
round_timeout = 30.0

[[analysis]]
name = "table1"
kind = "summary"
by = "TRT01P"

[[analysis]]
name = "km"
kind = "km"
param = "OS"
by = "TRT01P"
"""


def _snapshot(fed: LoopbackFederation) -> dict[str, dict[str, float]]:
    """RSS (MB) and open files of every process of every tree now."""
    found = {}
    for name, proc in fed.long_lived().items():
        with contextlib.suppress(psutil.Error):
            found[name] = {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds()}
    return found


def _counts(snap: dict[str, dict[str, float]]) -> dict[str, int]:
    steady = {k: v for k, v in snap.items() if "flwr-serverapp" not in k}
    return {"processes": len(steady), "open_files": int(sum(v["fds"] for v in steady.values()))}


def bench_soak(work: Path, runs: int, timeout: float) -> dict[str, Any]:
    """:data:`SOAK_RUNS` one-round plans over 5 sites, a site restarted every tenth run."""
    from analysis.plan import parse_plan
    from federation.deployment.control import run_deployed
    from federation.deployment.roster import Roster

    base = work / "soak"
    shutil.rmtree(base, ignore_errors=True)
    bundles = write_sites(base / "data", SOAK_SITES * 200, SOAK_SITES, "csv")
    fed = LoopbackFederation(base, bundles)
    plan = parse_plan(SOAK_PLAN, "soak plan")
    outcomes: list[dict[str, Any]] = []
    memory: dict[str, list[float]] = {}
    try:
        fed.start()
        before: dict[str, int] = {}
        for n in range(1, runs + 1):
            restart: threading.Timer | None = None
            entry: dict[str, Any] = {"run": n, "restarted": None}
            if n % RESTART_EVERY == 0:  # the site restarts while the run is under way
                connected = fed.connected_count(0)
                entry["restarted"] = fed.site_name(0)
                restart = threading.Timer(0.5, fed.restart_site, args=(0,))
                restart.start()
            started = time.perf_counter()
            try:
                outcome = run_deployed(plan, fed.control, fed.certs.ca_cert, home=base / "cli",
                                       timeout=timeout, roster=Roster(fed.state))  # fmt: skip
                entry.update(result="completed", sites=len(outcome.sites),
                             missing=[m["id"] for m in outcome.sites_missing])  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - each failure is recorded and judged below
                entry.update(result="failed", error=f"{type(exc).__name__}: {exc}"[:600])
            entry["seconds"] = round(time.perf_counter() - started, 2)
            if restart is not None:
                restart.join()
                fed.wait_connected(0, after=connected)
            outcomes.append(entry)
            snap = _snapshot(fed)
            if n == 1:
                before = _counts(snap)
            for name, values in snap.items():
                if "flwr-serverapp" not in name:
                    memory.setdefault(name, []).append(round(values["rss_mb"], 1))
        after = _counts(_snapshot(fed))
    finally:
        fed.stop()
    return _soak_doc(outcomes, before, after, memory, runs)


def _soak_doc(
    outcomes: list[dict[str, Any]],
    before: dict[str, int],
    after: dict[str, int],
    memory: dict[str, list[float]],
    runs: int,
) -> dict[str, Any]:
    clean = [
        o for o in outcomes
        if o["result"] == "completed"
        or (o["restarted"] is not None and o["restarted"] in o.get("error", ""))
    ]  # fmt: skip
    through = {k: v for k, v in memory.items() if len(v) == runs}  # never restarted
    return {
        "sites": SOAK_SITES,
        "runs": runs,
        "completed": sum(1 for o in outcomes if o["result"] == "completed"),
        "failed_naming_the_site": sum(
            1 for o in outcomes if o["result"] == "failed" and o in clean
        ),
        "unclean": [o for o in outcomes if o not in clean],
        "seconds_per_run": sorted(o["seconds"] for o in outcomes)[len(outcomes) // 2],
        "before": before,
        "after": after,
        "rss_mb": {
            k: {"first": v[0], "max": max(v), "last": v[-1], "growth": round(v[-1] - v[0], 1)}
            for k, v in sorted(through.items())
        },
        "runs_detail": outcomes,
    }


def soak_lines(soak: dict[str, Any] | None) -> list[str]:
    """The soak figures as Markdown (benchmarks/summary.py)."""
    lines: list[str] = []
    if soak and "error" not in soak:
        growth = [v["growth"] for v in soak["rss_mb"].values()]
        lines += [
            f"Soak: {soak['runs']} runs on {soak['sites']} sites, a site restarted during every "
            f"{RESTART_EVERY}th run: {soak['completed']} completed, "
            f"{soak['failed_naming_the_site']} failed naming the restarted site, "
            f"{len(soak['unclean'])} otherwise; median {soak['seconds_per_run']} s per run. "
            f"Processes {soak['before']['processes']} -> {soak['after']['processes']}, open "
            f"files {soak['before']['open_files']} -> {soak['after']['open_files']}; RSS growth "
            f"of the long-lived processes over the runs: max {max(growth, default=0):+.1f} MB.",
            "",
            "| process | RSS first MB | max | last |",
            "|---|---|---|---|",
        ]
        for name, v in soak["rss_mb"].items():
            lines.append(f"| {name.rsplit('/', 1)[0]} | {v['first']} | {v['max']} | {v['last']} |")
        lines.append("")
    elif soak:
        lines += [f"Soak failed: {soak['error']}", ""]
    return lines
