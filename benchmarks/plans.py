"""Analysis plans of the benchmarks, written as TOML next to the results."""

from __future__ import annotations

from pathlib import Path

from benchmarks.data import COVARIATES, PARAMCD

COX_PLAN = f"""# Benchmark: site-stratified Cox, Efron ties, ten numeric covariates.
[study]
id = "BENCH-COX"
title = "trialfed benchmark: site-stratified Cox"

[run]
min_sites = 0
round_timeout = 1200.0
tolerance = 1e-9

[[analysis]]
name = "cox"
kind = "cox"
param = "{PARAMCD}"
covariates = [{", ".join(f'"{c}"' for c in COVARIATES)}]
strata = ["SITE"]
ties = "efron"
"""

EFFICACY_PLAN = f"""# Benchmark: the standard efficacy plan (experiments/plans/demo_vaccine.toml).
[study]
id = "BENCH-EFFICACY"
title = "trialfed benchmark: standard efficacy plan"

[run]
min_sites = 0
round_timeout = 1200.0
tolerance = 1e-9

[[analysis]]
name = "table1"
kind = "summary"
by = "TRT01P"

[[analysis]]
name = "km"
kind = "km"
param = "{PARAMCD}"
by = "TRT01P"
times = [0, 30, 60, 90, 120, 150, 180]

[[analysis]]
name = "logrank"
kind = "logrank"
param = "{PARAMCD}"
by = "TRT01P"
strata = ["SITE"]

[[analysis]]
name = "cox"
kind = "cox"
param = "{PARAMCD}"
covariates = ["TRT01P", "AGE", "SEX"]
reference = {{ TRT01P = "Placebo", SEX = "F" }}
strata = ["SITE"]
ties = "efron"

[[analysis]]
name = "ve"
kind = "ve"
param = "{PARAMCD}"
arm = "TRT01P"
reference = {{ TRT01P = "Placebo" }}
strata = ["SITE"]
"""


def write_plan(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` (folders created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
