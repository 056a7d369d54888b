"""Log-rank from merged site event tables equals lifelines / statsmodels on the pooled rows."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from lifelines.statistics import multivariate_logrank_test
from scipy import stats
from statsmodels.duration.survfunc import survdiff

from analysis import SurvivalData
from analysis.base import format_level
from analysis.km import EventTable, event_table, merge_event_tables
from analysis.logrank import StratumKey, logrank_test
from tests.test_km import federated_tables, gbsg2, lung, rossi, split_by, split_chunks, waltons

TOL = 1e-9


def federated_logrank_tables(
    sites: list[SurvivalData], group: str, strata: list[str]
) -> dict[tuple[str, tuple[str, ...]], EventTable]:
    """Coordinator input: site tables keyed by group + strata variables, merged over sites."""
    merged = federated_tables(sites, [group, *strata])
    return {(key[0], key[1:]): table for key, table in merged.items()}


def labels(data: SurvivalData, column: str) -> np.ndarray:
    return np.array([format_level(v) for v in data.column(column)], dtype=object)


def strata_labels(data: SurvivalData, columns: list[str]) -> np.ndarray:
    parts = [labels(data, c) for c in columns]
    return np.array(["|".join(p) for p in zip(*parts, strict=True)], dtype=object)


CASES = [
    ("lung_by_inst", lambda: split_by(lung(), "inst"), "sex", ["ph.ecog"]),
    ("gbsg2_chunks", lambda: split_chunks(gbsg2(), 4), "tgrade", ["horTh"]),
    ("gbsg2_menostat", lambda: split_chunks(gbsg2(), 5, seed=3), "horTh", ["menostat", "tgrade"]),
    ("rossi_by_race", lambda: split_by(rossi(), "race"), "fin", ["wexp"]),
    ("rossi_prio", lambda: split_chunks(rossi(), 3), "paro", ["mar"]),
]


@pytest.mark.parametrize(("name", "make", "group", "strata"), CASES, ids=[c[0] for c in CASES])
def test_unstratified_equals_lifelines_and_survdiff(
    name: str, make: Callable[[], list[SurvivalData]], group: str, strata: list[str]
) -> None:
    sites = make()
    pooled = SurvivalData.concatenate(sites)
    result = logrank_test(federated_logrank_tables(sites, group, []))
    g = labels(pooled, group)
    truth = multivariate_logrank_test(pooled.time, g, pooled.event)
    assert abs(result.statistic - truth.test_statistic) <= TOL * max(1.0, truth.test_statistic)
    assert result.df == truth.degrees_of_freedom
    assert abs(result.p - truth.p_value) <= TOL
    chisq, p = survdiff(pooled.time, pooled.event.astype(float), g)
    assert abs(result.statistic - chisq) <= TOL * max(1.0, chisq)
    # observed / expected against direct counts
    for i, level in enumerate(result.groups):
        assert result.observed[i] == pooled.event[g == level].sum()
    assert abs(result.expected.sum() - pooled.event.sum()) <= 1e-9


@pytest.mark.parametrize(("name", "make", "group", "strata"), CASES, ids=[c[0] for c in CASES])
def test_stratified_equals_survdiff(
    name: str, make: Callable[[], list[SurvivalData]], group: str, strata: list[str]
) -> None:
    sites = make()
    pooled = SurvivalData.concatenate(sites)
    result = logrank_test(federated_logrank_tables(sites, group, strata))
    g = labels(pooled, group)
    s = strata_labels(pooled, strata)
    chisq, p = survdiff(pooled.time, pooled.event.astype(float), g, strata=s)
    assert abs(result.statistic - chisq) <= TOL * max(1.0, chisq)
    assert result.df == len(np.unique(g)) - 1
    assert abs(result.p - p) <= TOL
    assert len(result.strata) == len(np.unique(s))


def test_waltons_two_groups_and_to_dict() -> None:
    sites = split_chunks(waltons(), 3)
    pooled = SurvivalData.concatenate(sites)
    result = logrank_test(federated_logrank_tables(sites, "group", []))
    truth = multivariate_logrank_test(pooled.time, pooled.column("group"), pooled.event)
    assert abs(result.statistic - truth.test_statistic) <= TOL * truth.test_statistic
    out = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(out) == {"statistic", "df", "p", "groups"}
    assert set(out["groups"]) == {"control", "miR-137"}
    assert isinstance(out["groups"]["control"]["observed"], int)
    assert result.strata == ((),)


def test_group_without_events_and_ties_across_sites() -> None:
    rng = np.random.default_rng(11)
    n = 120
    time = rng.integers(1, 20, n).astype(float)
    group = rng.choice(np.array(["A", "B", "C"], dtype=object), n)
    event = (rng.random(n) < 0.5) & (group != "C")  # group C has no events
    cut = [0, 40, 41, 90, n]  # a site of one row
    tables: dict[tuple[str, tuple[str, ...]], list[EventTable]] = {}
    for a, b in zip(cut[:-1], cut[1:], strict=True):
        for level in np.unique(group[a:b]):
            m = group[a:b] == level
            tables.setdefault((str(level), ()), []).append(event_table(time[a:b][m], event[a:b][m]))
    result = logrank_test({k: merge_event_tables(v) for k, v in tables.items()})
    truth = multivariate_logrank_test(time, group, event)
    assert abs(result.statistic - truth.test_statistic) <= TOL * max(1.0, truth.test_statistic)
    chisq, _ = survdiff(time, event.astype(float), group)
    assert abs(result.statistic - chisq) <= TOL * max(1.0, chisq)
    assert result.observed[result.groups.index("C")] == 0


def test_stratum_with_one_group_contributes_nothing() -> None:
    data = gbsg2()
    tables = federated_logrank_tables(split_chunks(data, 3), "horTh", [])
    base = logrank_test(tables)
    # add a stratum where only one group is present
    extra: dict[tuple[str, StratumKey], EventTable] = {
        (g, ("s1",)): t for (g, _), t in tables.items()
    }
    extra[("yes", ("s2",))] = event_table([1.0, 2.0, 3.0], [True, True, False])
    result = logrank_test(extra)
    assert result.statistic == pytest.approx(base.statistic, rel=1e-12)
    assert result.strata == (("s1",), ("s2",))
    assert result.observed[result.groups.index("yes")] == base.observed[1] + 2


def test_degenerate_variance_uses_rank() -> None:
    # group "Z" is censored before the first event: nobody at risk at any event time
    tables: dict[tuple[str, StratumKey], EventTable] = {
        ("A", ()): event_table([2.0, 3.0, 5.0, 8.0], [True, False, True, True]),
        ("B", ()): event_table([1.5, 4.0, 6.0, 9.0], [True, True, False, False]),
        ("Z", ()): event_table([0.5, 1.0], [False, False]),
    }
    result = logrank_test(tables)
    assert result.df == 1
    two = logrank_test({k: v for k, v in tables.items() if k[0] != "Z"})
    assert result.statistic == pytest.approx(two.statistic, rel=1e-12)
    assert result.p == pytest.approx(stats.chi2.sf(two.statistic, 1), rel=1e-12)


def test_single_group_has_no_test() -> None:
    result = logrank_test({("A", ()): event_table([1.0, 2.0], [True, False])})
    assert result.df == 0 and result.statistic == 0.0 and np.isnan(result.p)
    assert result.to_dict()["p"] is None
    with pytest.raises(ValueError, match="at least one"):
        logrank_test({})
    with pytest.raises(TypeError, match="group_level"):
        logrank_test({("A", "s1"): event_table([1.0], [True])})  # type: ignore[dict-item]


def test_group_absent_from_a_stratum_matches_survdiff() -> None:
    data = split_by(lung(), "inst")
    pooled = SurvivalData.concatenate(data)
    inst = labels(pooled, "inst")
    # strata = institution: many institutions lack one of the sexes or have no events
    result = logrank_test(federated_logrank_tables(data, "sex", ["inst"]))
    chisq, _ = survdiff(pooled.time, pooled.event.astype(float), labels(pooled, "sex"), strata=inst)
    assert abs(result.statistic - chisq) <= TOL * max(1.0, chisq)
