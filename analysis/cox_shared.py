"""Cox with a baseline shared across sites: risk-set moments (site) and their likelihood.

Used when ``"SITE"`` is not among the strata (``[]``, ``["SEX"]``, ``["COUNTRY"]``...): round 1
collects each site's event times per stratum (:func:`local_event_times`, merged by
:func:`merge_event_times`); every later round a site returns :func:`risk_set_moments` at the
broadcast beta and center, the coordinator sums them (:func:`sum_moments`) and evaluates
Efron/Breslow with :func:`derivatives_from_moments`. Moments cost O(n p^2) time, O(n p) memory
and O(T p^2) to send (T = global distinct event times).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.cox_design import CoxDesign, CoxSpec, FloatArray, StratumKey, Ties, prepare
from analysis.cox_moments import (
    CoxDerivatives,
    IntArray,
    _segment_sums,
    _suffix,
    _tie_terms,
)
from analysis.data import SurvivalData


@dataclass(frozen=True)
class RiskSetMoments:
    """Risk-set sums at the global event times of every stratum; additive across sites.

    Strata are laid out one after another: stratum ``keys[s]`` owns entries
    ``offsets[s]:offsets[s + 1]`` of every array. ``w = exp((x - center) beta)`` and every
    ``x`` below is ``x - center``.

    Attributes
    ----------
    keys : tuple of StratumKey
    offsets : ndarray of int64, shape (len(keys) + 1,)
    time : ndarray, shape (T,)
        Global event times, ascending within each stratum.
    r0, r1, r2 : ndarray, shapes (T,), (T, p), (T, p, p)
        Sums of w, w x, w x x^T over rows at risk (time >= t).
    d : ndarray of int64, shape (T,)
        Events at t.
    dx, e0, e1, e2 : ndarray, shapes (T, p), (T,), (T, p), (T, p, p)
        Sums of x, w, w x, w x x^T over rows with an event at t.
    eta_events : float
        Sum of (x - center) beta over the rows with an event (enters the log-likelihood).
    n, events : int
    """

    keys: tuple[StratumKey, ...]
    offsets: IntArray
    time: FloatArray
    r0: FloatArray
    r1: FloatArray
    r2: FloatArray
    d: IntArray
    dx: FloatArray
    e0: FloatArray
    e1: FloatArray
    e2: FloatArray
    eta_events: float
    n: int
    events: int

    def __add__(self, other: RiskSetMoments) -> RiskSetMoments:
        if self.keys != other.keys or not np.array_equal(self.time, other.time):
            raise ValueError("RiskSetMoments computed on different grids cannot be added")
        return RiskSetMoments(
            keys=self.keys,
            offsets=self.offsets,
            time=self.time,
            r0=self.r0 + other.r0,
            r1=self.r1 + other.r1,
            r2=self.r2 + other.r2,
            d=self.d + other.d,
            dx=self.dx + other.dx,
            e0=self.e0 + other.e0,
            e1=self.e1 + other.e1,
            e2=self.e2 + other.e2,
            eta_events=self.eta_events + other.eta_events,
            n=self.n + other.n,
            events=self.events + other.events,
        )


def _segment_gram(w: FloatArray, x: FloatArray, starts: IntArray) -> FloatArray:
    """Segment sums of w x x^T, shape (G, p, p), one column at a time (O(n p) memory)."""
    p = x.shape[1]
    out = np.zeros((starts.shape[0], p, p))
    for j in range(p):
        seg = _segment_sums((w * x[:, j])[:, None] * x[:, j:], starts)
        out[:, j, j:] = seg
        out[:, j:, j] = seg
    return out


def local_event_times(
    data: SurvivalData | CoxDesign, spec: CoxSpec
) -> dict[StratumKey, FloatArray]:
    """Site half of the event-time grid: distinct event times per stratum key."""
    design = prepare(data, spec)
    out: dict[StratumKey, FloatArray] = {}
    for b, key in enumerate(design.keys):
        lo, hi = int(design.bounds[b]), int(design.bounds[b + 1])
        times = np.unique(design.time[lo:hi][design.event[lo:hi]])
        if times.size:
            out[key] = times
    return out


def merge_event_times(
    sites: list[Mapping[StratumKey, FloatArray]],
) -> dict[StratumKey, FloatArray]:
    """Coordinator: union of the sites' event times per stratum key (keys sorted)."""
    keys = sorted({k for site in sites for k in site})
    return {
        k: np.unique(np.concatenate([np.asarray(s[k], float) for s in sites if k in s]))
        for k in keys
    }


