"""Federated Cox equals pooled rows: lifelines (Efron) and statsmodels (Breslow) are the oracles."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_gbsg2, load_leukemia, load_lung, load_rossi
from statsmodels.duration.hazard_regression import PHReg

from analysis.cox import CoxPH, CoxResult, fit_federated
from analysis.data import SurvivalData

TOL = 1e-6


def to_parts(
    df: pd.DataFrame,
    time: str,
    event: str,
    site: str,
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
) -> list[SurvivalData]:
    """One SurvivalData per value of ``site``, with a SITE covariate."""
    parts = []
    for value, g in df.groupby(site, sort=True):
        cov: dict[str, np.ndarray] = {c: g[c].to_numpy(np.float64) for c in numeric}
        cov |= {c: g[c].astype(str).to_numpy(object) for c in categorical}
        cov["SITE"] = np.full(len(g), f"S{value}", dtype=object)
        parts.append(SurvivalData(g[time].to_numpy(float), g[event].to_numpy() == 1, cov))
    return parts


def lifelines_fit(
    df: pd.DataFrame, time: str, event: str, terms: Sequence[str], strata: Sequence[str] = ()
) -> CoxPHFitter:
    """Pooled-rows Efron oracle, converged far past the test tolerance."""
    cols = [time, event, *terms, *strata]
    return CoxPHFitter().fit(
        df[cols],
        time,
        event,
        strata=list(strata) or None,
        fit_options={"precision": 1e-13, "r_precision": 0.0, "max_steps": 200},
    )


def statsmodels_fit(
    df: pd.DataFrame,
    time: str,
    event: str,
    terms: Sequence[str],
    strata: Sequence[str] = (),
    ties: str = "breslow",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Pooled-rows oracle from statsmodels PHReg (the Breslow reference)."""
    groups = df[list(strata)].astype(str).agg("|".join, axis=1) if strata else None
    model = PHReg(
        df[time].to_numpy(float),
        df[list(terms)].to_numpy(float),
        status=df[event].to_numpy(int),
        strata=None if groups is None else groups.to_numpy(),
        ties=ties,
    )
    res = model.fit(method="newton", maxiter=200, tol=1e-14)
    return np.asarray(res.params), np.asarray(res.bse), float(res.llf)


def assert_matches(
    result: CoxResult, terms: Sequence[str], coef: Any, se: Any, loglik: float
) -> None:
    assert result.converged, result.message
    assert list(result.terms) == list(terms)
    np.testing.assert_allclose(result.coef, coef, rtol=0, atol=TOL)
    np.testing.assert_allclose(result.se, se, rtol=0, atol=TOL)
    assert result.loglik == pytest.approx(loglik, abs=1e-6)


@pytest.fixture(scope="module")
def lung() -> pd.DataFrame:
    df = load_lung().dropna(subset=["inst", "ph.ecog"]).reset_index(drop=True)
    df["inst"] = df["inst"].astype(int)
    df["sexc"] = df["sex"].map({1: "male", 2: "female"})
    df["sexc[T.female]"] = (df["sexc"] == "female").astype(float)
    return df


@pytest.fixture(scope="module")
def gbsg2() -> pd.DataFrame:
    df = load_gbsg2()
    df["site"] = np.arange(len(df)) % 4
    df["horTh[T.yes]"] = (df["horTh"] == "yes").astype(float)
    df["menostat[T.Pre]"] = (df["menostat"] == "Pre").astype(float)
    df["horTh[T.yes]:menostat[T.Pre]"] = df["horTh[T.yes]"] * df["menostat[T.Pre]"]
    return df


LUNG_TERMS = ["age", "sexc[T.female]", "ph.ecog"]
GBSG_COVS = ["horTh", "menostat", "age", "tsize", "pnodes"]
GBSG_TERMS = ["horTh[T.yes]", "menostat[T.Pre]", "age", "tsize", "pnodes"]


