"""A realistic ``results.json`` dict for the tracking, plot and report tests.

Every number is computed with lifelines on its shipped Rossi recidivism data set (432 released
prisoners followed for 52 weeks; ``fin`` = financial aid is the "treatment arm"), shaped per
docs/design.md. The subjects are split over four pretend sites in two countries so that the
per-country and site fields are filled. The lead's real federated runs will replace this fixture.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

STUDY_ID = "ROSSI-01"
STUDY_TITLE = "Financial aid and re-arrest (lifelines Rossi data)"
PARAMCD = "ARREST"
ARM = "ARM"
REFERENCE = "No aid"
TREATMENT = "Financial aid"
TIMES = [10.0, 20.0, 30.0, 40.0, 50.0]
PARAM_LABEL = "Time to re-arrest (weeks)"

PLAN_TEXT = f"""\
[study]
id = "{STUDY_ID}"
title = "{STUDY_TITLE}"

[run]
min_sites = 3
max_rounds = 20
tolerance = 1e-9

[[analysis]]
name = "table1"
kind = "summary"
param = "{PARAMCD}"
by = "{ARM}"

[[analysis]]
name = "km_arrest"
kind = "km"
param = "{PARAMCD}"
by = "{ARM}"
times = [10, 20, 30, 40, 50]

[[analysis]]
name = "logrank_arrest"
kind = "logrank"
param = "{PARAMCD}"
by = "{ARM}"

[[analysis]]
name = "cox_arrest"
kind = "cox"
param = "{PARAMCD}"
covariates = ["{ARM}", "AGE", "PRIO"]
reference = {{ {ARM} = "{REFERENCE}" }}
ties = "efron"

