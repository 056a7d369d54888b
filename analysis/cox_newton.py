"""Cox start values and the coordinator's Newton iteration.

Round 1: every site runs :func:`local_fit` (a robust local Newton fit, used only as a start);
the coordinator combines them with :func:`inverse_variance_start`. Later rounds: the
coordinator's :class:`CoxNewton` broadcasts ``beta``, sums the sites' derivatives (or derives
them from summed moments) and calls ``update`` until ``done``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from analysis.cox_design import CoxDesign, CoxSpec, FloatArray, prepare
from analysis.cox_moments import CoxDerivatives, stratified_derivatives
from analysis.cox_result import CoxResult, pseudo_inverse, weakest_term
from analysis.data import SurvivalData


@dataclass(frozen=True)
class LocalFit:
    """A site's own Cox fit (a start value only).

    Attributes
    ----------
    terms : tuple of str
    beta : ndarray, shape (p,)
    information : ndarray, shape (p, p)
        Zero when the local fit failed (no events, separation, no convergence).
    n, events : int
    x_mean : ndarray, shape (p,)
        Column means of the site's design (for the shared shift ``center``).
    """

    terms: tuple[str, ...]
    beta: FloatArray
    information: FloatArray
    n: int
    events: int
    x_mean: FloatArray

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> LocalFit:
        """Rebuild from ``dataclasses.asdict`` output after transport; extra keys ignored."""
        terms = tuple(str(t) for t in payload["terms"])
        p = len(terms)
        return cls(
            terms=terms,
            beta=np.asarray(payload["beta"], dtype=np.float64).reshape(p),
            information=np.asarray(payload["information"], dtype=np.float64).reshape(p, p),
            n=int(payload["n"]),
            events=int(payload["events"]),
            x_mean=np.asarray(payload["x_mean"], dtype=np.float64).reshape(p),
        )


def _finite(d: CoxDerivatives) -> bool:
    return bool(
        np.isfinite(d.loglik)
        and np.all(np.isfinite(d.gradient))
        and np.all(np.isfinite(d.information))
    )


def _without_rounding(d: CoxDerivatives, rel: float = 1e-10) -> CoxDerivatives:
    """Zero the information of terms whose diagonal is only rounding error (vs ``gross``)."""
    if d.gross is None:
        return d
    diag = np.diag(d.information)
    zero = diag <= rel * np.abs(d.gross)
    if not zero.any():
        return d
    info = d.information.copy()
    info[zero, :] = 0.0
    info[:, zero] = 0.0
    return replace(d, information=info)


def local_fit(
    data: SurvivalData | CoxDesign, spec: CoxSpec, max_iter: int = 30, tolerance: float = 1e-9
) -> LocalFit:
    """Site half of round 1: a Newton fit on the site's rows that never raises.

    Newton steps use a pseudo-inverse of the information (terms with no local information keep
    0), with step-halving when the log-likelihood drops. When the fit fails (|beta| > 20, no
    convergence within ``max_iter``, non-finite values) it returns beta = 0 and zero
    information, so the site adds nothing to the start value.
    """
    design = prepare(data, spec)
    p = len(design.terms)
    beta = np.zeros(p)
    zero = LocalFit(
        design.terms, np.zeros(p), np.zeros((p, p)), design.n, design.events, design.x_mean
    )
    cur = stratified_derivatives(design, spec, beta)
    for _ in range(max_iter):
        if not _finite(cur):
            return zero
        cur = _without_rounding(cur)
        step = pseudo_inverse(cur.information) @ cur.gradient
        if p == 0 or np.max(np.abs(step)) < tolerance:
            return LocalFit(
                design.terms, beta + step, cur.information, design.n, design.events, design.x_mean
            )
        for _ in range(30):
            trial = stratified_derivatives(design, spec, beta + step)
            if _finite(trial) and trial.loglik >= cur.loglik - 1e-12 * (1 + abs(cur.loglik)):
                break
            step = step / 2
        else:
            return zero
        beta, cur = beta + step, trial
        if np.max(np.abs(beta)) > 20:
            return zero
    return zero


def inverse_variance_start(fits: Sequence[LocalFit], terms: Sequence[str]) -> FloatArray:
    """Coordinator: solve (sum I_k) beta0 = sum I_k beta_k, aligning the fits by term name.

    A pseudo-inverse is used when the summed information is singular; zeros when it is zero.
    """
    index = {t: i for i, t in enumerate(terms)}
    p = len(terms)
    info, rhs = np.zeros((p, p)), np.zeros(p)
    for fit in fits:
        where = np.array([index[t] for t in fit.terms], dtype=np.int64)
        info_k = np.asarray(fit.information, dtype=np.float64)
        if not np.all(np.isfinite(info_k)) or not np.all(np.isfinite(fit.beta)):
            continue
        info[np.ix_(where, where)] += info_k
        rhs[where] += info_k @ np.asarray(fit.beta, dtype=np.float64)
    return pseudo_inverse(info) @ rhs


def combined_center(fits: Sequence[LocalFit], terms: Sequence[str]) -> FloatArray:
    """Coordinator: the n-weighted mean of the sites' ``x_mean`` (the shared shift)."""
    index = {t: i for i, t in enumerate(terms)}
    total, n = np.zeros(len(terms)), 0
    for fit in fits:
        where = np.array([index[t] for t in fit.terms], dtype=np.int64)
        total[where] += fit.n * np.asarray(fit.x_mean, dtype=np.float64)
        n += fit.n
    return total / n if n else total


