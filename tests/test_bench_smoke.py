"""Smoke version of the benchmarks (benchmarks/): outputs are produced and the federated Cox
coefficients equal the pooled lifelines ones. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import cox
from analysis.cox_design import _stratum_codes, stratum_keys
from analysis.data import SurvivalData
from benchmarks.data import COVARIATES, write_sites
from benchmarks.plans import COX_PLAN, write_plan
from experiments.plan import load_plan
from federation.inprocess import InProcessTransport
from federation.protocol import run_plan
from sites.bundle import load_bundle
from sites.cache import CACHE_FOLDER, load_cached


def _pooled_coef(sites: list[Path]) -> dict[str, float]:
    from lifelines import CoxPHFitter

    from benchmarks.pooled import pooled_frame

    fitter = CoxPHFitter().fit(
        pooled_frame(sites),
        duration_col="AVAL",
        event_col="EVENT",
        strata=["SITEID"],
        # the default stops early (step 1e-7, relative loglik change 1e-9, damped steps)
        fit_options={"precision": 1e-12, "r_precision": 0.0, "step_size": 1.0},
    )
    return {k: float(v) for k, v in fitter.params_.items()}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_federated_equals_pooled_in_process(tmp_path: Path, fmt: str) -> None:
    sites = write_sites(tmp_path / "data", 1500, 3, fmt)
    plan = load_plan(write_plan(COX_PLAN, tmp_path / "cox.toml"))
    outcome = run_plan(plan, InProcessTransport(sites))
    terms = outcome.analyses["cox"]["terms"]
    pooled = _pooled_coef(sites)
    assert max(abs(terms[c]["coef"] - pooled[c]) for c in COVARIATES) < 1e-6
    assert outcome.rounds <= 4


def test_disk_cache_gives_the_same_bundle(tmp_path: Path) -> None:
    site = write_sites(tmp_path / "data", 400, 1, "csv")[0]
    fresh = load_bundle(site)
    first = load_cached(site, "bundle")
    assert (site / CACHE_FOLDER).is_dir()
    hit = load_cached(site, "bundle")
    for loaded in (first, hit):
        pd.testing.assert_frame_equal(loaded.adsl, fresh.adsl)
        pd.testing.assert_frame_equal(loaded.adtte, fresh.adtte)
        assert (loaded.site_id, loaded.country, loaded.policy) == (
            fresh.site_id,
            fresh.country,
            fresh.policy,
        )
        assert loaded.warnings == fresh.warnings
    data = hit.survival_data("OS")
    ref = fresh.survival_data("OS")
    assert np.array_equal(data.time, ref.time) and np.array_equal(data.event, ref.event)
    # an edited table is a new key: the cache is not used for stale data
    csv = site / "adtte.csv"
    csv.write_text(csv.read_text().replace(",OS,", ",PFS,", 1))
    assert "PFS" in load_cached(site, "bundle").params()


def test_stratum_codes_match_stratum_keys() -> None:
    rng = np.random.default_rng(1)
    n = 200
    data = SurvivalData(
        time=rng.exponential(1.0, n),
        event=rng.integers(0, 2, n).astype(bool),
        covariates={
            "A": rng.choice(np.array(["b", "a", "c", ""], dtype=object), n),
            "B": rng.integers(0, 3, n).astype(np.float64),
            "C": np.full(n, "only", dtype=object),
        },
    )
    rows = data.covariates["A"] != ""
    for strata in ((), ("A",), ("B", "A"), ("C",), ("A", "C", "B")):
        keys = stratum_keys(data, strata, rows)
        uniq, codes = _stratum_codes(data, strata, rows)
        assert uniq == sorted(set(keys))
        assert [uniq[c] for c in codes] == keys
    empty = np.zeros(n, dtype=bool)
    assert _stratum_codes(data, (), empty)[0] == sorted(set(stratum_keys(data, (), empty)))
    spec = cox.CoxSpec(covariates=("B",), levels={}, strata=("A",))
    assert cox.prepare(data, spec).keys == (("a",), ("b",), ("c",))


@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path: Path) -> None:
    """``python -m benchmarks.run --smoke --only cox``: trialfed run (Flower) vs pooled."""
    from benchmarks.run import main

    out = tmp_path / "results"
    assert main(["--smoke", "--only", "cox", "--out", str(out), "--data", str(tmp_path)]) == 0
    doc = json.loads((out / "cox.json").read_text())
    row = doc["cox"][0]
    assert row["federated"]["returncode"] == 0 and row["pooled"]["returncode"] == 0
    assert row["max_abs_coef_diff"] < 1e-6
    assert row["federated"]["rounds"] <= 4
    assert "Site-stratified Cox" in (out / "summary.md").read_text()
