"""Discrimination and calibration of risk predictions: Harrell's and Uno's C, Brier scores.

Site half
    :func:`harrell_parts`, :func:`uno_parts` and :func:`brier_parts` reduce one site's test rows
    and predictions to a few sums (:class:`MetricParts`); no row leaves the site.
Coordinator half
    :func:`censoring_survival` builds the censoring distribution G from a (federated, merged)
    Kaplan-Meier event table; :func:`combine` adds the sites' sums.

Combination across sites, and what it equals:

- Harrell's C: each site counts its concordant and comparable pairs; the sum of the concordant
  counts over the sum of the comparable counts is Harrell's C over the *within-site* pairs of the
  pooled test set (pairs across sites are never formed). This comparable-pair-weighted mean of
  the site C-indices is reported as the combination; it is not Harrell's C of the pooled test set,
  which also compares patients of different sites.
- Uno's C: the same, with each pair weighted by ``1 / G(T_i)^2`` (G common to every site).
- Integrated Brier score: with G and the time grid common to every site, the IBS is a mean over
  subjects, so the n-weighted mean of the site IBS *is* the IBS of the pooled test rows.

Conventions follow scikit-survival (``concordance_index_censored``, ``concordance_index_ipcw``,
``brier_score``, ``integrated_brier_score``): a higher ``risk`` means an earlier event; a pair
(i, j) is comparable when i has an event and ``T_i < T_j``, or ``T_i == T_j`` with j censored;
predictions within ``tied_tol`` count one half; G is the Kaplan-Meier estimate of the censoring
distribution with events leaving the risk set before censorings at the same time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analysis.km import EventTable

FloatArray = NDArray[np.float64]
TIED_TOL = 1e-8
"""Predictions closer than this count as tied (scikit-survival's default)."""
_CHUNK = 2048


@dataclass(frozen=True)
class MetricParts:
    """Sums from one site that add up across sites.

    Attributes
    ----------
    numerator, denominator : float
        Concordance: (weighted) concordant pairs plus half the tied ones, and (weighted) comparable
        pairs. Brier: the sum over subjects of the per-subject score, and the number of subjects.
    n : int
        Test subjects at the site.
    """

    numerator: float
    denominator: float
    n: int

    @property
    def value(self) -> float:
        """``numerator / denominator``; NaN when nothing is comparable."""
        return self.numerator / self.denominator if self.denominator > 0 else float("nan")

    def to_dict(self) -> dict[str, float | int]:
        """Plain numbers, for a message."""
        return {"numerator": self.numerator, "denominator": self.denominator, "n": self.n}


def combine(parts: Iterable[MetricParts]) -> MetricParts:
    """Sum the sites' parts; ``.value`` of the result is the combined metric (see module notes)."""
    items = list(parts)
    return MetricParts(
        numerator=float(sum(p.numerator for p in items)),
        denominator=float(sum(p.denominator for p in items)),
        n=int(sum(p.n for p in items)),
    )


def n_weighted(values: Iterable[tuple[float, int]]) -> float:
    """Mean of site values weighted by their numbers of subjects (NaN values left out)."""
    pairs = [(v, n) for v, n in values if np.isfinite(v) and n > 0]
    total = sum(n for _, n in pairs)
    return float(sum(v * n for v, n in pairs) / total) if total else float("nan")


def _arrays(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> tuple[FloatArray, Any, Any]:
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=bool).reshape(-1)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if not t.shape == e.shape == r.shape:
        raise ValueError(
            f"time, event and risk must have one length; got {t.shape}, {e.shape}, {r.shape}"
        )
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(r))):
        raise ValueError("time and risk must be finite")
    return t, e, r


def _concordance(
    t: FloatArray, e: NDArray[np.bool_], r: FloatArray, w: FloatArray, tied_tol: float
) -> tuple[float, float]:
    """Weighted concordant (+ half ties) and comparable pair sums, events in chunks."""
    cases = np.flatnonzero(e & (w > 0))
    numerator = denominator = 0.0
    for start in range(0, cases.size, _CHUNK):
        i = cases[start : start + _CHUNK]
        ti, ri, wi = t[i, None], r[i, None], w[i]
        comparable = (t[None, :] > ti) | ((t[None, :] == ti) & ~e[None, :])
        tied = np.abs(r[None, :] - ri) <= tied_tol
        concordant = (r[None, :] < ri) & ~tied
        numerator += float(
            wi @ (concordant & comparable).sum(1) + 0.5 * (wi @ (tied & comparable).sum(1))
        )
        denominator += float(wi @ comparable.sum(1))
    return numerator, denominator


