"""Coordinator-side state of each Cox model of a plan while it iterates.

A model (:class:`analysis.kinds.cox_model.CoxModelDef`) starts from the sites' round-1
answers: the union of their levels (plan references first), the inverse-variance combination of
the fits the sites published (zero where none did), the n-weighted mean of their column means
(the shared shift), and for a baseline shared across sites the merged event-time grid. It then
takes federated Newton steps in lockstep with the other models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis import cox
from analysis.errors import UserError
from analysis.kinds.context import EstimateContext, FittedModel
from analysis.kinds.cox_model import CoxModelDef
from analysis.plan import RunSettings


@dataclass
class CoxRun:
    """One model iterated over the sites that take part in it (site ids, site order)."""

    definition: CoxModelDef
    sites: list[str] = field(default_factory=list)
    spec: cox.CoxSpec | None = None
    newton: cox.CoxNewton | None = None
    center: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grids: list[dict[str, Any]] = field(default_factory=list)
    local_fits: dict[str, cox.LocalFit] = field(default_factory=dict)
    message: str = ""
    active: bool = True

    @property
    def id(self) -> str:
        """The model id."""
        return self.definition.id

    @property
    def done(self) -> bool:
        """Converged or stopped."""
        return self.newton is not None and self.newton.done

    def start(self, answers: Mapping[str, Any], context: EstimateContext, run: RunSettings) -> None:
        """Fix levels, terms, start value and grid from the round-1 answers of ``self.sites``.

        ``answers`` maps site id to that site's round-1 answer to this model's local query.
        """
        parts = [answers[s] for s in self.sites]
        if not parts or sum(int(p["n"]) for p in parts) == 0:
            self.active = False
            self.message = "no site contributed data to this model"
            return
        try:
            levels = cox.global_levels([p["levels"] for p in parts], self.definition.reference_map)
        except UserError as exc:
            self.active, self.message = False, str(exc)
            return
        self.spec = cox.CoxSpec(
            covariates=self.definition.covariates,
            levels={k: tuple(v) for k, v in levels.items()},
            interactions=self.definition.interactions,
            strata=self.definition.strata,
            ties=cox.check_ties(self.definition.ties),
        )
        terms = cox.term_names(self.spec)
        self.local_fits = {
            site: cox.LocalFit.from_payload(p["fit"])
            for site, p in zip(self.sites, parts, strict=True)
            if "fit" in p
        }
        beta0 = cox.inverse_variance_start(list(self.local_fits.values()), terms)
        self.center = _center(parts, terms)
        self.newton = cox.CoxNewton(
            terms,
            beta0,
            tolerance=run.tolerance,
            max_rounds=run.max_rounds,
            ties=self.definition.ties,
            strata=self.definition.strata,
        )
        if self.definition.mode == "moments":
            tables = context.tables(self.definition.grid_table_id)
            self.grids = [
                {"key": list(key), "time": t.time[t.n_event > 0]} for key, t in tables.items()
            ]

    def point(self) -> dict[str, Any]:
        """What a site needs to evaluate this model in the next round."""
        assert self.newton is not None and self.spec is not None
        point: dict[str, Any] = {
            "levels": {k: list(v) for k, v in self.spec.levels.items()},
            "beta": np.asarray(self.newton.beta, dtype=np.float64),
        }
        if self.definition.mode == "moments":
            point.update(center=self.center, grids=self.grids)
        return point

    def update(self, parts: Sequence[Any]) -> None:
        """Sum this round's site derivatives (or moments) and take the Newton step."""
        assert self.newton is not None
        if self.definition.mode == "stratified":
            total = cox.sum_derivatives([cox.CoxDerivatives.from_payload(p) for p in parts])
        else:
            moments = cox.sum_moments([cox.moments_from_payload(p) for p in parts])
            total = cox.derivatives_from_moments(moments, cox.check_ties(self.definition.ties))
        self.newton.update(total)

    def stop(self, message: str) -> None:
        """Stop iterating (a site refused the model mid-iteration)."""
        self.active = False
        self.message = message

    def fitted(self, alpha: float) -> FittedModel:
        """The model as the estimators see it."""
        result = None
        if self.newton is not None and not self.message:
            result = self.newton.result(alpha=alpha)
        levels = self.spec.levels if self.spec is not None else {}
        return FittedModel(self.definition, result, levels, self.local_fits, self.message)


def _center(parts: Sequence[Mapping[str, Any]], terms: Sequence[str]) -> np.ndarray:
    """The n-weighted mean of the sites' column means, aligned by term name."""
    index = {t: i for i, t in enumerate(terms)}
    total, n = np.zeros(len(terms)), 0
    for part in parts:
        where = np.array([index[t] for t in part["terms"]], dtype=np.int64)
        total[where] += int(part["n"]) * np.asarray(part["x_mean"], dtype=np.float64)
        n += int(part["n"])
    return total / n if n else total
