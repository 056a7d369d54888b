"""The immutable result of a Cox fit, and the linear algebra shared by the Cox modules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.cox_design import FloatArray
from analysis.distributions import chi2_sf, normal_quantile, normal_sf
from analysis.errors import UserError


def _scaled_eigh(information: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Eigen-decomposition of the correlation-scaled information over its positive diagonal.

    Returns (scale, eigenvalues, eigenvectors); ``scale`` is 0 for a term with no information.
    """
    diag = np.diag(information).copy()
    ok = np.isfinite(diag) & (diag > 0)
    scale = np.where(ok, np.sqrt(np.where(ok, diag, 1.0)), 0.0)
    sub = information[np.ix_(ok, ok)] / np.outer(scale[ok], scale[ok])
    vals, vecs = np.linalg.eigh(sub) if sub.size else (np.zeros(0), np.zeros((0, 0)))
    return scale, vals, vecs


def pseudo_inverse(information: FloatArray, rcond: float = 1e-12) -> FloatArray:
    """Inverse of a positive semi-definite matrix, pseudo-inverse where (near) singular.

    Terms with zero information get zero rows and columns.
    """
    p = information.shape[0]
    out = np.zeros((p, p))
    if p == 0 or not np.all(np.isfinite(information)):
        return out
    scale, vals, vecs = _scaled_eigh(information)
    ok = scale > 0
    if vals.size == 0 or vals.max() <= 0:
        return out
    keep = vals > rcond * vals.max()
    inv = (vecs[:, keep] / vals[keep]) @ vecs[:, keep].T
    out[np.ix_(ok, ok)] = inv / np.outer(scale[ok], scale[ok])
    return out


def weakest_term(information: FloatArray, terms: Sequence[str]) -> tuple[str, float]:
    """The term least determined by ``information`` and the scaled condition number.

    A term with zero information is named first; otherwise the term with the largest weight in
    the eigenvector of the smallest eigenvalue of the correlation-scaled information.
    """
    scale, vals, vecs = _scaled_eigh(information)
    zero = np.flatnonzero(scale == 0)
    if zero.size:
        return terms[int(zero[0])], math.inf
    if vals.size == 0:
        return "", 1.0
    cond = math.inf if vals[0] <= 0 else float(vals[-1] / vals[0])
    return terms[int(np.argmax(np.abs(vecs[:, 0])))], cond


def _json_number(value: Any) -> float | int | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class CoxResult:
    """A fitted Cox model (Wald inference from the observed information).

    Attributes
    ----------
    terms : tuple of str
    coef, se, hr, hr_lower, hr_upper, z, p : ndarray, shape (p,)
        Coefficient, standard error, hazard ratio exp(coef) with its (1 - alpha) Wald interval,
        Wald z and two-sided normal p-value.
    covariance : ndarray, shape (p, p)
        Inverse of the information at the last evaluated point.
    loglik : float
        Log partial likelihood at ``coef``: when converged, the value at the last evaluated
        point plus the Newton increase ``g . delta / 2`` (exact to third order); otherwise the
        value at the last accepted point.
    n, events, rounds : int
        Rows, events, and protocol rounds used (including round 1 of a federated fit).
    converged : bool
    message : str
        Empty when converged; otherwise why the iteration stopped, naming the offending term.
    ties : str
    strata : tuple of str
    alpha : float
    history : tuple of (round, loglik, step_norm)
    """

    terms: tuple[str, ...]
    coef: FloatArray
    se: FloatArray
    hr: FloatArray
    hr_lower: FloatArray
    hr_upper: FloatArray
    z: FloatArray
    p: FloatArray
    covariance: FloatArray
    loglik: float
    n: int
    events: int
    rounds: int
    converged: bool
    message: str
    ties: str
    strata: tuple[str, ...]
    alpha: float
    history: tuple[tuple[int, float, float], ...]

    @classmethod
    def from_estimate(
        cls,
        terms: Sequence[str],
        coef: FloatArray,
        information: FloatArray,
        *,
        alpha: float = 0.05,
        **fields: Any,
    ) -> CoxResult:
        """Build the Wald summaries from a coefficient vector and its information matrix."""
        if not 0 < alpha < 1:
            raise UserError(f"alpha must be in (0, 1); got {alpha!r}")
        coef = np.array(coef, dtype=np.float64)
        cov = pseudo_inverse(np.asarray(information, dtype=np.float64))
        var = np.diag(cov).copy()
        var[var <= 0] = np.nan
        se = np.sqrt(var)
        q = normal_quantile(1 - alpha / 2)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            z = coef / se
            arrays = {
                "coef": coef,
                "se": se,
                "hr": np.exp(coef),
                "hr_lower": np.exp(coef - q * se),
                "hr_upper": np.exp(coef + q * se),
                "z": z,
                "p": 2 * normal_sf(np.abs(z)),
                "covariance": cov,
            }
        for arr in arrays.values():
            arr.setflags(write=False)
        return cls(terms=tuple(terms), alpha=float(alpha), **arrays, **fields)

    @property
    def summary(self) -> pd.DataFrame:
        """One row per term: coef, se, hr, hr_lower, hr_upper, z, p."""
        cols = ("coef", "se", "hr", "hr_lower", "hr_upper", "z", "p")
        frame = pd.DataFrame({c: getattr(self, c) for c in cols}, index=list(self.terms))
        frame.index.name = "term"
        return frame

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict per docs/design.md (NaN and inf become None)."""
        cols = ("coef", "se", "hr", "hr_lower", "hr_upper", "z", "p")
        return {
            "terms": {
                t: {c: _json_number(getattr(self, c)[i]) for c in cols}
                for i, t in enumerate(self.terms)
            },
            "loglik": _json_number(self.loglik),
            "n": int(self.n),
            "events": int(self.events),
            "rounds": int(self.rounds),
            "converged": bool(self.converged),
            "message": self.message,
            "ties": self.ties,
            "strata": list(self.strata),
            "alpha": float(self.alpha),
            "history": [
                {"round": int(r), "loglik": _json_number(ll), "step_norm": _json_number(s)}
                for r, ll, s in self.history
            ],
        }

    def wald_test(self, term_names: Sequence[str]) -> tuple[float, int, float]:
        """Joint Wald test that the coefficients of ``term_names`` are all zero.

        Returns
        -------
        chi2 : float
        df : int
        p : float
            Upper tail of chi-squared with ``df`` degrees of freedom.
        """
        index = []
        for name in term_names:
            if name not in self.terms:
                allowed = "{" + ", ".join(repr(t) for t in self.terms) + "}"
                raise UserError(f"term_names must be among {allowed}; got {name!r}")
            index.append(self.terms.index(name))
        if not index:
            raise UserError("term_names must name at least one term; got none")
        b = self.coef[index]
        cov = self.covariance[np.ix_(index, index)]
        chi2 = float(b @ pseudo_inverse(cov) @ b)
        df = len(index)
        return chi2, df, chi2_sf(chi2, df)
