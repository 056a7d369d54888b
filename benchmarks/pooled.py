"""What a user would do with the rows pooled: read every site's files with pandas, fit lifelines.

Run as a whole process (``python -m benchmarks.pooled OUT.json BUNDLE ...``) so that its wall time
and peak memory include imports and reading, like a ``trialfed run``. Writes a JSON document with
the coefficients (lifelines defaults, and refined from there to a Newton step of 1e-12, untimed),
the log-likelihood and timings.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

START = time.perf_counter()

import pandas as pd  # noqa: E402
from lifelines import CoxPHFitter  # noqa: E402

from benchmarks.data import COVARIATES, PARAMCD  # noqa: E402


def read(path: Path) -> pd.DataFrame:
    """One table in CSV or Parquet format."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def pooled_frame(bundles: list[Path]) -> pd.DataFrame:
    """ADTTE (endpoint OS) joined to ADSL, every site stacked."""
    parts = []
    for folder in bundles:
        adsl = read(next(folder.glob("adsl.*")))
        adtte = read(next(folder.glob("adtte.*")))
        adtte = adtte[adtte["PARAMCD"] == PARAMCD]
        parts.append(adtte.merge(adsl, on="USUBJID", suffixes=("", "_ADSL")))
    frame = pd.concat(parts, ignore_index=True)
    frame["EVENT"] = (frame["CNSR"] == 0).astype(int)
    return frame[["AVAL", "EVENT", "SITEID", *COVARIATES]]


def main(argv: list[str]) -> int:
    """``OUT.json BUNDLE [BUNDLE ...]``: fit, write the JSON document."""
    out = Path(argv[0])
    bundles = [Path(a) for a in argv[1:]]
    imported = time.perf_counter()
    frame = pooled_frame(bundles)
    read_done = time.perf_counter()
    fitter = CoxPHFitter()
    fitter.fit(frame, duration_col="AVAL", event_col="EVENT", strata=["SITEID"])
    fit_done = time.perf_counter()
    # lifelines stops at a step norm of 1e-7, or when the log-likelihood changes by less than
    # 1e-9 relative (r_precision), after damped steps (step_size 0.95): at large n its default
    # answer can be 1e-3 off the maximum. Refine from there with full Newton steps and no
    # relative stop (not part of the timed user workflow).
    tight = CoxPHFitter().fit(
        frame,
        duration_col="AVAL",
        event_col="EVENT",
        strata=["SITEID"],
        initial_point=fitter.params_.to_numpy(),
        fit_options={"precision": 1e-12, "r_precision": 0.0, "step_size": 1.0},
    )
    refine_done = time.perf_counter()
    doc: dict[str, Any] = {
        "n": int(len(frame)),
        "events": int(frame["EVENT"].sum()),
        "coef": {k: float(v) for k, v in fitter.params_.items()},
        "coef_tight": {k: float(v) for k, v in tight.params_.items()},
        "se": {k: float(v) for k, v in fitter.standard_errors_.items()},
        "loglik": float(fitter.log_likelihood_),
        "seconds": {
            "imports": imported - START,
            "read": read_done - imported,
            "fit": fit_done - read_done,
            "total": fit_done - START,
            "refine": refine_done - fit_done,
        },
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    out.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