@pytest.mark.parametrize("strata", [(), ("SITE",), ("sexc",)])
def test_lung_by_institution_matches_lifelines(lung: pd.DataFrame, strata: tuple[str, ...]) -> None:
    parts = to_parts(lung, "time", "status", "inst", ["age", "ph.ecog"], ["sexc"])
    by_sex = strata == ("sexc",)
    covariates = ["age", "ph.ecog"] if by_sex else ["age", "sexc", "ph.ecog"]
    terms = ["age", "ph.ecog"] if by_sex else LUNG_TERMS
    result = fit_federated(parts, covariates, None if by_sex else {"sexc": "male"}, strata)
    oracle_strata = {"SITE": ["inst"], "sexc": ["sex"]}.get(strata[0], []) if strata else []
    cph = lifelines_fit(lung, "time", "status", terms, oracle_strata)
    assert_matches(result, terms, cph.params_, cph.standard_errors_, cph.log_likelihood_)
    assert result.n == len(lung) and result.events == int(lung["status"].sum())
    assert result.rounds <= 4, result.history


@pytest.mark.parametrize("strata", [(), ("SITE",), ("tgrade",)])
def test_gbsg2_four_sites_categorical_matches_lifelines(
    gbsg2: pd.DataFrame, strata: tuple[str, ...]
) -> None:
    parts = to_parts(
        gbsg2, "time", "cens", "site", ["age", "tsize", "pnodes"], ["horTh", "menostat", "tgrade"]
    )
    result = fit_federated(parts, GBSG_COVS, {"horTh": "no", "menostat": "Post"}, strata=strata)
    oracle_strata = {"SITE": ["site"], "tgrade": ["tgrade"]}.get(strata[0], []) if strata else []
    cph = lifelines_fit(gbsg2, "time", "cens", GBSG_TERMS, oracle_strata)
    assert_matches(result, GBSG_TERMS, cph.params_, cph.standard_errors_, cph.log_likelihood_)
    assert result.rounds <= 4, result.history


@pytest.mark.parametrize("strata", [(), ("SITE",)])
def test_breslow_matches_statsmodels(gbsg2: pd.DataFrame, strata: tuple[str, ...]) -> None:
    parts = to_parts(
        gbsg2, "time", "cens", "site", ["age", "tsize", "pnodes"], ["horTh", "menostat"]
    )
    result = fit_federated(parts, GBSG_COVS, {"horTh": "no", "menostat": "Post"}, strata, "breslow")
    coef, se, llf = statsmodels_fit(gbsg2, "time", "cens", GBSG_TERMS, ["site"] if strata else [])
    assert_matches(result, GBSG_TERMS, coef, se, llf)
    assert result.ties == "breslow"


def test_statsmodels_efron_agrees_with_lifelines(gbsg2: pd.DataFrame) -> None:
    coef, se, llf = statsmodels_fit(gbsg2, "time", "cens", GBSG_TERMS, ties="efron")
    cph = lifelines_fit(gbsg2, "time", "cens", GBSG_TERMS)
    np.testing.assert_allclose(coef, cph.params_, atol=TOL)
    np.testing.assert_allclose(se, cph.standard_errors_, atol=TOL)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_leukemia_heavy_ties(ties: str) -> None:
    df = load_leukemia()
    df["site"] = np.arange(len(df)) % 3
    terms = ["sex", "logWBC", "Rx"]
    parts = to_parts(df, "t", "status", "site", terms)
    for strata in ((), ("SITE",)):
        result = fit_federated(parts, terms, strata=strata, ties=ties)  # type: ignore[arg-type]
        os = ["site"] if strata else []
        coef, se, llf = statsmodels_fit(df, "t", "status", terms, os, ties=ties)
        assert_matches(result, terms, coef, se, llf)
        if ties == "efron":
            cph = lifelines_fit(df, "t", "status", terms, os)
            assert_matches(result, terms, cph.params_, cph.standard_errors_, cph.log_likelihood_)


