"""Table 1 from summed site aggregates equals pandas groupby on the pooled rows."""

from __future__ import annotations

import json
from functools import reduce
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_lung

from analysis.base import format_level
from analysis.summary import add_summaries, summarise, summary_aggregate


def make_subjects(n: int, seed: int, integer_age: bool = True) -> pd.DataFrame:
    """ADSL-like subjects with two ADTTE endpoints (as columns), a few missing values."""
    rng = np.random.default_rng(seed)
    age = rng.normal(62.0, 11.0, n)
    age = np.round(age) if integer_age else age
    age[rng.random(n) < 0.05] = np.nan
    sex = rng.choice(np.array(["F", "M"], dtype=object), n)
    sex[rng.random(n) < 0.03] = None
    return pd.DataFrame(
        {
            "site": rng.integers(0, 5, n),
            "arm": rng.choice(np.array(["Placebo", "Low", "High"], dtype=object), n),
            "age": age,
            "sex": sex,
            "os_event": rng.random(n) < 0.4,
            "pfs_event": rng.random(n) < 0.6,
            "has_pfs": rng.random(n) < 0.9,  # not every subject has a PFS record
        }
    )


def site_aggregate(df: pd.DataFrame) -> dict[str, Any]:
    pfs = df[df["has_pfs"]]
    return summary_aggregate(
        df["arm"].to_numpy(object),
        df["age"].to_numpy(float),
        df["sex"].to_numpy(object),
        {
            "OS": (df["arm"].to_numpy(object), df["os_event"].to_numpy(bool)),
            "PFS": (pfs["arm"].to_numpy(object), pfs["pfs_event"].to_numpy(bool)),
        },
    )


def federated(df: pd.DataFrame) -> dict[str, Any]:
    """Sum of the site aggregates, through a JSON round trip as on the wire."""
    parts = [json.loads(json.dumps(site_aggregate(g))) for _, g in df.groupby("site")]
    return reduce(add_summaries, parts)


def assert_matches_pandas(result_dict: dict[str, Any], df: pd.DataFrame, rtol: float) -> None:
    df = df.assign(sex=[format_level(v) for v in df["sex"]])
    pfs = df[df["has_pfs"]]
    columns = {level: df[df["arm"] == level] for level in sorted(df["arm"].unique())}
    expected_groups = {**columns}
    assert set(result_dict["groups"]) == set(expected_groups)
    for level, rows in [*expected_groups.items(), ("__overall__", df)]:
        got = result_dict["overall"] if level == "__overall__" else result_dict["groups"][level]
        assert got["n"] == len(rows)
        assert got["age_mean"] == pytest.approx(rows["age"].mean(), rel=rtol, abs=0)
        assert got["age_sd"] == pytest.approx(rows["age"].std(ddof=1), rel=rtol, abs=0)
        counts = rows["sex"].value_counts().to_dict()
        assert {k: v for k, v in got["sex"].items() if v} == counts
        prow = pfs.loc[pfs.index.intersection(rows.index)]
        assert got["events"] == {
            "OS": int(rows["os_event"].sum()),
            "PFS": int(prow["pfs_event"].sum()),
        }
        assert got["censored"] == {
            "OS": int((~rows["os_event"]).sum()),
            "PFS": int((~prow["pfs_event"]).sum()),
        }


def test_integer_ages_federated_equals_pooled_exactly() -> None:
    df = make_subjects(3000, seed=1)
    result = summarise(federated(df))
    out = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert_matches_pandas(out, df, rtol=1e-15)
    # exact integer arithmetic: identical to one site holding all rows
    single = summarise(site_aggregate(df))
    assert single.to_dict() == result.to_dict()


def test_float_ages_federated_equals_pooled() -> None:
    df = make_subjects(5000, seed=2, integer_age=False)
    assert_matches_pandas(summarise(federated(df)).to_dict(), df, rtol=1e-12)