[[analysis]]
name = "efficacy"
kind = "ve"
param = "{PARAMCD}"
arm = "{ARM}"
reference = "{REFERENCE}"
"""

SITES = [
    {"id": "JP01", "name": "Tokyo General", "country": "JP"},
    {"id": "JP02", "name": "Osaka University", "country": "JP"},
    {"id": "KR01", "name": "Seoul National", "country": "KR"},
    {"id": "KR02", "name": "Busan Medical", "country": "KR"},
]


def _num(value: Any) -> float | None:
    """A JSON-ready float: NaN and infinities become None."""
    x = float(value)
    return x if math.isfinite(x) else None


@functools.lru_cache(maxsize=1)
def _data() -> pd.DataFrame:
    from lifelines.datasets import load_rossi

    df = load_rossi()
    df = df.rename(columns={"week": "time", "arrest": "event", "age": "AGE", "prio": "PRIO"})
    df[ARM] = np.where(df["fin"] == 1, TREATMENT, REFERENCE)
    df["SITE"] = [SITES[i % len(SITES)]["id"] for i in range(len(df))]
    df["COUNTRY"] = df["SITE"].str[:2]
    return df


def _summary(df: pd.DataFrame) -> dict[str, Any]:
    def block(d: pd.DataFrame) -> dict[str, Any]:
        return {
            "n": len(d),
            "age_mean": _num(d["AGE"].mean()),
            "age_sd": _num(d["AGE"].std(ddof=1)),
            "sex": {"M": len(d)},
            "events": {PARAMCD: int(d["event"].sum())},
            "censored": {PARAMCD: int((d["event"] == 0).sum())},
        }

    groups = {str(k): block(g) for k, g in df.groupby(ARM)}
    return {"kind": "summary", "param": PARAMCD, "by": ARM, "groups": groups, "overall": block(df)}


def _km(df: pd.DataFrame, alpha: float = 0.05) -> dict[str, Any]:
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    groups: dict[str, Any] = {}
    for level, g in df.groupby(ARM):
        kmf = KaplanMeierFitter(alpha=alpha).fit(g["time"], g["event"], label=str(level))
        table = kmf.event_table.loc[kmf.event_table.index > 0]
        times = table.index.to_numpy(dtype=float)
        ci = kmf.confidence_interval_survival_function_
        median_ci = median_survival_times(ci).to_numpy(dtype=float).ravel()
        at_survival = kmf.survival_function_at_times(TIMES).to_numpy()
        at_risk_at = [int((g["time"] >= t).sum()) for t in TIMES]
        groups[str(level)] = {
            "time": times.tolist(),
            "survival": kmf.survival_function_.loc[times].iloc[:, 0].tolist(),
            "ci_lower": ci.loc[times].iloc[:, 0].tolist(),
            "ci_upper": ci.loc[times].iloc[:, 1].tolist(),
            "at_risk": table["at_risk"].astype(int).tolist(),
            "events": table["observed"].astype(int).tolist(),
            "censored": table["censored"].astype(int).tolist(),
            "median": _num(kmf.median_survival_time_),
            "median_ci": [_num(median_ci[0]), _num(median_ci[1])],
            "at": {"time": TIMES, "survival": at_survival.tolist(), "at_risk": at_risk_at},
        }
    return {"kind": "km", "param": PARAMCD, "by": ARM, "alpha": alpha, "groups": groups}


def _logrank(df: pd.DataFrame) -> dict[str, Any]:
    from lifelines.statistics import multivariate_logrank_test

    res = multivariate_logrank_test(df["time"], df[ARM], df["event"])
    times = np.sort(df.loc[df["event"] == 1, "time"].unique())
    d_all = np.array([((df["time"] == t) & (df["event"] == 1)).sum() for t in times])
    n_all = np.array([(df["time"] >= t).sum() for t in times])
    groups = {}
    for level, g in df.groupby(ARM):
        n_g = np.array([(g["time"] >= t).sum() for t in times])
        groups[str(level)] = {
            "observed": int(g["event"].sum()),
            "expected": float(np.sum(d_all * n_g / n_all)),
        }
    return {
        "kind": "logrank",
        "param": PARAMCD,
        "by": ARM,
        "strata": None,
        "statistic": float(res.test_statistic),
        "df": int(res.degrees_of_freedom),
        "p": float(res.p_value),
        "groups": groups,
    }


def _design(df: pd.DataFrame, covariates: list[str]) -> pd.DataFrame:
    x = df[["time", "event"]].copy()
    for c in covariates:
        if c == ARM:
            x[f"{ARM}[{TREATMENT}]"] = (df[ARM] == TREATMENT).astype(float)
        else:
            x[c] = df[c].astype(float)
    return x


def _cox(
    df: pd.DataFrame, covariates: list[str], alpha: float = 0.05, history: bool = True
) -> dict[str, Any]:
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceWarning

    x = _design(df, covariates)
    cph = CoxPHFitter(alpha=alpha).fit(x, "time", "event")
    s = cph.summary
    lo_col = [c for c in s.columns if c.startswith("exp(coef) lower")][0]
    hi_col = [c for c in s.columns if c.startswith("exp(coef) upper")][0]
    terms = {
        str(name): {
            "coef": float(row["coef"]),
            "se": float(row["se(coef)"]),
            "hr": float(row["exp(coef)"]),
            "hr_lower": float(row[lo_col]),
            "hr_upper": float(row[hi_col]),
            "z": float(row["z"]),
            "p": float(row["p"]),
        }
        for name, row in s.iterrows()
    }
    # Convergence history: refit with 1, 2, ... Newton steps; round r holds the log-likelihood
    # at the round-r estimate and the norm of the step taken from it.
    betas, logliks = [], []
    for steps in range(1, 7 if history else 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            partial = CoxPHFitter(alpha=alpha).fit(
                x, "time", "event", fit_options={"max_steps": steps}
            )
        betas.append(partial.params_.to_numpy())
        logliks.append(float(partial.log_likelihood_))
    rounds = [
        {
            "round": r + 1,
            "loglik": logliks[r],
            "step_norm": float(np.linalg.norm(betas[r + 1] - betas[r])),
        }
        for r in range(max(len(betas) - 1, 0))
    ]
    return {
        "kind": "cox",
        "param": PARAMCD,
        "terms": terms,
        "loglik": float(cph.log_likelihood_),
        "n": len(df),
        "events": int(df["event"].sum()),
        "rounds": len(rounds) + 1,
        "converged": True,
        "ties": "efron",
        "strata": None,
        "alpha": alpha,
        "history": rounds,
    }


def _ve(df: pd.DataFrame) -> dict[str, Any]:
    from lifelines import CoxPHFitter
    from scipy.stats import chi2

    term = f"{ARM}[{TREATMENT}]"
    cox = _cox(df, [ARM])
    t = cox["terms"][term]
    by_country = {}
    for country, g in df.groupby("COUNTRY"):
        ct = _cox(g, [ARM], history=False)["terms"][term]
        by_country[str(country)] = {
            "hr": ct["hr"],
            "hr_lower": ct["hr_lower"],
            "hr_upper": ct["hr_upper"],
            "ve": 1.0 - ct["hr"],
            "lower": 1.0 - ct["hr_upper"],
            "upper": 1.0 - ct["hr_lower"],
            "n": len(g),
            "events": int(g["event"].sum()),
        }
    # Treatment-by-country interaction: likelihood-ratio test of nested Cox models.
    x = _design(df, [ARM])
    x["KR"] = (df["COUNTRY"] == "KR").astype(float)
    base = CoxPHFitter().fit(x, "time", "event")
    x["ARMxKR"] = x[term] * x["KR"]
    full = CoxPHFitter().fit(x, "time", "event")
    lr = 2.0 * (full.log_likelihood_ - base.log_likelihood_)
    interaction_p = float(chi2.sf(max(lr, 0.0), 1))
    return {
        "kind": "ve",
        "param": PARAMCD,
        "arm": ARM,
        "reference": REFERENCE,
        "treatment": TREATMENT,
        "ve": 1.0 - t["hr"],
        "lower": 1.0 - t["hr_upper"],
        "upper": 1.0 - t["hr_lower"],
        "hr": t["hr"],
        "hr_lower": t["hr_lower"],
        "hr_upper": t["hr_upper"],
        "p": t["p"],
        "cox": cox,
        "by_country": by_country,
        "interaction_p": interaction_p,
    }


@functools.lru_cache(maxsize=1)
def _build() -> dict[str, Any]:
    df = _data()
    sites = []
    for site in SITES:
        d = df[df["SITE"] == site["id"]]
        sites.append(
            {
                "id": site["id"],
                "country": site["country"],
                "n": len(d),
                "events": {PARAMCD: int(d["event"].sum())},
                # as the sites describe their ADTTE (PARAM, AVALU) and the rows they analyse
                "params": {
                    PARAMCD: {"label": PARAM_LABEL, "n": len(d), "events": int(d["event"].sum())}
                },
                "contributed": True,
            }
        )
    return {
        "study": {"id": STUDY_ID, "title": STUDY_TITLE},
        "plan": {"analysis": [{"name": "cox_arrest", "reference": {ARM: REFERENCE}}]},
        "plan_sha256": plan_sha256(),
        "engine": "simulation",
        "sites": sites,
        "sites_missing": [],
        "rounds": 7,
        "seconds": 12.5,
        "versions": {"trialfed": "0.1.0"},
        "analyses": {
            "table1": _summary(df),
            "km_arrest": _km(df),
            "logrank_arrest": _logrank(df),
            "cox_arrest": _cox(df, [ARM, "AGE", "PRIO"]),
            "efficacy": _ve(df),
        },
    }


def plan_sha256() -> str:
    """SHA-256 of :data:`PLAN_TEXT` (hex)."""
    import hashlib

    return hashlib.sha256(PLAN_TEXT.encode()).hexdigest()


def make_results() -> dict[str, Any]:
    """A fresh deep copy of the fixture results dict (safe to mutate)."""
    return copy.deepcopy(_build())


def make_sites() -> list[dict[str, Any]]:
    """The ``sites`` argument of :func:`experiments.tracking.tracked_run`."""
    results = _build()
    counts = {s["id"]: s for s in results["sites"]}
    return [
        {
            **site,
            "n": counts[site["id"]]["n"],
            "events": counts[site["id"]]["events"][PARAMCD],
            "policy": {"min_cell": 5, "allow": ["summary", "km", "logrank", "cox", "ve"]},
        }
        for site in SITES
    ]