def test_rossi_split_by_wexp() -> None:
    df = load_rossi()
    terms = ["fin", "age", "race", "mar", "paro", "prio"]
    parts = to_parts(df, "week", "arrest", "wexp", terms)
    stratified = fit_federated(parts, terms, strata=["SITE"])
    cph = lifelines_fit(df, "week", "arrest", terms, ["wexp"])
    assert_matches(stratified, terms, cph.params_, cph.standard_errors_, cph.log_likelihood_)
    pooled = fit_federated(parts, terms)
    cph = lifelines_fit(df, "week", "arrest", terms)
    assert_matches(pooled, terms, cph.params_, cph.standard_errors_, cph.log_likelihood_)


def test_interaction_and_joint_wald(gbsg2: pd.DataFrame) -> None:
    parts = to_parts(gbsg2, "time", "cens", "site", ["age"], ["horTh", "menostat"])
    result = fit_federated(
        parts,
        ["horTh", "menostat", "age"],
        {"horTh": "no", "menostat": "Post"},
        interactions=[("horTh", "menostat")],
    )
    terms = ["horTh[T.yes]", "menostat[T.Pre]", "age", "horTh[T.yes]:menostat[T.Pre]"]
    cph = lifelines_fit(gbsg2, "time", "cens", terms)
    assert_matches(result, terms, cph.params_, cph.standard_errors_, cph.log_likelihood_)
    chi2, df, p = result.wald_test(["horTh[T.yes]:menostat[T.Pre]"])
    assert df == 1 and chi2 == pytest.approx(result.z[3] ** 2) and p == pytest.approx(result.p[3])
    names = ["horTh[T.yes]", "horTh[T.yes]:menostat[T.Pre]"]
    b = cph.params_[names].to_numpy()
    v = cph.variance_matrix_.loc[names, names].to_numpy()
    chi2, df, _ = result.wald_test(names)
    assert df == 2 and chi2 == pytest.approx(float(b @ np.linalg.solve(v, b)), rel=1e-6)


def test_local_estimator_equals_one_site_federated_and_lifelines(lung: pd.DataFrame) -> None:
    (whole,) = to_parts(lung.assign(one=0), "time", "status", "one", ["age", "ph.ecog"], ["sexc"])
    model = CoxPH(alpha=0.1).fit(whole, ["age", "sexc", "ph.ecog"], {"sexc": "male"})
    assert model is not None and model.converged_
    fed = fit_federated([whole], ["age", "sexc", "ph.ecog"], {"sexc": "male"}, alpha=0.1)
    np.testing.assert_array_equal(model.params_.to_numpy(), fed.coef)
    cph = lifelines_fit(lung, "time", "status", LUNG_TERMS)
    np.testing.assert_allclose(model.params_.to_numpy(), cph.params_, atol=TOL)
    np.testing.assert_allclose(model.standard_errors_.to_numpy(), cph.standard_errors_, atol=TOL)
    cph90 = CoxPHFitter(alpha=0.1).fit(
        lung[["time", "status", *LUNG_TERMS]], "time", "status", fit_options={"precision": 1e-13}
    )
    np.testing.assert_allclose(
        np.log(model.summary["hr_lower"]), cph90.confidence_intervals_.iloc[:, 0], atol=TOL
    )
    assert list(model.summary.index) == LUNG_TERMS


def test_result_to_dict_is_json_safe(lung: pd.DataFrame) -> None:
    parts = to_parts(lung, "time", "status", "inst", ["age", "ph.ecog"])
    out = fit_federated(parts, ["age", "ph.ecog"]).to_dict()
    text = json.dumps(out, allow_nan=False)
    assert set(out) >= {
        "terms",
        "loglik",
        "n",
        "events",
        "rounds",
        "converged",
        "ties",
        "strata",
        "alpha",
        "history",
    }
    assert set(out["terms"]["age"]) == {"coef", "se", "hr", "hr_lower", "hr_upper", "z", "p"}
    assert out["history"][0]["round"] == 2 and "null" not in text
