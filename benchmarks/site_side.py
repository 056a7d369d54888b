"""Site-side cost of one bundle, as a whole process: ``python -m benchmarks.site_side OUT BUNDLE``.

Measures the cold load (parse + validate) of the bundle, the on-disk cache (first write, then a
warm read, when :mod:`sites.cache` exists in the tree under test), the endpoint join, the design
preparation, the round-1 local fit and the per-round Cox evaluation, and the process's peak
memory (before the cache steps, which hold a second copy of the tables).
Runs against whatever ``analysis``/``sites`` packages come first on ``sys.path``, so the
runner can time the code before and after an optimisation side by side.
"""

from __future__ import annotations

import importlib
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from analysis import cox
from benchmarks.data import COVARIATES, PARAMCD
from sites.bundle import load_bundle


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(bundle: Path) -> dict[str, Any]:
    """Timings (seconds) and peak memory (MB) of the site-side steps on ``bundle``."""
    out: dict[str, Any] = {}
    out["load_cold_s"], site = _timed(lambda: load_bundle(bundle))
    out["survival_data_s"], data = _timed(lambda: site.survival_data(PARAMCD))
    spec = cox.CoxSpec(covariates=COVARIATES, strata=("SITE",), ties="efron")
    out["prepare_s"], design = _timed(lambda: cox.prepare(data, spec))
    out["local_fit_s"], fit = _timed(lambda: cox.local_fit(design, spec))
    beta = np.asarray(fit.beta, dtype=np.float64)
    rounds = []
    for _ in range(3):
        seconds, _ = _timed(lambda: cox.stratified_derivatives(design, spec, beta))
        rounds.append(seconds)
    out["cox_round_s"] = statistics.median(rounds)
    out["cox_round_unprepared_s"], _ = _timed(lambda: cox.stratified_derivatives(data, spec, beta))
    out["n"] = int(data.n)
    # peak so far: one bundle loaded, its design prepared, a Cox round evaluated
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    import sites.bundle

    try:
        cache_module: ModuleType | None = importlib.import_module("sites.cache")
    except ImportError:
        cache_module = None
    # only a cache of the tree under test (an editable install may resolve another tree's)
    if cache_module is not None and (
        Path(str(cache_module.__file__)).parent == Path(sites.bundle.__file__).parent
    ):
        load_cached = cache_module.load_cached
        folder = Path(tempfile.mkdtemp(prefix="trialfed-cache-"))
        try:
            out["load_cache_write_s"], _ = _timed(lambda: load_cached(bundle, str(folder)))
            out["load_cache_hit_s"], hit = _timed(lambda: load_cached(bundle, str(folder)))
            out["cache_hit_equal"] = bool(
                hit.adsl.equals(site.adsl) and hit.adtte.equals(site.adtte)
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def main(argv: list[str]) -> int:
    """``OUT.json BUNDLE``."""
    result = measure(Path(argv[1]))
    Path(argv[0]).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