def risk_set_moments(
    data: SurvivalData | CoxDesign,
    spec: CoxSpec,
    beta: FloatArray,
    center: FloatArray,
    grids: Mapping[StratumKey, FloatArray],
) -> RiskSetMoments:
    """Site half, baseline shared across sites: risk-set sums at the global event times.

    Parameters
    ----------
    data : SurvivalData or CoxDesign
    spec : CoxSpec
        ``spec.strata`` must not vary within a stratum across sites (e.g. ``[]``, ``["SEX"]``,
        ``["COUNTRY"]``).
    beta, center : ndarray, shape (p,)
        The broadcast point and the broadcast shift (the same at every site).
    grids : mapping of StratumKey to ndarray
        Global distinct event times of each stratum, ascending (:func:`merge_event_times`).

    Returns
    -------
    RiskSetMoments
        Laid out in sorted key order; a stratum this site lacks is all zeros.

    Raises
    ------
    ValueError
        When a local event time is missing from its stratum's grid (a protocol error).
    """
    design = prepare(data, spec)
    beta = np.asarray(beta, dtype=np.float64)
    x = design.x
    p = x.shape[1]
    shift = design.x_mean - np.asarray(center, dtype=np.float64)
    keys = tuple(sorted(grids))
    grid_of = [np.asarray(grids[k], dtype=np.float64) for k in keys]
    offsets = np.concatenate([[0], np.cumsum([g.shape[0] for g in grid_of])]).astype(np.int64)
    total = int(offsets[-1])
    out: dict[str, NDArray[Any]] = {
        "r0": np.zeros(total),
        "r1": np.zeros((total, p)),
        "r2": np.zeros((total, p, p)),
        "d": np.zeros(total, dtype=np.int64),
        "dx": np.zeros((total, p)),
        "e0": np.zeros(total),
        "e1": np.zeros((total, p)),
        "e2": np.zeros((total, p, p)),
    }
    eta_events = 0.0
    block_of = {k: b for b, k in enumerate(design.keys)}
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for s, key in enumerate(keys):
            if key not in block_of or grid_of[s].shape[0] == 0:
                continue
            lo, hi = int(design.bounds[block_of[key]]), int(design.bounds[block_of[key] + 1])
            sl = slice(int(offsets[s]), int(offsets[s + 1]))
            block, eta_sum = _moments_block(
                design.time[lo:hi], design.event[lo:hi], x[lo:hi], beta, shift, grid_of[s], key
            )
            eta_events += eta_sum
            for name, values in block.items():
                out[name][sl] = values
    return RiskSetMoments(
        keys=keys,
        offsets=offsets,
        time=np.concatenate(grid_of) if keys else np.zeros(0),
        eta_events=eta_events,
        n=design.n,
        events=design.events,
        **out,
    )


def _moments_block(
    t: FloatArray,
    ev: NDArray[np.bool_],
    x: FloatArray,
    beta: FloatArray,
    shift: FloatArray,
    grid: FloatArray,
    key: StratumKey,
) -> tuple[dict[str, NDArray[Any]], float]:
    """One stratum of :func:`risk_set_moments`, rows sorted by time.

    ``x`` is centred at the local mean; the moments of ``x + shift`` (centred at the
    broadcast center) follow exactly from those of ``x`` without copying the rows.
    """
    scale = float(np.exp(shift @ beta))
    eta = x @ beta
    w = np.exp(eta) * scale
    starts = np.searchsorted(t, grid, side="left")
    r0, r1, r2 = _moments(w, x, starts, shift, suffix=True)
    block: dict[str, NDArray[Any]] = {"r0": r0, "r1": r1, "r2": r2}
    deaths = np.flatnonzero(ev)
    if deaths.size == 0:
        return block, 0.0
    td = t[deaths]
    pos = np.searchsorted(grid, td)
    if np.any(pos >= grid.shape[0]) or np.any(grid[np.minimum(pos, grid.shape[0] - 1)] != td):
        raise ValueError(f"an event time of stratum {key} is missing from its grid")
    dstart = np.searchsorted(td, grid, side="left")
    xd = np.asfortranarray(x[deaths])
    d = np.bincount(pos, minlength=grid.shape[0])
    block["d"] = d
    block["dx"] = _segment_sums(xd, dstart) + d[:, None] * shift
    block["e0"], block["e1"], block["e2"] = _moments(w[deaths], xd, dstart, shift, suffix=False)
    return block, float(eta[deaths].sum() + deaths.size * (shift @ beta))


