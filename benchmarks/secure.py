"""Secure aggregation (SecAgg+) against the plain run, side by side (issue 15).

The standard efficacy plan and the site-stratified Cox plan, each run twice on the same bundles
with ``trialfed run`` as a whole process: plain, and with ``[run] secure_aggregation = true``.
Recorded: wall seconds, protocol seconds and seconds per round, rounds, the answers' largest
differences (counts must be equal), and the payload bytes each site sends and receives (a second,
in-process run per plan: :mod:`benchmarks.secure_bytes`). Goal: a secure run within 3 times the
plain run's wall time.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.data import write_sites
from benchmarks.measure import measure
from benchmarks.plans import COX_PLAN, EFFICACY_PLAN, write_plan

Runner = Callable[[Path, list[Path], Path, float], dict[str, Any]]
COUNTS = {"n", "events", "censored", "at_risk", "observed", "df", "age_n"}


def with_secure(text: str) -> str:
    """The plan with ``[run] secure_aggregation = true``."""
    return re.sub(r"\[run\]\n", "[run]\nsecure_aggregation = true\n", text, count=1)


def differences(plain: Any, secure: Any) -> tuple[float, float, int]:
    """Largest |difference| of coefficients, of standard errors, and the count mismatches."""
    worst = {"coef": 0.0, "se": 0.0}
    mismatches = 0

    def walk(a: Any, b: Any, key: str) -> None:
        nonlocal mismatches
        if isinstance(a, dict) and isinstance(b, dict):
            for k in set(a) & set(b) - {"history", "rounds", "secure_aggregation"}:
                walk(a[k], b[k], k)
        elif isinstance(a, list) and isinstance(b, list):
            mismatches += len(a) != len(b)
            for x, y in zip(a, b, strict=False):
                walk(x, y, key)
        elif isinstance(a, int | float) and isinstance(b, int | float) and key in worst:
            if not (math.isnan(a) and math.isnan(b)):
                worst[key] = max(worst[key], abs(a - b))
        elif key in COUNTS and a != b:
            mismatches += 1

    walk(plain, secure, "")
    return worst["coef"], worst["se"], mismatches


def _bytes(work: Path, name: str, plans: list[Path], sites: list[Path], timeout: float) -> Any:
    target = work / "out" / f"secure_bytes_{name}.json"
    cmd = [sys.executable, "-m", "benchmarks.secure_bytes", str(target), *map(str, plans)]
    m = measure([*cmd, "--sites", *map(str, sites)], timeout)
    if m.returncode != 0:
        return {"error_tail": m.tail}
    return json.loads(target.read_text())


def bench_secure(work: Path, smoke: bool, timeout: float, run: Runner) -> list[dict[str, Any]]:
    """Both plans, plain and secure (``run`` is :func:`benchmarks.run.trialfed_run`)."""
    cases = [
        ("efficacy", EFFICACY_PLAN, 600 if smoke else 3000, 6),
        ("cox", COX_PLAN, 2000 if smoke else 1_000_000, 10),
    ]
    rows = []
    for name, text, n, count in cases:
        sites = write_sites(work / "data" / f"secure_{name}_{n}", n, count, "csv")
        plans = [
            write_plan(text, work / "plans" / f"{name}_plain.toml"),
            write_plan(with_secure(text), work / "plans" / f"{name}_secure.toml"),
        ]
        plain = run(plans[0], sites, work / "out" / f"{name}_plain", timeout)
        secure = run(plans[1], sites, work / "out" / f"{name}_secure", timeout)
        row: dict[str, Any] = {"plan": name, "n": n, "sites": count}
        if "analyses" in plain and "analyses" in secure:
            coef, se, mismatches = differences(plain.pop("analyses"), secure.pop("analyses"))
            row.update(max_abs_coef_diff=coef, max_abs_se_diff=se, count_mismatches=mismatches)
            row["wall_ratio"] = secure["wall_s"] / plain["wall_s"]
            row["protocol_ratio"] = secure["protocol_s"] / plain["protocol_s"]
        row.update(plain=plain, secure=secure, bytes=_bytes(work, name, plans, sites, timeout))
        rows.append(row)
    return rows


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown for summary.md."""
    lines = [
        "## 6. Secure aggregation (SecAgg+) against the plain run",
        "",
        "Same bundles, `trialfed run` as a whole process; bytes are payload bytes per site "
        "(arrays, keys, shares, masked vectors, text; transport framing not counted), up = "
        "site to coordinator, summed over the run. Goal: secure wall time at most 3x plain.",
        "",
        "| plan | n | sites | run | wall s | protocol s | rounds | seconds per round "
        "| bytes up per site | bytes down per site | load before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in rows:
        for mode in ("plain", "secure"):
            doc = row[mode]
            counts = (row.get("bytes") or {}).get(f"{row['plan']}_{mode}.toml", {}).get("sites", {})
            up = max((c["up"] for c in counts.values()), default=None)
            down = max((c["down"] for c in counts.values()), default=None)
            lines.append(
                f"| {row['plan']} | {row['n']:,} | {row['sites']} | {mode} | {doc['wall_s']:.1f} "
                f"| {doc.get('protocol_s', float('nan')):.2f} | {doc.get('rounds', 'failed')} "
                f"| {[round(r, 2) for r in doc.get('round_s', [])]} "
                f"| {'-' if up is None else f'{up:,}'} | {'-' if down is None else f'{down:,}'} "
                f"| {doc.get('load_before')} |"
            )
        if "wall_ratio" in row:
            notes.append(
                f"- {row['plan']} (n = {row['n']:,}): secure / plain wall **"
                f"{row['wall_ratio']:.2f}x** (protocol {row['protocol_ratio']:.2f}x); max abs "
                f"difference coef {row['max_abs_coef_diff']:.1e}, se {row['max_abs_se_diff']:.1e}; "
                f"count mismatches {row['count_mismatches']}"
            )
    return lines + [""] + notes + [""]
