"""Kaplan-Meier: site event tables and the coordinator estimator.

Site half
    :func:`event_table` and :func:`grouped_event_tables` reduce rows to counts at distinct times.
Coordinator half
    :func:`merge_event_tables` sums the sites' tables at equal times; :func:`kaplan_meier`
    computes the estimate, Greenwood exponential confidence band and median from the merged table.

Because the Kaplan-Meier estimator depends on the rows only through the counts of events and of
rows removed at each distinct time, the estimate from merged tables is the estimate from the pooled
rows. The arithmetic follows ``lifelines.KaplanMeierFitter`` step by step (same timeline, same
cumulative sums of logs, same confidence band formula, same median search), so the two agree to
rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from analysis.base import factorize_labels, frozen_array, json_safe
from analysis.data import SurvivalData
from analysis.distributions import normal_quantile

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class EventTable:
    """Counts of one group at its distinct times of any row (event or censoring).

    Parameters
    ----------
    time : ndarray of float64, shape (m,)
        Strictly ascending distinct times.
    n_event : ndarray of int64, shape (m,)
        Rows with an observed event at each time.
    n_censored : ndarray of int64, shape (m,)
        Rows censored at each time.

    Notes
    -----
    Arrays are stored as read-only copies. A table may be empty (``m == 0``).
    """

    time: FloatArray
    n_event: IntArray
    n_censored: IntArray

    def __post_init__(self) -> None:
        time = frozen_array(self.time, np.float64)
        n_event = frozen_array(self.n_event, np.int64)
        n_censored = frozen_array(self.n_censored, np.int64)
        if not (time.shape == n_event.shape == n_censored.shape):
            raise ValueError(
                f"time, n_event and n_censored must have one length; got {time.shape}, "
                f"{n_event.shape} and {n_censored.shape}"
            )
        if not np.all(np.isfinite(time)):
            raise ValueError("event table times must be finite")
        if np.any(np.diff(time) <= 0):
            raise ValueError("event table times must be strictly ascending")
        if np.any(n_event < 0) or np.any(n_censored < 0):
            raise ValueError("event table counts must be >= 0")
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "n_event", n_event)
        object.__setattr__(self, "n_censored", n_censored)

    @property
    def n_removed(self) -> IntArray:
        """Rows leaving the risk set at each time (events plus censorings)."""
        return self.n_event + self.n_censored

    @property
    def n(self) -> int:
        """Number of rows summarised."""
        return int(self.n_event.sum() + self.n_censored.sum())

    @property
    def n_events(self) -> int:
        """Number of observed events."""
        return int(self.n_event.sum())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventTable):
            return NotImplemented
        return (
            np.array_equal(self.time, other.time)
            and np.array_equal(self.n_event, other.n_event)
            and np.array_equal(self.n_censored, other.n_censored)
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, list[Any]]:
        """Plain lists ``{"time", "n_event", "n_censored"}`` (for message encoding)."""
        return {
            "time": self.time.tolist(),
            "n_event": self.n_event.tolist(),
            "n_censored": self.n_censored.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventTable:
        """Inverse of :meth:`to_dict`."""
        return cls(
            time=np.asarray(data["time"], dtype=np.float64),
            n_event=np.asarray(data["n_event"], dtype=np.int64),
            n_censored=np.asarray(data["n_censored"], dtype=np.int64),
        )


# ---------------------------------------------------------------------------------------------
# Site half
# ---------------------------------------------------------------------------------------------


def event_table(time: ArrayLike, event: ArrayLike) -> EventTable:
    """Event table of right-censored rows.

    Parameters
    ----------
    time : array_like of float, shape (n,)
        Times, finite and >= 0.
    event : array_like of bool, shape (n,)
        True for an observed event, False for a censoring.

    Returns
    -------
    EventTable
        Counts at the distinct values of ``time``.
    """
    t = np.asarray(time, dtype=np.float64).reshape(-1) + 0.0  # -0.0 -> 0.0
    e = np.asarray(event, dtype=bool).reshape(-1)
    if t.shape != e.shape:
        raise ValueError(f"time and event must have one length; got {t.shape} and {e.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("time must be finite and >= 0")
    uniq, inverse = np.unique(t, return_inverse=True)
    removed = np.bincount(inverse, minlength=uniq.size).astype(np.int64)
    events = np.bincount(inverse[e], minlength=uniq.size).astype(np.int64)
    return EventTable(time=uniq, n_event=events, n_censored=removed - events)


def group_codes(
    data: SurvivalData, by: Sequence[str]
) -> tuple[list[tuple[str, ...]], NDArray[np.intp]]:
    """Group keys of the rows of ``data`` by the columns ``by``.

    Parameters
    ----------
    data : SurvivalData
        Rows of one site.
    by : sequence of str
        Covariate names; ``[]`` puts every row in the one group ``()``.

    Returns
    -------
    keys : list of tuple of str
        Distinct keys present in the data, sorted; each key holds one canonical label per
        column of ``by`` (see :mod:`analysis.base` for the formatting rules).
    codes : ndarray of intp, shape (n,)
        ``keys[codes[i]]`` is the key of row ``i``.
    """
    if len(by) == 0:
        return [()], np.zeros(data.n, dtype=np.intp)
    per_column = [factorize_labels(data.column(name)) for name in by]
    dims = tuple(max(len(labels), 1) for labels, _ in per_column)
    flat = np.ravel_multi_index(tuple(codes for _, codes in per_column), dims)
    present, codes = np.unique(flat, return_inverse=True)
    index = np.unravel_index(present, dims)
    keys = [
        tuple(per_column[j][0][int(index[j][g])] for j in range(len(by)))
        for g in range(present.size)
    ]
    # the label lists are sorted, so lexicographic codes give keys in sorted order already
    return keys, codes.reshape(-1).astype(np.intp)


def grouped_event_tables(
    data: SurvivalData, by: Sequence[str]
) -> dict[tuple[str, ...], EventTable]:
    """Event table of each group of rows.

    Parameters
    ----------
    data : SurvivalData
        Rows of one site.
    by : sequence of str
        Grouping covariates; ``[]`` gives the single key ``()``.

    Returns
    -------
    dict of tuple of str to EventTable
        One entry per key present at this site, keys sorted. A key is a tuple with one string per
        column of ``by``: strings as they are, integral numbers without ``.0`` (``1.0 -> "1"``),
        other numbers by ``repr`` (``2.5 -> "2.5"``), missing values as ``""``
        (see :mod:`analysis.base`). With ``by=[]`` and no rows, the one key ``()`` maps to an
        empty table.
    """
    keys, codes = group_codes(data, by)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(keys) + 1))
    tables: dict[tuple[str, ...], EventTable] = {}
    for g, key in enumerate(keys):
        rows = order[bounds[g] : bounds[g + 1]]
        tables[key] = event_table(data.time[rows], data.event[rows])
    return tables


# ---------------------------------------------------------------------------------------------
# Coordinator half
# ---------------------------------------------------------------------------------------------


def merge_event_tables(tables: Iterable[EventTable]) -> EventTable:
    """Sum event tables at equal times (exact integer sums).

    Parameters
    ----------
    tables : iterable of EventTable
        Tables of one group from several sites.

    Returns
    -------
    EventTable
        Table over the union of the times.
    """
    parts = list(tables)
    if not parts:
        return EventTable(np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64))
    times = np.concatenate([p.time for p in parts])
    uniq, inverse = np.unique(times, return_inverse=True)
    # float64 sums of integer counts are exact below 2**53 rows
    events = np.bincount(inverse, np.concatenate([p.n_event for p in parts]), uniq.size)
    censored = np.bincount(inverse, np.concatenate([p.n_censored for p in parts]), uniq.size)
    return EventTable(time=uniq, n_event=np.rint(events), n_censored=np.rint(censored))


def at_risk(table: EventTable) -> IntArray:
    """Number at risk just before each time of ``table``: ``N - rows with time < t``."""
    removed = table.n_removed
    before = np.concatenate(([0], np.cumsum(removed)[:-1])) if removed.size else removed
    return np.int64(table.n) - before.astype(np.int64)


def at_risk_at(table: EventTable, times: ArrayLike) -> IntArray:
    """Number at risk at arbitrary times: rows with time >= t (``N - rows with time < t``)."""
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    cum = np.concatenate(([0], np.cumsum(table.n_removed))).astype(np.int64)
    return np.int64(table.n) - cum[np.searchsorted(table.time, t, side="left")]


def _first_at_or_below(values: FloatArray, timeline: FloatArray, q: float) -> float:
    """lifelines ``qth_survival_time``: first time the curve is <= q (searchsorted on -values)."""
    if values[-1] > q:
        return float("inf")
    return float(timeline[int(np.searchsorted(-values, -q, side="left"))])


@dataclass(frozen=True, eq=False)
class KaplanMeierResult:
    """Kaplan-Meier estimate of one group (immutable).

    Attributes
    ----------
    time : ndarray of float64
        Timeline: 0 and every distinct time of any row (as lifelines' ``timeline``).
    survival, ci_lower, ci_upper : ndarray of float64
        Estimate and Greenwood exponential ("log(-log)") pointwise confidence band.
    var_log_survival : ndarray of float64
        Greenwood sum ``sum d / (n (n - d))``, the variance of ``log S`` (lifelines
        ``_cumulative_sq_``).
    at_risk, events, censored : ndarray of int64
        Number at risk just before each time, events and censorings at it.
    median : float
        First time with ``S(t) <= 0.5``; ``inf`` when the curve stays above.
    median_ci : tuple of float
        Same search applied to the lower and to the upper band.
    alpha : float
        One minus the confidence level.
    at_time, at_survival, at_at_risk : ndarray
        Plan time points, ``S(t)`` there (step function, right-continuous) and the number with
        time >= t.
    """

    time: FloatArray
    survival: FloatArray
    ci_lower: FloatArray
    ci_upper: FloatArray
    var_log_survival: FloatArray
    at_risk: IntArray
    events: IntArray
    censored: IntArray
    median: float
    median_ci: tuple[float, float]
    alpha: float
    at_time: FloatArray
    at_survival: FloatArray
    at_at_risk: IntArray

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.at_risk[0]) if self.at_risk.size else 0

    @property
    def summary(self) -> pd.DataFrame:
        """Life table indexed by ``time``."""
        return pd.DataFrame(
            {
                "survival": self.survival,
                "ci_lower": self.ci_lower,
                "ci_upper": self.ci_upper,
                "at_risk": self.at_risk,
                "events": self.events,
                "censored": self.censored,
            },
            index=pd.Index(self.time, name="time"),
        )

    def survival_at(self, times: ArrayLike) -> FloatArray:
        """Step-function value ``S(t)`` (1 before the first time)."""
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        idx = np.searchsorted(self.time, t, side="right") - 1
        return np.where(idx >= 0, self.survival[np.maximum(idx, 0)], 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe group entry of a ``km`` analysis in results.json (NaN/inf -> None)."""
        return json_safe(
            {
                "time": self.time,
                "survival": self.survival,
                "ci_lower": self.ci_lower,
                "ci_upper": self.ci_upper,
                "at_risk": self.at_risk,
                "events": self.events,
                "censored": self.censored,
                "median": self.median,
                "median_ci": list(self.median_ci),
                "at": {
                    "time": self.at_time,
                    "survival": self.at_survival,
                    "at_risk": self.at_at_risk,
                },
            }
        )


def kaplan_meier(
    table: EventTable, alpha: float = 0.05, times: ArrayLike | None = None
) -> KaplanMeierResult:
    """Kaplan-Meier estimate from a (merged) event table.

    Parameters
    ----------
    table : EventTable
        Counts of one group, usually merged over sites.
    alpha : float, default 0.05
        The band is the ``1 - alpha`` pointwise confidence interval.
    times : array_like of float, optional
        Plan time points for ``at_*`` (survival and number at risk there).

    Returns
    -------
    KaplanMeierResult

    Notes
    -----
    Follows ``lifelines.KaplanMeierFitter.fit`` exactly: ``log S`` is the running sum of
    ``log(n - d) - log(n)`` over the timeline, the Greenwood term is ``d / (n (n - d))`` (0 when
    ``n == d``), and the band is ``exp(-exp(log(-log S) -/+ z sqrt(var) / log S))`` with
    ``z = Phi^-1(1 - alpha / 2)``, set to 1 where undefined (``S == 1``).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    if table.n == 0:
        raise ValueError("cannot estimate a survival curve from an empty event table")
    # lifelines' timeline always starts at 0 (birth time of every row)
    if table.time[0] > 0.0:
        time = np.concatenate(([0.0], table.time))
        deaths = np.concatenate(([0], table.n_event)).astype(np.int64)
        censored = np.concatenate(([0], table.n_censored)).astype(np.int64)
    else:
        time, deaths, censored = table.time, table.n_event, table.n_censored
    removed = deaths + censored
    population = np.int64(table.n) - np.concatenate(([0], np.cumsum(removed)[:-1]))
    n = population.astype(np.float64)
    d = deaths.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_survival = np.cumsum(np.log(n - d) - np.log(n))
        greenwood = d / (n * (n - d))
        greenwood[np.isinf(greenwood)] = 0.0
        var = np.cumsum(greenwood)
        survival = np.exp(log_survival)
        z = normal_quantile(1.0 - alpha / 2.0)
        v = np.log(survival)
        lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(var) / v))
        upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(var) / v))
    lower = np.where(np.isnan(lower), 1.0, lower)
    upper = np.where(np.isnan(upper), 1.0, upper)

    median = _first_at_or_below(survival, time, 0.5)
    median_ci = (_first_at_or_below(lower, time, 0.5), _first_at_or_below(upper, time, 0.5))

    at_time = np.empty(0) if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
    idx = np.searchsorted(time, at_time, side="right") - 1
    at_survival = np.where(idx >= 0, survival[np.maximum(idx, 0)], 1.0)
    return KaplanMeierResult(
        time=frozen_array(time, np.float64),
        survival=frozen_array(survival, np.float64),
        ci_lower=frozen_array(lower, np.float64),
        ci_upper=frozen_array(upper, np.float64),
        var_log_survival=frozen_array(var, np.float64),
        at_risk=frozen_array(population, np.int64),
        events=frozen_array(deaths, np.int64),
        censored=frozen_array(censored, np.int64),
        median=median,
        median_ci=median_ci,
        alpha=float(alpha),
        at_time=frozen_array(at_time, np.float64),
        at_survival=frozen_array(at_survival, np.float64),
        at_at_risk=frozen_array(at_risk_at(table, at_time), np.int64),
    )


class KaplanMeier:
    """lifelines-like wrapper: ``KaplanMeier(alpha).fit(time, event)`` on local rows.

    Parameters
    ----------
    alpha : float, default 0.05
        One minus the confidence level.

    Attributes
    ----------
    result_ : KaplanMeierResult
    survival_function_ : DataFrame
        Column ``"KM_estimate"`` indexed by ``timeline``.
    confidence_interval_ : DataFrame
        Columns ``"KM_estimate_lower_<1-alpha>"`` and ``"KM_estimate_upper_<1-alpha>"``.
    median_survival_time_ : float
    event_table_ : EventTable
    """

    result_: KaplanMeierResult
    event_table_: EventTable

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = alpha

    def fit(self, time: ArrayLike, event: ArrayLike, times: ArrayLike | None = None) -> KaplanMeier:
        """Fit on rows; returns ``self``."""
        self.event_table_ = event_table(time, event)
        self.result_ = kaplan_meier(self.event_table_, alpha=self.alpha, times=times)
        return self

    @property
    def survival_function_(self) -> pd.DataFrame:
        """Estimate as a one-column DataFrame indexed by ``timeline``."""
        index = pd.Index(self.result_.time, name="timeline")
        return pd.DataFrame({"KM_estimate": self.result_.survival}, index=index)

    @property
    def confidence_interval_(self) -> pd.DataFrame:
        """Pointwise confidence band with lifelines' column names."""
        level = f"{1 - self.alpha:g}"
        return pd.DataFrame(
            {
                f"KM_estimate_lower_{level}": self.result_.ci_lower,
                f"KM_estimate_upper_{level}": self.result_.ci_upper,
            },
            index=pd.Index(self.result_.time),
        )

    @property
    def median_survival_time_(self) -> float:
        """Median survival time (``inf`` when not reached)."""
        return self.result_.median