def harrell_parts(
    time: ArrayLike, event: ArrayLike, risk: ArrayLike, tied_tol: float = TIED_TOL
) -> MetricParts:
    """Site half of Harrell's C: concordant and comparable pair counts.

    Parameters
    ----------
    time, event : array_like, shape (n,)
        Observed times and event indicators (True = event) of the site's test rows.
    risk : array_like, shape (n,)
        Predicted risk scores (higher = earlier event).
    tied_tol : float
        Predictions closer than this are tied.
    """
    t, e, r = _arrays(time, event, risk)
    num, den = _concordance(t, e, r, np.ones_like(t), tied_tol)
    return MetricParts(num, den, int(t.size))


def harrell_c(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's C of one set of rows (NaN when no pair is comparable)."""
    return harrell_parts(time, event, risk).value


@dataclass(frozen=True)
class CensoringSurvival:
    """Kaplan-Meier estimate G(t) of the censoring distribution, a right-continuous step function.

    Attributes
    ----------
    time : ndarray
        Distinct times of the merged training event table, ascending.
    survival : ndarray
        G just after each time.
    """

    time: FloatArray
    survival: FloatArray

    def __call__(self, t: ArrayLike) -> FloatArray:
        """G(t); 1 before the first time, the last value after the last time."""
        at = np.asarray(t, dtype=np.float64).reshape(-1)
        idx = np.searchsorted(self.time, at, side="right") - 1
        return np.where(idx >= 0, self.survival[np.maximum(idx, 0)], 1.0)

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, for a message."""
        return {"time": self.time.tolist(), "survival": self.survival.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CensoringSurvival:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(data["time"], np.float64), np.asarray(data["survival"], np.float64))


def censoring_survival(table: EventTable) -> CensoringSurvival:
    """G from an event table (usually merged over the sites' training splits).

    At each time, censorings happen after events: the censoring risk set is the number at risk
    minus the events there (scikit-survival's ``kaplan_meier_estimator(reverse=True)``).
    """
    removed = table.n_removed
    at_risk = table.n - np.concatenate(([0], np.cumsum(removed)[:-1]))
    risk_set = (at_risk - table.n_event).astype(np.float64)
    c = table.n_censored.astype(np.float64)
    ratio = np.divide(c, risk_set, out=np.zeros_like(c), where=c > 0)
    return CensoringSurvival(table.time.copy(), np.cumprod(1.0 - ratio).astype(np.float64))


def uno_parts(
    time: ArrayLike,
    event: ArrayLike,
    risk: ArrayLike,
    censoring: CensoringSurvival,
    tau: float | None = None,
    tied_tol: float = TIED_TOL,
) -> MetricParts:
    """Site half of Uno's C: IPCW-weighted concordant and comparable pair sums.

    Each pair whose earlier member i has an event before ``tau`` is weighted by ``1 / G(T_i)^2``
    (Uno et al. 2011). G must be positive at the test event times before ``tau``.
    """
    t, e, r = _arrays(time, event, risk)
    limit = np.inf if tau is None else float(tau)
    g = censoring(t)
    use = e & (t < limit)
    if np.any(g[use] <= 0):
        raise ValueError("the censoring survival G is zero at a test event time before tau")
    w = np.zeros_like(t)
    w[use] = 1.0 / np.square(g[use])
    num, den = _concordance(t, e, r, w, tied_tol)
    return MetricParts(num, den, int(t.size))


def brier_scores(
    time: ArrayLike,
    event: ArrayLike,
    survival: ArrayLike,
    times: ArrayLike,
    censoring: CensoringSurvival,
) -> FloatArray:
    """Per-subject IPCW Brier terms (Graf et al. 1999), shape (n, len(times)).

    ``survival[i, k]`` is the predicted probability that subject i is event-free at ``times[k]``.
    A subject with an event by t contributes ``S^2 / G(T_i)``, one still at risk after t
    ``(1 - S)^2 / G(t)``, one censored by t nothing; a term whose G is 0 counts 0.
    """
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=bool).reshape(-1)
    grid = np.asarray(times, dtype=np.float64).reshape(-1)
    s = np.asarray(survival, dtype=np.float64).reshape(t.size, grid.size)
    g_t = censoring(grid)
    g_y = censoring(t)
    # where G is 0 the weight is 0, as in scikit-survival (which sets G = inf there)
    inv_t = np.divide(1.0, g_t, out=np.zeros_like(g_t), where=g_t > 0)
    inv_y = np.divide(1.0, g_y, out=np.zeros_like(g_y), where=g_y > 0)
    case = (t[:, None] <= grid[None, :]) & e[:, None]
    control = t[:, None] > grid[None, :]
    case_term = np.where(case, np.square(s) * inv_y[:, None], 0.0)
    control_term = np.where(control, np.square(1.0 - s) * inv_t[None, :], 0.0)
    return np.asarray(case_term + control_term, dtype=np.float64)


def brier_parts(
    time: ArrayLike,
    event: ArrayLike,
    survival: ArrayLike,
    times: ArrayLike,
    censoring: CensoringSurvival,
) -> MetricParts:
    """Site half of the integrated Brier score over ``times`` (at least two points).

    The per-subject Brier curve is integrated by the trapezoidal rule and divided by
    ``times[-1] - times[0]``; the site sends the sum over its subjects and their number. With one
    time point the result is the Brier score at that time.
    """
    grid = np.asarray(times, dtype=np.float64).reshape(-1)
    terms = brier_scores(time, event, survival, grid, censoring)
    if grid.size == 1:
        per_subject = terms[:, 0]
    else:
        if np.any(np.diff(grid) <= 0):
            raise ValueError("times must be strictly ascending")
        per_subject = np.trapezoid(terms, grid, axis=1) / (grid[-1] - grid[0])
    return MetricParts(float(per_subject.sum()), float(per_subject.size), int(per_subject.size))


def evaluation_grid(
    table: EventTable, points: int = 50, at_risk_fraction: float = 0.1
) -> tuple[FloatArray, float]:
    """Time grid for the integrated Brier score and the truncation time ``tau`` of Uno's C.

    From the merged training event table: the grid runs from the first event time to ``tau``,
    the last time at which at least ``at_risk_fraction`` of the subjects are still at risk and G
    is still positive.

    Returns
    -------
    grid : ndarray
        ``points`` equally spaced times (fewer if the range is degenerate).
    tau : float
    """
    if table.n_events == 0:
        raise ValueError("the training event table has no event")
    at_risk = table.n - np.concatenate(([0], np.cumsum(table.n_removed)[:-1]))
    first = float(table.time[np.flatnonzero(table.n_event > 0)[0]])
    positive = censoring_survival(table).survival > 0
    enough = np.flatnonzero((at_risk >= at_risk_fraction * table.n) & positive)
    tau = float(table.time[enough[-1]])
    if tau <= first:
        return np.asarray([first]), first
    return np.linspace(first, tau, points), tau


def breslow_survival(
    train_time: ArrayLike,
    train_event: ArrayLike,
    train_risk: ArrayLike,
    risk: ArrayLike,
    times: ArrayLike,
) -> FloatArray:
    """Predicted survival ``exp(-H0(t) exp(risk))`` at ``times``, shape (len(risk), len(times)).

    ``H0`` is Breslow's baseline cumulative hazard from the training rows and their risk scores
    (a site's own rows: the model's baseline is stratified by site).
    """
    t = np.asarray(train_time, dtype=np.float64).reshape(-1)
    e = np.asarray(train_event, dtype=bool).reshape(-1)
    r = np.asarray(train_risk, dtype=np.float64).reshape(-1)
    shift = float(r.max()) if r.size else 0.0
    w = np.exp(r - shift)
    event_times = np.unique(t[e])
    # risk-set sums at each event time: rows with time >= t
    order = np.argsort(t)
    tail = np.cumsum(w[order][::-1])[::-1]
    first = np.searchsorted(t[order], event_times, side="left")
    d = np.bincount(np.searchsorted(event_times, t[e]), minlength=event_times.size)
    hazard = d / tail[first] * np.exp(-shift)
    cumulative = np.cumsum(hazard)
    grid = np.asarray(times, dtype=np.float64).reshape(-1)
    idx = np.searchsorted(event_times, grid, side="right") - 1
    h0 = np.where(idx >= 0, cumulative[np.maximum(idx, 0)] if cumulative.size else 0.0, 0.0)
    rr = np.exp(np.asarray(risk, dtype=np.float64).reshape(-1, 1))
    return np.asarray(np.exp(-h0[None, :] * rr), dtype=np.float64)
