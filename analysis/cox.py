"""Federated Cox proportional hazards: the public API and an in-process protocol simulation.

The federated answer equals the pooled-rows answer (the same partial likelihood, summed over
sites). The halves live in:

- :mod:`analysis.cox_design`: :class:`CoxSpec`, :func:`build_design`, level discovery
  (:func:`local_levels` at sites, :func:`global_levels` at the coordinator), :func:`prepare`.
- :mod:`analysis.cox_moments`: site-stratified baseline, :func:`stratified_derivatives` (site)
  and :func:`sum_derivatives` (coordinator).
- :mod:`analysis.cox_shared`: baseline shared across sites, :func:`local_event_times` and
  :func:`risk_set_moments` (site), :func:`merge_event_times`, :func:`sum_moments` and
  :func:`derivatives_from_moments` (coordinator), payload helpers.
- :mod:`analysis.cox_newton`: :func:`local_fit` (site, round 1), :func:`inverse_variance_start`,
  :func:`combined_center` and :class:`CoxNewton` (coordinator).
- :mod:`analysis.cox_result`: :class:`CoxResult`.

Protocol (see :func:`fit_federated`): round 1 collects ``local_levels``; the coordinator
broadcasts the :class:`CoxSpec`; sites return ``local_fit`` (and ``local_event_times`` for a
shared baseline). In the simulation below level discovery and local fits share round 1, as the
real protocol's single round-1 message does when the plan fixes the levels. Every later round is
one evaluation at ``CoxNewton.beta``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.cox_design import (
    TIES,
    CoxDesign,
    CoxSpec,
    StratumKey,
    Ties,
    build_design,
    check_ties,
    format_value,
    global_levels,
    local_levels,
    prepare,
    term_names,
)
from analysis.cox_moments import CoxDerivatives, stratified_derivatives, sum_derivatives
from analysis.cox_newton import (
    CoxNewton,
    LocalFit,
    combined_center,
    inverse_variance_start,
    local_fit,
)
from analysis.cox_result import CoxResult
from analysis.cox_shared import (
    RiskSetMoments,
    derivatives_from_moments,
    local_event_times,
    merge_event_times,
    moments_from_payload,
    moments_to_payload,
    risk_set_moments,
    sum_moments,
)
from analysis.data import SurvivalData
from analysis.errors import UserError

__all__ = [
    "CoxDerivatives",
    "CoxDesign",
    "CoxNewton",
    "CoxPH",
    "CoxResult",
    "CoxSpec",
    "LocalFit",
    "RiskSetMoments",
    "StratumKey",
    "build_design",
    "check_ties",
    "derivatives_from_moments",
    "fit_federated",
    "format_value",
    "global_levels",
    "inverse_variance_start",
    "local_event_times",
    "local_fit",
    "local_levels",
    "merge_event_times",
    "combined_center",
    "moments_from_payload",
    "moments_to_payload",
    "prepare",
    "risk_set_moments",
    "stratified_derivatives",
    "sum_derivatives",
    "sum_moments",
    "term_names",
]


def _check_names(param: str, names: Iterable[str], parts: Sequence[SurvivalData]) -> None:
    available = set.intersection(*(set(p.covariates) for p in parts))
    for name in names:
        if name not in available:
            allowed = "{" + ", ".join(repr(v) for v in sorted(available)) + "}"
            raise UserError(f"{param} must be among {allowed}; got {name!r}")


def fit_federated(
    parts: Sequence[SurvivalData],
    covariates: Sequence[str],
    reference: Mapping[str, str] | None = None,
    strata: Sequence[str] = (),
    ties: Ties = "efron",
    *,
    interactions: Sequence[tuple[str, str]] = (),
    categorical: Iterable[str] = (),
    alpha: float = 0.05,
    tolerance: float = 1e-9,
    max_rounds: int = 20,
    extrapolate: bool = True,
) -> CoxResult:
    """Simulate the federated Cox protocol in process, one ``SurvivalData`` per site.

    Parameters
    ----------
    parts : sequence of SurvivalData
        One per site.
    covariates : sequence of str
    reference : mapping of str to str, optional
        Reference level per categorical variable (default: the smallest level).
    strata : sequence of str
        With ``"SITE"``: site-stratified baseline (sites send :class:`CoxDerivatives`);
        otherwise a baseline shared across sites (sites send :class:`RiskSetMoments`).
    ties : {"efron", "breslow"}
    interactions : sequence of (str, str)
    categorical : iterable of str
        Numeric variables to treat as categorical.
    alpha, tolerance, max_rounds, extrapolate :
        Interval level, Newton tolerance (max |step|), last protocol round allowed, and
        whether :class:`CoxNewton` may stop one round early on a predicted step.

    Returns
    -------
    CoxResult
        ``rounds`` counts round 1 (local fits) and every evaluation round.
    """
    if not parts:
        raise UserError("fit_federated needs at least one site; got 0 parts")
    if ties not in TIES:
        raise UserError(f"ties must be one of {{'efron', 'breslow'}}; got {ties!r}")
    variables = list(dict.fromkeys(list(covariates) + [v for ab in interactions for v in ab]))
    _check_names("covariates", variables, parts)
    _check_names("strata", strata, parts)
    forced = list(categorical)
    levels = global_levels([local_levels(p, variables, forced) for p in parts], reference)
    spec = CoxSpec(tuple(covariates), levels, tuple(interactions), tuple(strata), ties)
    designs = [prepare(p, spec) for p in parts]
    fits = [local_fit(d, spec) for d in designs]
    terms = designs[0].terms
    newton = CoxNewton(
        terms,
        inverse_variance_start(fits, terms),
        tolerance,
        max_rounds,
        ties=ties,
        strata=strata,
        extrapolate=extrapolate,
    )
    site_stratified = "SITE" in spec.strata
    if not site_stratified:
        grids = merge_event_times([local_event_times(d, spec) for d in designs])
        center = combined_center(fits, terms)
    while not newton.done:
        if site_stratified:
            derivs = [stratified_derivatives(d, spec, newton.beta) for d in designs]
            total = sum(derivs[1:], derivs[0])
        else:
            moments = [risk_set_moments(d, spec, newton.beta, center, grids) for d in designs]
            total = derivatives_from_moments(sum(moments[1:], moments[0]), ties)
        newton.update(total)
    return newton.result(alpha, n=sum(d.n for d in designs), events=sum(d.events for d in designs))


class CoxPH:
    """Local Cox proportional hazards estimator (lifelines-style), the federated math on one part.

    Parameters
    ----------
    ties : {"efron", "breslow"}
    strata : sequence of str
    alpha : float
    tolerance : float
    max_rounds : int

    Attributes
    ----------
    result_ : CoxResult
    params_, standard_errors_, hazard_ratios_ : pandas.Series
        Indexed by term.
    log_likelihood_ : float
    converged_ : bool
    """

    def __init__(
        self,
        ties: Ties = "efron",
        strata: Sequence[str] = (),
        alpha: float = 0.05,
        tolerance: float = 1e-9,
        max_rounds: int = 50,
    ) -> None:
        self.ties = ties
        self.strata = tuple(strata)
        self.alpha = alpha
        self.tolerance = tolerance
        self.max_rounds = max_rounds

    def fit(
        self,
        data: SurvivalData,
        covariates: Sequence[str],
        reference: Mapping[str, str] | None = None,
        *,
        interactions: Sequence[tuple[str, str]] = (),
        categorical: Iterable[str] = (),
    ) -> CoxPH:
        """Fit on ``data``; returns self."""
        self.result_ = fit_federated(
            [data],
            covariates,
            reference,
            self.strata,
            self.ties,
            interactions=interactions,
            categorical=categorical,
            alpha=self.alpha,
            tolerance=self.tolerance,
            max_rounds=self.max_rounds,
        )
        res = self.result_
        self.params_ = pd.Series(np.asarray(res.coef), index=list(res.terms), name="coef")
        self.standard_errors_ = pd.Series(np.asarray(res.se), index=list(res.terms), name="se")
        self.hazard_ratios_ = pd.Series(np.asarray(res.hr), index=list(res.terms), name="hr")
        self.log_likelihood_ = res.loglik
        self.converged_ = res.converged
        return self

    @property
    def summary(self) -> pd.DataFrame:
        """The fitted result's summary table (index = term)."""
        return self.result_.summary
