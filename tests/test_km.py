"""Kaplan-Meier from merged site event tables equals lifelines on the pooled rows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_gbsg2, load_leukemia, load_lung, load_rossi, load_waltons
from lifelines.utils import median_survival_times

from analysis import SurvivalData
from analysis.base import factorize_labels, format_level
from analysis.km import (
    EventTable,
    KaplanMeier,
    at_risk,
    event_table,
    grouped_event_tables,
    kaplan_meier,
    merge_event_tables,
)

TOL = 1e-12


# ------------------------------------------------------------------------------------------
# helpers shared with test_logrank.py
# ------------------------------------------------------------------------------------------


def frame_data(df: pd.DataFrame, time: str, event: str, event_value: int = 1) -> SurvivalData:
    """SurvivalData from a DataFrame: every other column a covariate."""
    covariates = {
        c: (
            df[c].to_numpy(np.float64)
            if pd.api.types.is_numeric_dtype(df[c])
            else df[c].astype(str).to_numpy(object)
        )
        for c in df.columns
        if c not in (time, event)
    }
    return SurvivalData(
        time=df[time].to_numpy(np.float64),
        event=(df[event].to_numpy() == event_value),
        covariates=covariates,
    )


def split_by(data: SurvivalData, column: str) -> list[SurvivalData]:
    """One site per distinct value of ``column``."""
    values = data.column(column)
    return [data.subset(values == v) for v in pd.unique(values)]


def split_chunks(data: SurvivalData, n_sites: int, seed: int = 0) -> list[SurvivalData]:
    """Random sites of unequal size."""
    rng = np.random.default_rng(seed)
    site = rng.integers(0, n_sites, size=data.n)
    return [data.subset(site == s) for s in range(n_sites) if np.any(site == s)]


def lung() -> SurvivalData:
    df = load_lung().dropna(subset=["inst"])
    return frame_data(df, "time", "status")


def gbsg2() -> SurvivalData:
    return frame_data(load_gbsg2(), "time", "cens")


def rossi() -> SurvivalData:
    return frame_data(load_rossi(), "week", "arrest")


def waltons() -> SurvivalData:
    return frame_data(load_waltons(), "T", "E")


def leukemia() -> SurvivalData:
    return frame_data(load_leukemia(), "t", "status")


def federated_tables(sites: list[SurvivalData], by: list[str]) -> dict[tuple[str, ...], EventTable]:
    """Site tables per key, merged over sites (what the coordinator holds)."""
    per_key: dict[tuple[str, ...], list[EventTable]] = {}
    for site in sites:
        for key, table in grouped_event_tables(site, by).items():
            per_key.setdefault(key, []).append(table)
    return {key: merge_event_tables(tables) for key, tables in per_key.items()}


def assert_matches_lifelines(
    table: EventTable, time: np.ndarray, event: np.ndarray, alpha: float = 0.05
) -> None:
    """Every KM field against lifelines fitted on the pooled rows."""
    kmf = KaplanMeierFitter(alpha=alpha).fit(time, event)
    result = kaplan_meier(table, alpha=alpha)
    np.testing.assert_array_equal(result.time, kmf.timeline)
    np.testing.assert_allclose(result.survival, kmf.survival_function_.iloc[:, 0], 0, TOL)
    ci = kmf.confidence_interval_.to_numpy()
    np.testing.assert_allclose(result.ci_lower, ci[:, 0], 0, TOL)
    np.testing.assert_allclose(result.ci_upper, ci[:, 1], 0, TOL)
    np.testing.assert_array_equal(result.at_risk, kmf.event_table["at_risk"].to_numpy())
    np.testing.assert_array_equal(result.events, kmf.event_table["observed"].to_numpy())
    np.testing.assert_array_equal(result.censored, kmf.event_table["censored"].to_numpy())
    assert result.median == kmf.median_survival_time_
    expected_ci = median_survival_times(kmf.confidence_interval_).to_numpy().ravel()
    assert result.median_ci == tuple(expected_ci)


SITE_SPLITS: dict[str, Callable[[], list[SurvivalData]]] = {
    "lung_by_inst": lambda: split_by(lung(), "inst"),
    "gbsg2_chunks": lambda: split_chunks(gbsg2(), 4),
    "rossi_by_race": lambda: split_by(rossi(), "race"),
    "waltons_chunks": lambda: split_chunks(waltons(), 3, seed=1),
    "leukemia_by_sex": lambda: split_by(leukemia(), "sex"),
}


# ------------------------------------------------------------------------------------------
# event tables
# ------------------------------------------------------------------------------------------


def test_event_table_counts_match_pandas() -> None:
    data = gbsg2()
    table = event_table(data.time, data.event)
    df = pd.DataFrame({"t": data.time, "e": data.event})
    truth = df.groupby("t")["e"].agg(["sum", "size"])
    np.testing.assert_array_equal(table.time, truth.index.to_numpy())
    np.testing.assert_array_equal(table.n_event, truth["sum"].to_numpy())
    np.testing.assert_array_equal(table.n_censored, (truth["size"] - truth["sum"]).to_numpy())
    assert table.n == data.n and table.n_events == data.n_events
    np.testing.assert_array_equal(at_risk(table), [(data.time >= t).sum() for t in table.time])


@pytest.mark.parametrize("name", sorted(SITE_SPLITS))
def test_merged_tables_equal_pooled_table(name: str) -> None:
    sites = SITE_SPLITS[name]()
    assert len(sites) > 1
    pooled = SurvivalData.concatenate(sites)
    merged = merge_event_tables(event_table(s.time, s.event) for s in sites)
    direct = event_table(pooled.time, pooled.event)
    for field in ("time", "n_event", "n_censored"):
        np.testing.assert_array_equal(getattr(merged, field), getattr(direct, field))


def test_merge_of_nothing_and_of_empty_tables() -> None:
    assert merge_event_tables([]).n == 0
    empty = event_table(np.empty(0), np.empty(0, bool))
    one = event_table([3.0, 1.0], [True, False])
    merged = merge_event_tables([empty, one, empty])
    np.testing.assert_array_equal(merged.time, [1.0, 3.0])


def test_event_table_is_validated_and_immutable() -> None:
    with pytest.raises(ValueError, match="ascending"):
        EventTable(np.array([2.0, 1.0]), np.array([1, 1]), np.array([0, 0]))
    with pytest.raises(ValueError, match="one length"):
        EventTable(np.array([1.0]), np.array([1, 1]), np.array([0]))
    with pytest.raises(ValueError, match=">= 0"):
        event_table([-1.0], [True])
    table = event_table([1.0, 2.0], [True, False])
    with pytest.raises(ValueError):
        table.n_event[0] = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.time = np.array([0.0])  # type: ignore[misc]
    again = EventTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again == table and again != event_table([1.0, 2.0], [True, True])


# ------------------------------------------------------------------------------------------
# Kaplan-Meier against lifelines on pooled rows
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SITE_SPLITS))
def test_km_from_sites_equals_lifelines_pooled(name: str) -> None:
    sites = SITE_SPLITS[name]()
    pooled = SurvivalData.concatenate(sites)
    merged = federated_tables(sites, [])[()]
    assert_matches_lifelines(merged, pooled.time, pooled.event)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.2])
def test_km_alpha(alpha: float) -> None:
    sites = split_by(lung(), "inst")
    pooled = SurvivalData.concatenate(sites)
    assert_matches_lifelines(federated_tables(sites, [])[()], pooled.time, pooled.event, alpha)


@pytest.mark.parametrize(
    ("make", "site_col", "by"),
    [
        (lung, "inst", ["sex"]),
        (gbsg2, None, ["horTh"]),
        (gbsg2, None, ["horTh", "tgrade"]),
        (rossi, "race", ["fin"]),
        (waltons, None, ["group"]),
    ],
)
def test_grouped_km_equals_lifelines_per_group(
    make: Callable[[], SurvivalData], site_col: str | None, by: list[str]
) -> None:
    data = make()
    sites = split_by(data, site_col) if site_col else split_chunks(data, 3)
    merged = federated_tables(sites, by)
    pooled = SurvivalData.concatenate(sites)
    keys = [
        tuple(format_level(v) for v in row)
        for row in zip(*(pooled.column(c) for c in by), strict=True)
    ]
    assert sorted(merged) == sorted(set(keys))
    for key, table in merged.items():
        mask = np.array([k == key for k in keys])
        assert_matches_lifelines(table, pooled.time[mask], pooled.event[mask])


def test_plan_times_survival_and_number_at_risk() -> None:
    sites = split_by(lung(), "inst")
    pooled = SurvivalData.concatenate(sites)
    table = federated_tables(sites, [])[()]
    event_times = np.unique(pooled.time[pooled.event])
    # 0, exact event times, exact censoring times, between times, beyond the last time
    censor_only = np.setdiff1d(pooled.time[~pooled.event], event_times)
    times = np.array([0.0, event_times[3], event_times[10], censor_only[0], 100.5, 365.0, 2000.0])
    result = kaplan_meier(table, times=times)
    kmf = KaplanMeierFitter().fit(pooled.time, pooled.event)
    np.testing.assert_allclose(result.at_survival, kmf.survival_function_at_times(times), 0, TOL)
    np.testing.assert_array_equal(result.at_at_risk, [(pooled.time >= t).sum() for t in times])
    np.testing.assert_allclose(result.survival_at(times), result.at_survival, 0, 0)
    # at an event time the step has already dropped and the subjects dying then are at risk
    i = int(np.searchsorted(result.time, event_times[3]))
    assert result.at_survival[1] == result.survival[i] < result.survival[i - 1]
    assert result.at_at_risk[1] == result.at_risk[i]


def test_one_site_equals_local_fit() -> None:
    data = gbsg2()
    local = KaplanMeier().fit(data.time, data.event)
    merged = merge_event_tables([event_table(data.time, data.event)])
    assert kaplan_meier(merged).to_dict() == local.result_.to_dict()
    kmf = KaplanMeierFitter().fit(data.time, data.event)
    pd.testing.assert_frame_equal(local.survival_function_, kmf.survival_function_, rtol=TOL)
    pd.testing.assert_frame_equal(local.confidence_interval_, kmf.confidence_interval_, rtol=TOL)
    assert local.median_survival_time_ == kmf.median_survival_time_


def test_sites_of_size_one_and_site_without_events_and_ties_across_sites() -> None:
    rng = np.random.default_rng(7)
    time = rng.integers(0, 15, size=60).astype(float)  # heavy ties, including time 0
    event = rng.random(60) < 0.6
    sites = [(time[i : i + 1], event[i : i + 1]) for i in range(10)]  # ten sites of one row
    sites.append((time[10:30], np.zeros(20, bool)))  # a site with no events
    sites.append((time[30:], event[30:]))
    merged = merge_event_tables(event_table(t, e) for t, e in sites)
    pooled_event = np.concatenate([e for _, e in sites])
    assert_matches_lifelines(merged, time, pooled_event)


def test_all_censored_group() -> None:
    time = np.array([3.0, 5.0, 5.0, 9.0])
    event = np.zeros(4, bool)
    result = kaplan_meier(event_table(time, event), times=[4.0, 10.0])
    assert_matches_lifelines(event_table(time, event), time, event)
    assert np.all(result.survival == 1.0) and np.all(result.ci_lower == 1.0)
    assert result.median == np.inf and result.median_ci == (np.inf, np.inf)
    out = result.to_dict()
    assert out["median"] is None and out["median_ci"] == [None, None]
    assert out["at"] == {"time": [4.0, 10.0], "survival": [1.0, 1.0], "at_risk": [3, 0]}


def test_all_events_curve_reaches_zero() -> None:
    time = np.array([1.0, 2.0, 2.0, 4.0])
    event = np.ones(4, bool)
    assert_matches_lifelines(event_table(time, event), time, event)
    result = kaplan_meier(event_table(time, event))
    assert result.survival[-1] == 0.0 and result.ci_lower[-1] == 0.0


def test_events_at_time_zero() -> None:
    time = np.array([0.0, 0.0, 1.0, 3.0, 3.0, 7.0])
    event = np.array([True, False, True, True, False, False])
    assert_matches_lifelines(event_table(time, event), time, event)


def test_to_dict_is_strict_json() -> None:
    sites = split_chunks(waltons(), 2)
    result = kaplan_meier(federated_tables(sites, [])[()], times=[10.0, 50.0])
    out = result.to_dict()
    text = json.dumps(out, allow_nan=False)
    assert set(json.loads(text)) == {
        "time",
        "survival",
        "ci_lower",
        "ci_upper",
        "at_risk",
        "events",
        "censored",
        "median",
        "median_ci",
        "at",
    }
    assert len(out["time"]) == len(out["survival"]) == len(out["at_risk"])
    assert isinstance(out["at_risk"][0], int)
    summary = result.summary
    assert list(summary.columns) == [
        "survival",
        "ci_lower",
        "ci_upper",
        "at_risk",
        "events",
        "censored",
    ]
    np.testing.assert_array_equal(summary.index.to_numpy(), result.time)


def test_empty_table_and_bad_alpha_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        kaplan_meier(event_table(np.empty(0), np.empty(0, bool)))
    with pytest.raises(ValueError, match="alpha"):
        kaplan_meier(event_table([1.0], [True]), alpha=1.5)


def test_large_input_is_vectorised() -> None:
    rng = np.random.default_rng(3)
    n = 1_000_000
    time = np.round(rng.exponential(100.0, n), 1)
    event = rng.random(n) < 0.7
    halves = [
        event_table(time[: n // 2], event[: n // 2]),
        event_table(time[n // 2 :], event[n // 2 :]),
    ]
    result = kaplan_meier(merge_event_tables(halves), times=[50.0, 100.0])
    assert result.at_risk[0] == n
    assert result.at_at_risk[0] == (time >= 50.0).sum()


# ------------------------------------------------------------------------------------------
# group keys
# ------------------------------------------------------------------------------------------


def test_group_key_formatting() -> None:
    assert [format_level(v) for v in (1.0, -3.0, -0.0, 2.5, 0.1, 1e-7, np.inf)] == [
        "1",
        "-3",
        "0",
        "2.5",
        "0.1",
        "1e-07",
        "inf",
    ]
    assert [format_level(v) for v in (None, np.nan, "A", " b", True, 7)] == [
        "",
        "",
        "A",
        " b",
        "True",
        "7",
    ]
    labels, codes = factorize_labels(np.array([2.0, 1.0, np.nan, 2.0, 0.5]))
    assert labels == ["", "0.5", "1", "2"]
    assert [labels[c] for c in codes] == ["2", "1", "", "2", "0.5"]
    labels, codes = factorize_labels(np.array(["b", None, "a", np.nan, "b"], dtype=object))
    assert labels == ["", "a", "b"] and [labels[c] for c in codes] == ["b", "", "a", "", "b"]


def test_grouped_keys_are_tuples_of_canonical_strings() -> None:
    data = SurvivalData(
        time=np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
        event=np.array([True, False, True, True, False]),
        covariates={
            "ARM": np.array(["B", "A", "B", "A", "B"], dtype=object),
            "DOSE": np.array([10.0, 2.5, 10.0, np.nan, 2.5]),
        },
    )
    tables = grouped_event_tables(data, ["ARM", "DOSE"])
    assert list(tables) == [("A", ""), ("A", "2.5"), ("B", "10"), ("B", "2.5")]
    np.testing.assert_array_equal(tables[("B", "10")].time, [1.0, 3.0])
    assert list(grouped_event_tables(data, [])) == [()]
    assert grouped_event_tables(data, [])[()].n == 5
    empty = data.subset(np.zeros(5, bool))
    assert grouped_event_tables(empty, [])[()].n == 0
    assert grouped_event_tables(empty, ["ARM"]) == {}
