"""A Cox model iterated on secure sums (the coordinator's state; :mod:`federation.models` holds
the plain run's)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis import cox
from analysis.errors import UserError
from analysis.plan import Plan
from analysis.secure_layout import ModelShape, SecureState, model_shape
from analysis.secure_payloads import pooled_center, pooled_derivatives
from federation.models import CoxRun
from federation.secure import MIN_SITES


@dataclass
class SecureCox(CoxRun):
    """A Cox model iterated on secure sums: started from its levels and the published fits."""

    shape: ModelShape | None = None

    def start_secure(self, answers: Mapping[str, Any], state: SecureState, plan: Plan) -> None:
        """Levels from the sites' round-1 level names, start from the fits they publish."""
        parts = [answers[s] for s in self.sites]
        if len(self.sites) < MIN_SITES:
            self.active = False
            self.message = (
                f"withheld under secure aggregation: {len(self.sites)} site(s) take part, a sum "
                f"needs {MIN_SITES}"
            )
            return
        try:
            levels = cox.global_levels([p["levels"] for p in parts], self.definition.reference_map)
        except UserError as exc:
            self.active, self.message = False, str(exc)
            return
        self.shape = model_shape(self.definition, levels, state)
        self.spec = self.shape.spec
        terms = self.shape.terms
        self.local_fits = {
            site: cox.LocalFit.from_payload(p["fit"])
            for site, p in zip(self.sites, parts, strict=True)
            if "fit" in p
        }
        self.center = np.zeros(len(terms))
        self.newton = cox.CoxNewton(
            terms,
            cox.inverse_variance_start(list(self.local_fits.values()), terms),
            tolerance=plan.run.tolerance,
            max_rounds=plan.run.max_rounds,
            ties=self.definition.ties,
            strata=self.definition.strata,
        )

    def point(self) -> dict[str, Any]:
        """Levels, coefficients and (shared baseline) the shift: the grid is the plan's."""
        point = super().point()
        point.pop("grids", None)  # the common secure grid, not the sites' released times
        return point

    def update_totals(self, totals: Mapping[str, Any]) -> None:
        """Take the Newton step from this round's pooled derivatives (or moments)."""
        assert self.newton is not None and self.shape is not None
        derivs = pooled_derivatives(self.shape, totals)
        if derivs.n == 0:
            self.stop("no site contributed data to this model")
            return
        if self.definition.mode == "moments":
            self.center = pooled_center(self.shape, totals)
        self.newton.update(derivs)
