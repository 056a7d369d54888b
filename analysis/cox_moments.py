"""Cox partial likelihood, site-stratified baseline, and the tie algebra both baselines share.

With ``"SITE"`` in the strata a site returns its whole partial-likelihood contribution at the
broadcast beta, :func:`stratified_derivatives`; the coordinator adds the
:class:`CoxDerivatives` (:func:`sum_derivatives`). The shared-baseline half is
:mod:`analysis.cox_shared`. O(n p^2) time and O(n p) memory per call, no (n, p, p) array; the
rows are sorted once by :func:`analysis.cox_design.prepare`.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.cox_design import CoxDesign, CoxSpec, FloatArray, Ties, prepare
from analysis.data import SurvivalData

IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class CoxDerivatives:
    """Log partial likelihood and its derivatives at one beta; additive across sites.

    Attributes
    ----------
    loglik : float
    gradient : ndarray, shape (p,)
    information : ndarray, shape (p, p)
        Observed information (minus the Hessian).
    n, events : int
        Rows and events that contributed.
    gross : ndarray, shape (p,), optional
        Diagonal of the information before the risk-set means are subtracted (sum over deaths
        of the risk-set mean of x_j^2, centred x); the scale against which a diagonal element
        of ``information`` counts as zero (a term with no information, only rounding).
    """

    loglik: float
    gradient: FloatArray
    information: FloatArray
    n: int
    events: int
    gross: FloatArray | None = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CoxDerivatives:
        """Rebuild from ``dataclasses.asdict`` output after transport (lists or arrays)."""
        gross = payload.get("gross")
        return cls(
            loglik=float(payload["loglik"]),
            gradient=np.asarray(payload["gradient"], dtype=np.float64).reshape(-1),
            information=_square(payload["information"]),
            n=int(payload["n"]),
            events=int(payload["events"]),
            gross=None if gross is None else np.asarray(gross, dtype=np.float64).reshape(-1),
        )

    def __add__(self, other: CoxDerivatives) -> CoxDerivatives:
        gross = None
        if self.gross is not None and other.gross is not None:
            gross = self.gross + other.gross
        return CoxDerivatives(
            loglik=self.loglik + other.loglik,
            gradient=self.gradient + other.gradient,
            information=self.information + other.information,
            n=self.n + other.n,
            events=self.events + other.events,
            gross=gross,
        )


def _square(values: Any) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    p = int(round(np.sqrt(arr.size)))
    return arr.reshape(p, p)


def sum_derivatives(parts: Sequence[CoxDerivatives]) -> CoxDerivatives:
    """Coordinator: the sum of the sites' :class:`CoxDerivatives` (at least one)."""
    if not parts:
        raise ValueError("sum_derivatives needs at least one site's derivatives")
    return reduce(operator.add, parts)


def _segment_sums(values: FloatArray, starts: IntArray) -> FloatArray:
    """Sums of ``values[starts[g]:starts[g + 1]]`` (last to the end); zeros where empty."""
    n = values.shape[0]
    out = np.zeros((starts.shape[0],) + values.shape[1:])
    ends = np.append(starts[1:], n)
    full = ends > starts
    if full.any():
        out[full] = np.add.reduceat(values, starts[full], axis=0)
    return out


def _suffix(values: FloatArray) -> FloatArray:
    """Reverse cumulative sum along axis 0."""
    return np.cumsum(values[::-1], axis=0)[::-1]


def _pairs(d: IntArray, ties: Ties) -> tuple[IntArray, FloatArray]:
    """Efron/Breslow terms: event-time index and tie fraction c = l / d_k of each death."""
    kk = np.repeat(np.arange(d.shape[0]), d)
    if ties == "breslow":
        return kk, np.zeros(kk.shape[0])
    first = np.repeat(np.cumsum(d) - d, d)
    return kk, (np.arange(kk.shape[0]) - first) / d[kk]


@dataclass(frozen=True)
class _TieTerms:
    """Per event time k, sums over the Efron terms l of one stratum (Breslow: c = 0)."""

    log_denom: float  # sum over (k, l) of log(R0 - c E0)
    a: FloatArray  # sum_l 1 / den
    b: FloatArray  # sum_l c / den
    mean_sum: FloatArray  # sum over (k, l) of m_kl = (R1 - c E1) / den, shape (p,)
    mean_outer: FloatArray  # sum over (k, l) of m_kl m_kl^T, shape (p, p)


def _tie_terms(
    r0: FloatArray, r1: FloatArray, e0: FloatArray, e1: FloatArray, d: IntArray, ties: Ties
) -> _TieTerms:
    """Efron/Breslow sums over the tied deaths of each event time, O(D + K p^2).

    m_kl m_kl^T summed over l is R1 R1^T s0 - (R1 E1^T + E1 R1^T) s1 + E1 E1^T s2 with
    s_j = sum_l c^j / den^2, so no per-death p-vector is ever formed.
    """
    kk, c = _pairs(d, ties)
    k = d.shape[0]
    den = r0[kk] - c * e0[kk]
    inv = 1.0 / den
    inv2 = inv * inv
    a, b, s0, s1, s2 = (
        np.bincount(kk, v, minlength=k).astype(np.float64)
        for v in (inv, c * inv, inv2, c * inv2, c * c * inv2)
    )
    cross = (r1 * s1[:, None]).T @ e1
    outer = (r1 * s0[:, None]).T @ r1 - cross - cross.T + (e1 * s2[:, None]).T @ e1
    return _TieTerms(
        log_denom=float(np.log(den).sum()),
        a=a,
        b=b,
        mean_sum=r1.T @ a - e1.T @ b,
        mean_outer=outer,
    )


