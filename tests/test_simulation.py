"""``trialfed run`` as a whole process in the Flower simulation engine (the embedded default).

The numbers must be identical to the in-process protocol (same aggregates, same order of sums),
the MLflow run must be FINISHED or FAILED as the run was, and no engine process may be left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.plan import parse_plan
from experiments.launch import build_results
from federation.inprocess import InProcessTransport
from federation.protocol import run_plan
from tests.cdisc import split_cdisc_pilot

pytestmark = pytest.mark.slow

PLAN = """
[study]
id = "PILOT"
title = "CDISC pilot split by SITEID"

[[analysis]]
name = "t1"
kind = "summary"

[[analysis]]
name = "km"
kind = "km"
param = "TTDE"
by = "TRT01P"
times = [0, 30, 90]

[[analysis]]
name = "lr"
kind = "logrank"
param = "TTDE"
by = "TRT01P"
strata = ["SITE"]

[[analysis]]
name = "cox"
kind = "cox"
param = "TTDE"
covariates = ["TRT01P", "AGE", "SEX"]
reference = { TRT01P = "Placebo", SEX = "F" }
strata = ["SITE"]
"""


ENGINE_PROCESSES = ("raylet", "gcs_server", "multiprocessing.forkserver")
"""Command-line marks of the engines' processes: Ray's daemons; the process backend's fork
server and its site workers (forked from it, so they show the same command line)."""


def _engine_processes() -> set[int]:
    """PIDs of simulation-engine processes running now."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return {
        int(line.split()[0])
        for line in out.stdout.splitlines()[1:]
        if any(mark in line for mark in ENGINE_PROCESSES)
    }


def _trialfed(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run(
        [sys.executable, "-m", "experiments.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run_plan(
    bundles: list[Path], tmp_path: Path, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``trialfed run PLAN --sites ... --out tmp_path/out`` as a whole process."""
    plan_path = tmp_path / "plan.toml"
    plan_path.write_text(PLAN)
    args = ["run", str(plan_path), "--sites", *map(str, bundles), "--out", str(tmp_path / "out")]
    return _trialfed([*args, *extra], tmp_path)


def _mlflow_runs(cwd: Path) -> list[tuple[str, str]]:
    import sqlite3

    with sqlite3.connect(cwd / "mlflow.db") as db:
        rows = db.execute("select run_uuid, status from runs").fetchall()
    return [(str(a), str(b)) for a, b in rows]


def test_simulation_run_equals_in_process_protocol(cdisc_dir: Path, tmp_path: Path) -> None:
    bundles = split_cdisc_pilot(cdisc_dir, tmp_path / "sites", sites=["701", "705", "708"])
    before = _engine_processes()
    done = _run_plan(bundles, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "[cox] Cox proportional hazards model of Time to First Dermatologic Event" in done.stdout
    assert "Primary result: Hazard ratio, Xanomeline High Dose vs Placebo" in done.stdout
    assert _engine_processes() <= before, "the simulation engine left processes behind"

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    plan = parse_plan(PLAN)
    reference = build_results(plan, run_plan(plan, InProcessTransport(bundles)), "x", 0.0)
    assert results["engine"] == "simulation"
    assert results["analyses"] == reference["analyses"]
    assert results["rounds"] == reference["rounds"]
    assert sorted(s["id"] for s in results["sites"]) == ["SITE701", "SITE705", "SITE708"]
    runs = _mlflow_runs(tmp_path)
    assert results["mlflow_run_id"] in {run for run, _ in runs}
    assert {status for _, status in runs} == {"FINISHED"}


def test_a_site_with_bad_data_fails_the_run_with_exit_2(cdisc_dir: Path, tmp_path: Path) -> None:
    bundles = split_cdisc_pilot(cdisc_dir, tmp_path / "sites", sites=["701", "705"], fmt="csv")
    adtte = bundles[1] / "adtte.csv"
    text = adtte.read_text().splitlines()
    header = text[0].split(",")
    row = text[3].split(",")
    row[header.index("CNSR")] = "7"
    text[3] = ",".join(row)
    adtte.write_text("\n".join(text) + "\n")
    before = _engine_processes()
    done = _run_plan(bundles, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "adtte.csv: column CNSR, row 3" in done.stderr
    assert "unknown censoring code 7" in done.stderr
    assert not (tmp_path / "out" / "results.json").exists()
    assert {status for _, status in _mlflow_runs(tmp_path)} == {"FAILED"}
    assert _engine_processes() <= before


def test_ray_backend_gives_the_same_numbers(cdisc_dir: Path, tmp_path: Path) -> None:
    bundles = split_cdisc_pilot(cdisc_dir, tmp_path / "sites", sites=["701", "705", "708"])
    before = _engine_processes()
    done = _run_plan(bundles, tmp_path, ("--backend", "ray", "--no-tracking"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert _engine_processes() <= before, "Ray left processes behind"
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    plan = parse_plan(PLAN)
    reference = build_results(plan, run_plan(plan, InProcessTransport(bundles)), "x", 0.0)
    assert results["analyses"] == reference["analyses"]


def test_unknown_backend_is_a_user_error(cdisc_dir: Path, tmp_path: Path) -> None:
    bundles = split_cdisc_pilot(cdisc_dir, tmp_path / "sites", sites=["701"])
    done = _run_plan(bundles, tmp_path, ("--backend", "threads"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--backend" in done.stderr and "'threads'" in done.stderr and "process" in done.stderr
