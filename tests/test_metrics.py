"""Harrell's C, Uno's C and the (integrated) Brier score against lifelines and scikit-survival,
and the exactness of their site-wise combinations."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines.utils import concordance_index
from sksurv.metrics import brier_score, concordance_index_ipcw, integrated_brier_score
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from analysis import metrics
from analysis.km import event_table, merge_event_tables


def _data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times in whole days (ties), about 35 % censored, risk correlated with the hazard."""
    x = rng.normal(size=n)
    t_event = rng.exponential(100 * np.exp(-0.8 * x))
    t_cens = rng.exponential(180, n)
    time = np.ceil(np.minimum(t_event, t_cens))
    event = t_event <= t_cens
    risk = np.round(x + rng.normal(scale=0.5, size=n), 1)  # rounded: tied predictions too
    return time, event, risk


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_harrell_matches_lifelines(seed: int) -> None:
    time, event, risk = _data(np.random.default_rng(seed), 300)
    # lifelines: higher score = longer survival
    assert metrics.harrell_c(time, event, risk) == pytest.approx(
        concordance_index(time, -risk, event), abs=1e-12
    )


def test_censoring_survival_matches_sksurv() -> None:
    time, event, _ = _data(np.random.default_rng(3), 400)
    g = metrics.censoring_survival(event_table(time, event))
    ref = CensoringDistributionEstimator().fit(Surv.from_arrays(event, time))
    grid = np.unique(time)[:-1]
    np.testing.assert_allclose(g(grid), ref.predict_proba(grid), rtol=0, atol=1e-14)


@pytest.mark.parametrize("tau", [None, 150.0])
def test_uno_matches_sksurv(tau: float | None) -> None:
    rng = np.random.default_rng(4)
    train_t, train_e, _ = _data(rng, 500)
    time, event, risk = _data(rng, 200)
    keep = time < train_t.max()  # sksurv's G is undefined beyond the training times
    time, event, risk = time[keep], event[keep], risk[keep]
    g = metrics.censoring_survival(event_table(train_t, train_e))
    ours = metrics.uno_parts(time, event, risk, g, tau=tau).value
    ref = concordance_index_ipcw(
        Surv.from_arrays(train_e, train_t), Surv.from_arrays(event, time), risk, tau=tau
    )[0]
    assert ours == pytest.approx(ref, abs=1e-12)


def test_integrated_brier_matches_sksurv() -> None:
    rng = np.random.default_rng(5)
    train_t, train_e, _ = _data(rng, 500)
    time, event, risk = _data(rng, 200)
    grid = np.linspace(5, np.quantile(time, 0.8), 25)
    survival = np.exp(-np.outer(np.exp(risk), grid) / 120.0)
    g = metrics.censoring_survival(event_table(train_t, train_e))
    train, test = Surv.from_arrays(train_e, train_t), Surv.from_arrays(event, time)
    ours = metrics.brier_parts(time, event, survival, grid, g).value
    assert ours == pytest.approx(integrated_brier_score(train, test, survival, grid), abs=1e-12)
    one = metrics.brier_parts(time, event, survival[:, [7]], grid[[7]], g).value
    assert one == pytest.approx(brier_score(train, test, survival[:, 7], grid[7])[1][0], abs=1e-12)


def test_site_combinations() -> None:
    """IBS: the n-weighted site mean equals the pooled IBS (same G, same grid). Harrell and Uno:
    the pair-weighted combination equals the C over within-site pairs (brute force)."""
    rng = np.random.default_rng(6)
    train_t, train_e, _ = _data(rng, 600)
    time, event, risk = _data(rng, 240)
    site = rng.integers(0, 3, time.size)
    tables = [event_table(train_t[k::3], train_e[k::3]) for k in range(3)]
    g = metrics.censoring_survival(merge_event_tables(tables))
    np.testing.assert_allclose(
        g(time), metrics.censoring_survival(event_table(train_t, train_e))(time), atol=1e-15
    )
    grid, tau = metrics.evaluation_grid(merge_event_tables(tables))
    survival = np.exp(-np.outer(np.exp(risk), grid) / 120.0)
    parts = [
        metrics.brier_parts(time[site == k], event[site == k], survival[site == k], grid, g)
        for k in range(3)
    ]
    pooled = metrics.brier_parts(time, event, survival, grid, g).value
    assert metrics.combine(parts).value == pytest.approx(pooled, abs=1e-14)

    harrell = metrics.combine(
        metrics.harrell_parts(time[site == k], event[site == k], risk[site == k]) for k in range(3)
    )
    uno = metrics.combine(
        metrics.uno_parts(time[site == k], event[site == k], risk[site == k], g, tau)
        for k in range(3)
    )
    ones = np.ones_like(time)
    use = time < tau
    ipcw = np.zeros_like(time)
    ipcw[use] = 1.0 / g(time[use]) ** 2
    assert harrell.value == pytest.approx(_within_site_c(time, event, risk, site, ones), abs=1e-12)
    assert uno.value == pytest.approx(_within_site_c(time, event, risk, site, ipcw), abs=1e-12)


def _within_site_c(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, site: np.ndarray, w: np.ndarray
) -> float:
    """Weighted concordance over pairs of one site, by a double loop (the definition)."""
    num = den = 0.0
    for i in np.flatnonzero(event):
        for j in np.flatnonzero(site == site[i]):
            if time[j] > time[i] or (time[j] == time[i] and not event[j]):
                den += w[i]
                num += w[i] * (1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0)
    return num / den


def test_breslow_survival_matches_lifelines() -> None:
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi

    df = load_rossi()
    fitter = CoxPHFitter().fit(df, "week", "arrest")
    risk = fitter.predict_log_partial_hazard(df).to_numpy()
    times = [5.0, 20.0, 33.0, 52.0]  # lifelines interpolates between its timeline points
    ours = metrics.breslow_survival(df.week, df.arrest == 1, risk, risk[:8], times)
    ref = fitter.predict_survival_function(df.iloc[:8], times=times).to_numpy().T
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