def _weighted_column_sums(
    x: FloatArray, w: FloatArray, starts: IntArray, rows: IntArray | None = None
) -> FloatArray:
    """Segment sums of ``w * x[rows]`` (``starts`` strictly increasing, all segments
    non-empty), one contiguous column of the Fortran-ordered ``x`` at a time: no (n, p)
    temporary, which is faster than one strided pass."""
    out = np.empty((starts.shape[0], x.shape[1]))
    for j in range(x.shape[1]):
        col = x[:, j] if rows is None else x[rows, j]
        out[:, j] = np.add.reduceat(col * w, starts)
    return out


def _gram(x: FloatArray, coef: FloatArray, chunk: int = 16384) -> FloatArray:
    """X^T diag(coef) X for coef >= 0, as sum of y^T y over cache-sized row chunks."""
    root = np.sqrt(np.maximum(coef, 0.0))
    out = np.zeros((x.shape[1], x.shape[1]))
    for lo in range(0, x.shape[0], chunk):
        y = x[lo : lo + chunk] * root[lo : lo + chunk, None]
        out += y.T @ y
    return out


def _derivs_block(
    time: FloatArray, event: NDArray[np.bool_], x: FloatArray, beta: FloatArray, ties: Ties
) -> tuple[float, FloatArray, FloatArray, FloatArray]:
    """One stratum, rows sorted by time: loglik, gradient, sum m m^T, per-row Gram weights.

    Segment ``k`` is the rows with ``ut_k <= time < ut_{k+1}``; its only events are at
    ``ut_k``, so the sums over the deaths at ``ut_k`` are segment sums weighted by ``event``.
    No (n, p) temporary is formed.
    """
    p = x.shape[1]
    ev = event.astype(np.float64)
    if not event.any():
        return 0.0, np.zeros(p), np.zeros((p, p)), np.zeros(time.shape[0])
    eta = x @ beta
    eta -= eta.max()
    w = np.exp(eta)
    wev = w * ev
    ut = np.unique(time[event])
    starts = np.searchsorted(time, ut, side="left")
    d = _segment_sums(ev, starts).round().astype(np.int64)
    r0 = _suffix(_segment_sums(w, starts))
    r1 = _suffix(_weighted_column_sums(x, w, starts))
    e0 = _segment_sums(wev, starts)
    deaths = np.flatnonzero(event)
    dstart = np.searchsorted(time[deaths], ut, side="left")
    e1 = _weighted_column_sums(x, w[deaths], dstart, rows=deaths)
    tt = _tie_terms(r0, r1, e0, e1, d, ties)
    loglik = float(eta @ ev - tt.log_denom)
    gradient = x.T @ ev - tt.mean_sum
    # row i is at risk at every event time up to its segment (rows before the first event
    # time are in no risk set): its Gram weight is w_i (sum_{k <= seg} a_k - event_i b_seg)
    marker = np.zeros(time.shape[0] + 1, dtype=np.int64)
    marker[starts] = 1  # starts are distinct: one per event time
    seg = np.cumsum(marker[:-1])
    cum_a = np.concatenate([[0.0], np.cumsum(tt.a)])
    b_row = np.concatenate([[0.0], tt.b])[seg]
    coef = w * cum_a[seg] - wev * b_row
    return loglik, gradient, tt.mean_outer, coef


def stratified_derivatives(
    data: SurvivalData | CoxDesign, spec: CoxSpec, beta: FloatArray
) -> CoxDerivatives:
    """Site half, site-stratified baseline: this site's whole partial-likelihood contribution.

    The baseline is stratified by every variable of ``spec.strata`` within the site (``SITE``
    is constant there), so the sum over sites is the pooled stratified likelihood.

    Parameters
    ----------
    data : SurvivalData or CoxDesign
        The site's rows, or the same rows already prepared (faster across rounds).
    spec : CoxSpec
    beta : ndarray, shape (p,)

    Returns
    -------
    CoxDerivatives
    """
    design = prepare(data, spec)
    beta = np.asarray(beta, dtype=np.float64)
    x = design.x
    p = x.shape[1]
    loglik = 0.0
    gradient = np.zeros(p)
    coef = np.zeros(design.n)
    outer = np.zeros((p, p))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for b in range(len(design.keys)):
            lo, hi = int(design.bounds[b]), int(design.bounds[b + 1])
            ll, g, mm, cf = _derivs_block(
                design.time[lo:hi], design.event[lo:hi], x[lo:hi], beta, design.spec.ties
            )
            loglik += ll
            gradient += g
            outer += mm
            coef[lo:hi] = cf
        gram = _gram(x, coef)  # coef >= 0: Efron's a_k > b_k
        information = gram - outer
        gross = np.diag(gram).copy()
    return CoxDerivatives(loglik, gradient, information, design.n, design.events, gross)