class CoxNewton:
    """Coordinator state machine of the federated Newton-Raphson iteration.

    Parameters
    ----------
    terms : sequence of str
    beta0 : ndarray, shape (p,)
        Start value (:func:`inverse_variance_start`).
    tolerance : float
        Converged when the Newton step has max |delta| < tolerance; the result is then
        ``beta + delta`` with standard errors from the information at ``beta``.
    extrapolate : bool
        Also converged when quadratic convergence predicts the next step below
        ``tolerance / 2``: with ``r = |delta| / |previous delta| < 0.1`` (Newton's quadratic
        regime, ``|next| ~ C |delta|^2`` with ``C = |delta| / |previous|^2``) the prediction is
        ``|delta| r^2``, the distance from ``beta + delta`` to the maximiser. Only when
        ``|delta| < 1e4 tolerance``, so that the standard errors (from the information at
        ``beta``) are accurate too. Saves one round; ``False`` waits for a step below
        ``tolerance``.
    max_rounds : int
        Last protocol round allowed (round numbers count round 1 of the protocol).
    first_round : int
        Protocol round of the first evaluation (2: round 1 collects the local fits).
    ties, strata :
        Copied to the result.
    max_abs_beta : float
        Stop (not converged) when a coefficient would exceed this; also stop when a coefficient
        beyond 10 keeps taking non-shrinking steps (monotone likelihood / separation).
    max_condition : float
        Stop when the correlation-scaled information has a larger condition number.
    max_halvings : int
        Step-halvings allowed in a row before giving up.

    Attributes
    ----------
    beta : ndarray
        The point the sites evaluate next.
    done, converged : bool
    message : str
    history : list of (round, loglik, step_norm)
    """

    def __init__(
        self,
        terms: Sequence[str],
        beta0: FloatArray,
        tolerance: float = 1e-9,
        max_rounds: int = 20,
        *,
        first_round: int = 2,
        ties: str = "efron",
        strata: Sequence[str] = (),
        max_abs_beta: float = 30.0,
        max_condition: float = 1e12,
        max_halvings: int = 20,
        extrapolate: bool = True,
    ) -> None:
        self.terms = tuple(terms)
        self.beta = np.array(beta0, dtype=np.float64)
        self.tolerance = float(tolerance)
        self.max_rounds = int(max_rounds)
        self.ties = ties
        self.strata = tuple(strata)
        self.max_abs_beta = float(max_abs_beta)
        self.max_condition = float(max_condition)
        self.max_halvings = int(max_halvings)
        self.extrapolate = bool(extrapolate)
        self.round = int(first_round) - 1
        self.done = False
        self.converged = False
        self.message = ""
        self.history: list[tuple[int, float, float]] = []
        self._best: tuple[FloatArray, CoxDerivatives, FloatArray] | None = None
        self._final = self.beta.copy()
        self._halvings = 0
        self._n = self._events = 0
        if self.round >= self.max_rounds:
            self._stop(f"max_rounds={self.max_rounds} leaves no round for the Newton iteration")

    def _stop(self, message: str, converged: bool = False) -> None:
        self.done, self.converged, self.message = True, converged, message

    def _term_at(self, values: FloatArray) -> str:
        j = int(np.argmax(np.abs(values)))
        return f"{self.terms[j]!r} (coef {self._final[j]:+.3g})"

    def _small(self, step_norm: float, prev_step: FloatArray | None) -> bool:
        """Converged: the step, or the geometric bound on what remains after it, is tiny."""
        if step_norm < self.tolerance:
            return True
        if not self.extrapolate or prev_step is None or prev_step.size == 0:
            return False
        ratio = step_norm / max(float(np.max(np.abs(prev_step))), 1e-300)
        return (
            ratio < 0.1
            and step_norm < 1e4 * self.tolerance
            and step_norm * ratio**2 < self.tolerance / 2
        )

    def update(self, derivs: CoxDerivatives) -> None:
        """Take the summed derivatives at ``beta`` and move ``beta`` to the next point."""
        if self.done:
            raise RuntimeError("CoxNewton.update called after the iteration finished")
        self.round += 1
        self._n, self._events = derivs.n, derivs.events
        best = self._best
        ll = float(derivs.loglik)
        worse = not _finite(derivs) or (
            best is not None and ll < best[1].loglik - 1e-12 * (1 + abs(best[1].loglik))
        )
        if worse and best is None:
            self.history.append((self.round, ll, float("nan")))
            self._stop("non-finite log-likelihood at the start value (overflow in exp(x beta))")
            return
        if worse and best is not None:
            self._halvings += 1
            half = (self.beta - best[0]) / 2
            self.history.append((self.round, ll, float(np.max(np.abs(half)))))
            if self._halvings > self.max_halvings:
                self._stop(f"log-likelihood did not improve after {self.max_halvings} halvings")
            elif self.round >= self.max_rounds:
                self._stop(f"not converged within max_rounds={self.max_rounds}")
            else:
                self.beta = best[0] + half
            return
        derivs = _without_rounding(derivs)
        step = pseudo_inverse(derivs.information) @ derivs.gradient
        step_norm = float(np.max(np.abs(step))) if step.size else 0.0
        self.history.append((self.round, ll, step_norm))
        prev_step = best[2] if best is not None and self._halvings == 0 else None
        self._halvings = 0
        self._best = (self.beta.copy(), derivs, step)
        self._final = self.beta.copy()
        weak, cond = weakest_term(derivs.information, self.terms)
        nxt = self.beta + step
        if self._small(step_norm, prev_step) and cond <= self.max_condition:
            self._final = nxt
            self._stop("", converged=True)
        elif cond > self.max_condition:
            self._stop(
                f"information matrix is singular or nearly so (scaled condition number "
                f"{cond:.3g}); term {weak!r} is not identifiable or separates the events"
            )
        elif np.max(np.abs(nxt)) > self.max_abs_beta:
            self._stop(
                f"coefficient of term {self._term_at(nxt)} diverges (|coef| would exceed "
                f"{self.max_abs_beta:g}); the covariate may separate the events"
            )
        elif (
            prev_step is not None
            and np.max(np.abs(nxt)) > 10
            and step_norm >= 0.5
            and step_norm >= 0.5 * float(np.max(np.abs(prev_step)))
        ):
            self._stop(
                f"coefficient of term {self._term_at(nxt)} keeps growing without converging "
                f"(monotone likelihood); the covariate may separate the events"
            )
        elif self.round >= self.max_rounds:
            self._stop(
                f"not converged within max_rounds={self.max_rounds} (last max|step| "
                f"{step_norm:.3g} on term {self._term_at(step)})"
            )
        else:
            self.beta = nxt

    def result(
        self, alpha: float = 0.05, n: int | None = None, events: int | None = None
    ) -> CoxResult:
        """The fit so far: converged estimate, or the last accepted point with ``message``."""
        if self._best is None:
            p = len(self.terms)
            info, ll = np.zeros((p, p)), float("nan")
        else:
            _, derivs, step = self._best
            info, ll = derivs.information, float(derivs.loglik)
            if self.converged:
                ll += 0.5 * float(derivs.gradient @ step)
        return CoxResult.from_estimate(
            self.terms,
            self._final,
            info,
            alpha=alpha,
            loglik=ll,
            n=self._n if n is None else int(n),
            events=self._events if events is None else int(events),
            rounds=max(self.round, 0),
            converged=self.converged,
            message=self.message,
            ties=self.ties,
            strata=self.strata,
            history=tuple(self.history),
        )