def _moments(
    w: FloatArray, x: FloatArray, starts: IntArray, shift: FloatArray, suffix: bool
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Segment (or suffix) sums of w, w (x + shift), w (x + shift)(x + shift)^T."""
    s0 = _segment_sums(w, starts)
    s1 = _segment_sums(w[:, None] * x, starts)
    s2 = _segment_gram(w, x, starts)
    if suffix:
        s0, s1, s2 = _suffix(s0), _suffix(s1), _suffix(s2)
    cross = s1[:, :, None] * shift[None, None, :]
    s2 = s2 + cross + cross.transpose(0, 2, 1) + s0[:, None, None] * np.outer(shift, shift)
    return s0, s1 + s0[:, None] * shift, s2


def derivatives_from_moments(total: RiskSetMoments, ties: Ties) -> CoxDerivatives:
    """Coordinator half, shared baseline: Efron/Breslow likelihood from summed moments.

    Parameters
    ----------
    total : RiskSetMoments
        Sum over sites, all computed at the same ``beta`` and ``center``.
    ties : {"efron", "breslow"}

    Returns
    -------
    CoxDerivatives
        Exactly the pooled-rows derivatives (Cox is invariant to the shift ``center``).
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return _from_moments(total, ties)


def _from_moments(total: RiskSetMoments, ties: Ties) -> CoxDerivatives:
    has = total.d > 0
    tt = _tie_terms(total.r0[has], total.r1[has], total.e0[has], total.e1[has], total.d[has], ties)
    gross_matrix = np.einsum("k,kij->ij", tt.a, total.r2[has]) - np.einsum(
        "k,kij->ij", tt.b, total.e2[has]
    )
    information = gross_matrix - tt.mean_outer
    loglik = float(total.eta_events - tt.log_denom)
    gradient = total.dx[has].sum(axis=0) - tt.mean_sum
    gross = np.diag(gross_matrix).copy()
    return CoxDerivatives(loglik, gradient, information, total.n, total.events, gross)


_MOMENT_ARRAYS = ("time", "r0", "r1", "r2", "d", "dx", "e0", "e1", "e2")


def sum_moments(parts: Sequence[RiskSetMoments]) -> RiskSetMoments:
    """Coordinator: the sum of the sites' :class:`RiskSetMoments` (at least one, same grid)."""
    if not parts:
        raise ValueError("sum_moments needs at least one site's moments")
    return reduce(operator.add, parts)


def moments_to_payload(moments: RiskSetMoments) -> dict[str, Any]:
    """Plain dict for transport: keys as lists of str, arrays as they are, scalars."""
    out: dict[str, Any] = {k: getattr(moments, k) for k in _MOMENT_ARRAYS}
    out.update(
        keys=[list(k) for k in moments.keys],
        offsets=moments.offsets,
        eta_events=float(moments.eta_events),
        n=int(moments.n),
        events=int(moments.events),
    )
    return out


def moments_from_payload(payload: Mapping[str, Any]) -> RiskSetMoments:
    """Inverse of :func:`moments_to_payload` (lists or arrays accepted)."""
    time = np.asarray(payload["time"], dtype=np.float64).reshape(-1)
    t = time.shape[0]
    r1 = np.asarray(payload["r1"], dtype=np.float64)
    p = r1.size // t if t else int(round(np.sqrt(np.asarray(payload["r2"]).size)))
    vec = {k: np.asarray(payload[k], dtype=np.float64).reshape(t, p) for k in ("r1", "dx", "e1")}
    mat = {k: np.asarray(payload[k], dtype=np.float64).reshape(t, p, p) for k in ("r2", "e2")}
    return RiskSetMoments(
        keys=tuple(tuple(str(v) for v in k) for k in payload["keys"]),
        offsets=np.asarray(payload["offsets"], dtype=np.int64).reshape(-1),
        time=time,
        r0=np.asarray(payload["r0"], dtype=np.float64).reshape(t),
        d=np.asarray(payload["d"], dtype=np.int64).reshape(t),
        e0=np.asarray(payload["e0"], dtype=np.float64).reshape(t),
        eta_events=float(payload["eta_events"]),
        n=int(payload["n"]),
        events=int(payload["events"]),
        **vec,
        **mat,
    )
