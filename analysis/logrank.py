"""k-group log-rank test, unstratified or stratified, from merged event tables (coordinator half).

The site half is :func:`analysis.km.grouped_event_tables` keyed by the group variable followed by
the stratum variables; the coordinator merges each key over sites with
:func:`analysis.km.merge_event_tables` and calls :func:`logrank_test` with
``{(group_level, stratum_key): table}``.

Within a stratum, at each distinct event time ``t_j`` with ``d_j`` events among ``n_j`` at risk
(``n_gj`` and ``d_gj`` in group ``g``), the test uses

- ``O_g - E_g = sum_j (d_gj - n_gj d_j / n_j)``,
- ``V_gh = sum_j d_j (n_j - d_j) / (n_j - 1) * (n_gj / n_j) * (delta_gh - n_hj / n_j)``
  (hypergeometric variance with the correction for ties; the term is 0 when ``n_j = 1``),

and the stratified test sums ``O - E`` and ``V`` over strata. The statistic is
``U' V^+ U`` with ``U`` and ``V`` reduced to the first ``k - 1`` groups (sorted levels) and
``V^+`` the Moore-Penrose pseudo-inverse; the degrees of freedom are the rank of the reduced
``V``. This equals ``lifelines.statistics.multivariate_logrank_test`` and
``statsmodels.duration.survfunc.survdiff`` when ``V`` has full rank ``k - 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.base import frozen_array, json_safe
from analysis.distributions import chi2_sf
from analysis.km import EventTable, merge_event_tables

StratumKey = tuple[str, ...]


@dataclass(frozen=True, eq=False)
class LogrankResult:
    """Result of a (stratified) k-group log-rank test (immutable).

    Attributes
    ----------
    statistic : float
        Chi-square statistic ``U' V^+ U`` (0 when ``df == 0``).
    df : int
        Degrees of freedom: rank of the reduced variance matrix (``k - 1`` unless degenerate).
    p : float
        ``P(chi2_df > statistic)``; NaN when ``df == 0`` (nothing to test).
    groups : tuple of str
        Group levels, sorted; the order of ``observed``, ``expected`` and ``variance``.
    observed : ndarray of int64, shape (k,)
        Events per group, summed over strata.
    expected : ndarray of float64, shape (k,)
        Expected events per group under the null, summed over strata.
    variance : ndarray of float64, shape (k, k)
        Variance matrix of ``observed - expected``, summed over strata.
    strata : tuple of tuple of str
        Stratum keys, sorted (``((),)`` when unstratified).
    """

    statistic: float
    df: int
    p: float
    groups: tuple[str, ...]
    observed: NDArray[np.int64]
    expected: NDArray[np.float64]
    variance: NDArray[np.float64]
    strata: tuple[StratumKey, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe ``statistic``, ``df``, ``p`` and ``groups`` -> level -> observed/expected.

        The caller adds ``param``, ``by`` and ``strata`` (plan variable names) for results.json.
        """
        return json_safe(
            {
                "statistic": self.statistic,
                "df": self.df,
                "p": self.p,
                "groups": {
                    level: {"observed": self.observed[i], "expected": self.expected[i]}
                    for i, level in enumerate(self.groups)
                },
            }
        )