def test_large_mean_small_spread_is_stable() -> None:
    # cancellation stress: mean 1e4, SD 1e-2 (mean^2 / var = 1e12) is beyond ages; integer
    # inputs stay exact, float ones lose about mean^2/var * eps
    rng = np.random.default_rng(4)
    ages = 10_000.0 + rng.integers(-3, 4, 1000).astype(float)
    agg = summary_aggregate(np.repeat(["A"], 1000), ages, np.repeat(["F"], 1000), {})
    result = summarise(agg)
    assert result.overall.age_sd == pytest.approx(np.std(ages, ddof=1), rel=1e-15)


def test_lung_by_institution() -> None:
    df = load_lung().dropna(subset=["inst"])
    parts = []
    for _, site in df.groupby("inst"):
        parts.append(
            summary_aggregate(
                site["ph.ecog"].to_numpy(float),
                site["age"].to_numpy(float),
                site["sex"].to_numpy(float),
                {"OS": (site["ph.ecog"].to_numpy(float), site["status"].to_numpy() == 1)},
            )
        )
    result = summarise(reduce(add_summaries, parts))
    ecog = df["ph.ecog"].map(format_level)
    assert list(result.groups) == sorted(ecog.unique())  # "", "0", "1", "2", "3"
    for level, g in result.groups.items():
        rows = df[ecog == level]
        assert g.n == len(rows)
        assert g.age_mean == pytest.approx(rows["age"].mean(), rel=1e-15)
        if len(rows) > 1:
            assert g.age_sd == pytest.approx(rows["age"].std(ddof=1), rel=1e-15)
        else:
            assert np.isnan(g.age_sd)
        assert dict(g.sex) == {s: int((rows["sex"] == float(s)).sum()) for s in result.overall.sex}
        assert g.events["OS"] == int((rows["status"] == 1).sum())
    assert result.overall.n == len(df)


def test_table_frame() -> None:
    df = make_subjects(400, seed=5)
    result = summarise(federated(df))
    table = result.table
    assert list(table.columns) == ["High", "Low", "Placebo", "Overall"]
    assert table.loc[("n", ""), "Overall"] == 400
    assert table.loc[("events", "OS"), "Low"] == result.groups["Low"].events["OS"]
    assert table.loc[("age", "sd"), "High"] == result.groups["High"].age_sd
    assert ("sex", "") in table.index  # missing sex is its own level


def test_add_summaries_does_not_mutate_and_is_order_free() -> None:
    df = make_subjects(300, seed=6)
    a, b = (site_aggregate(g) for _, g in df.groupby(df.index % 2))
    a_copy = json.loads(json.dumps(a))
    ab, ba = add_summaries(a, b), add_summaries(b, a)
    assert a == a_copy
    assert summarise(ab).to_dict() == summarise(ba).to_dict()
    with pytest.raises(ValueError, match="mapping"):
        add_summaries({"x": {"y": 1}}, {"x": 2})


def test_empty_and_single_subject_arms() -> None:
    agg = summary_aggregate(np.array(["A"]), np.array([70.0]), np.array(["M"]), {})
    empty = summary_aggregate(np.array([], dtype=object), np.array([]), np.array([]), {})
    result = summarise(add_summaries(agg, empty))
    out = result.to_dict()
    assert out["groups"]["A"]["age_mean"] == 70.0 and out["groups"]["A"]["age_sd"] is None
    assert out["overall"]["events"] == {} and out["overall"]["sex"] == {"M": 1}
    nan_age = summarise(summary_aggregate(np.array(["A"]), np.array([np.nan]), np.array(["F"]), {}))
    assert np.isnan(nan_age.overall.age_mean)
    with pytest.raises(ValueError, match="Table 1"):
        summarise({"nope": 1})
    with pytest.raises(ValueError, match="one length"):
        summary_aggregate(np.array(["A"]), np.array([1.0, 2.0]), np.array(["F"]), {})