def _stratum_terms(
    tables: list[EventTable | None],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Observed, expected and variance matrix of one stratum (``None`` = group absent)."""
    k = len(tables)
    present = [t for t in tables if t is not None and t.n > 0]
    if not present:
        return np.zeros(k), np.zeros(k), np.zeros((k, k))
    union = merge_event_tables(present)
    event_times = union.time[union.n_event > 0]
    m = event_times.size
    n_risk = np.zeros((k, m))
    d = np.zeros((k, m))
    for g, table in enumerate(tables):
        if table is None or table.n == 0:
            continue
        cum = np.concatenate(([0], np.cumsum(table.n_removed)))
        pos = np.searchsorted(table.time, event_times, side="left")
        n_risk[g] = table.n - cum[pos]
        hit = pos < table.time.size
        hit[hit] = table.time[pos[hit]] == event_times[hit]
        d[g, hit] = table.n_event[pos[hit]]
    n_tot = n_risk.sum(axis=0)
    d_tot = d.sum(axis=0)
    share = n_risk / n_tot  # n_tot >= d_tot > 0 at event times
    observed = d.sum(axis=1)
    expected = (share * d_tot).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = d_tot * (n_tot - d_tot) / (n_tot - 1.0)
    w = np.where(n_tot > 1.0, w, 0.0)
    weighted = share * w
    variance = np.diag(weighted.sum(axis=1)) - weighted @ share.T
    return observed, expected, variance


def logrank_test(tables: Mapping[tuple[str, StratumKey], EventTable]) -> LogrankResult:
    """Log-rank test of equal survival across groups, stratified when several strata are given.

    Parameters
    ----------
    tables : mapping of (group_level, stratum_key) to EventTable
        Merged (over sites) event table of each group within each stratum. ``stratum_key`` is a
        tuple of str (``()`` for an unstratified test). A group missing from a stratum counts
        as having nobody at risk there.

    Returns
    -------
    LogrankResult

    Raises
    ------
    ValueError
        When ``tables`` is empty.
    """
    if not tables:
        raise ValueError("log-rank test needs at least one event table")
    groups = tuple(sorted({str(g) for g, _ in _checked_keys(tables)}))
    observed, expected, variance = logrank_sums(tables, groups)
    strata = tuple(sorted({s for _, s in tables}))
    return result_from_sums(groups, observed, expected, variance, strata)


def _checked_keys(
    tables: Mapping[tuple[str, StratumKey], EventTable],
) -> list[tuple[str, StratumKey]]:
    for level, stratum in tables:
        if not isinstance(level, str) or not isinstance(stratum, tuple):
            raise TypeError(
                "keys must be (group_level: str, stratum_key: tuple of str); got "
                f"{(level, stratum)!r}"
            )
    return list(tables)


def logrank_sums(
    tables: Mapping[tuple[str, StratumKey], EventTable], groups: tuple[str, ...]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``O``, ``E`` and ``V`` of ``groups`` (in that order) summed over the strata of ``tables``.

    Additive over disjoint strata: a site holding whole strata (``SITE`` among them) sends its
    own sums, and the sum over sites is the stratified test's (secure aggregation).
    """
    k = len(groups)
    observed, expected, variance = np.zeros(k), np.zeros(k), np.zeros((k, k))
    for stratum in sorted({s for _, s in _checked_keys(tables)}):
        o, e, v = _stratum_terms([tables.get((g, stratum)) for g in groups])
        observed += o
        expected += e
        variance += v
    return observed, expected, variance


def result_from_sums(
    groups: tuple[str, ...],
    observed: NDArray[np.float64],
    expected: NDArray[np.float64],
    variance: NDArray[np.float64],
    strata: tuple[StratumKey, ...] = ((),),
) -> LogrankResult:
    """The test from summed ``O``, ``E`` and ``V`` (groups sorted, at least one)."""
    k = len(groups)
    u = (observed - expected)[:-1]
    reduced = variance[:-1, :-1]
    df = int(np.linalg.matrix_rank(reduced)) if k > 1 else 0
    if df == 0:
        statistic, p = 0.0, float("nan")
    else:
        statistic = float(u @ np.linalg.pinv(reduced, hermitian=True) @ u)
        p = chi2_sf(statistic, df)
    return LogrankResult(
        statistic=statistic,
        df=df,
        p=p,
        groups=groups,
        observed=frozen_array(np.rint(observed), np.int64),
        expected=frozen_array(expected, np.float64),
        variance=_frozen_matrix(variance),
        strata=strata,
    )


def _frozen_matrix(values: NDArray[np.float64]) -> NDArray[np.float64]:
    matrix = np.array(values, dtype=np.float64)
    matrix.flags.writeable = False
    return matrix
