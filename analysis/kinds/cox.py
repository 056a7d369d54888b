"""``kind = "cox"``: a Cox proportional-hazards model fitted by federated Newton-Raphson.

Site aggregates: round 1 the model's levels and (where the site publishes it) its own fit; then
per round the score and information at the broadcast coefficients (site-stratified baseline) or
risk-set moments on the event-time grid (baseline shared across sites); see
:mod:`analysis.cox`. Estimator: :class:`analysis.cox_newton.CoxNewton` on the summed aggregates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from analysis.kinds.base import (
    ALPHA,
    AnalysisSpec,
    Column,
    Figure,
    Kind,
    Metric,
    Presentation,
    Table,
    choice_key,
    names_key,
    pairs_key,
    reference_key,
    register,
    text_key,
)
from analysis.kinds.context import EstimateContext, FittedModel
from analysis.kinds.cox_model import CoxModelDef

TIES = ("efron", "breslow")


@dataclass(frozen=True)
class CoxAnalysis(AnalysisSpec):
    """A Cox model of ``param`` on ``covariates``."""

    param: str = ""
    covariates: tuple[str, ...] = ()
    reference: tuple[tuple[str, str], ...] = ()
    strata: tuple[str, ...] = ()
    ties: str = "efron"
    interactions: tuple[tuple[str, str], ...] = ()
    alpha: float = 0.05

    kind: ClassVar[str] = "cox"

    @property
    def reference_map(self) -> dict[str, str]:
        """The reference levels as a dict."""
        return dict(self.reference)


@register
class CoxKind(Kind):
    """The Cox model."""

    name = "cox"
    title = "Cox proportional hazards"
    spec = CoxAnalysis
    keys = {
        "param": text_key("ADTTE endpoint (PARAMCD)", required=True),
        "covariates": names_key("ADSL covariates", required=True, allow_empty=False),
        "reference": reference_key("reference level per categorical covariate"),
        "strata": names_key("SITE (site-stratified baseline), COUNTRY or ADSL variables"),
        "ties": choice_key(TIES, "tie handling (default efron)"),
        "interactions": pairs_key('interaction terms "A:B"'),
        "alpha": ALPHA,
    }

    def grouping(self, spec: CoxAnalysis) -> tuple[str, ...]:
        return spec.strata

    def covariates(self, spec: CoxAnalysis) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*spec.covariates, *(v for p in spec.interactions for v in p)]))

    def cox_models(self, spec: CoxAnalysis) -> list[CoxModelDef]:
        return [
            CoxModelDef(
                spec.name,
                spec.name,
                self.name,
                "main",
                spec.param,
                spec.covariates,
                spec.reference,
                spec.strata,
                spec.ties,
                spec.interactions,
            )
        ]

    def estimate(self, spec: CoxAnalysis, context: EstimateContext) -> dict[str, Any]:
        return {"kind": self.name, "param": spec.param, **cox_section(context.models[spec.name])}

    def present(self, name: str, result: Mapping[str, Any]) -> Presentation:
        return present_cox(name, result, f"Cox model of {result.get('param')}", name)


def cox_section(model: FittedModel) -> dict[str, Any]:
    """The results.json fields of one fitted model."""
    definition = model.definition
    if model.result is None:
        return {
            "converged": False,
            "message": model.message or "no site contributed data to this model",
            "terms": {},
            "rounds": 0,
            "strata": list(definition.strata),
            "ties": definition.ties,
        }
    out = {**model.result.to_dict(), "strata": list(definition.strata), "ties": definition.ties}
    if model.message:
        out["message"] = model.message
    return out


def terms_table(name: str, title: str, cox: Mapping[str, Any]) -> Table:
    """Hazard ratios with confidence intervals and p-values, one row per model term."""
    conf = int(round(100 * (1 - float(cox.get("alpha", 0.05)))))
    return Table(
        name,
        title,
        (
            Column("term", "Term"),
            Column("coef", "Coefficient", "num"),
            Column("se", "SE", "num"),
            Column("hr", "HR", "hr"),
            Column("ci", f"{conf}% CI", "hr_ci"),
            Column("p", "p", "p"),
        ),
        tuple(
            {
                "term": term,
                "coef": t.get("coef"),
                "se": t.get("se"),
                "hr": t.get("hr"),
                "ci": [t.get("hr_lower"), t.get("hr_upper")],
                "p": t.get("p"),
            }
            for term, t in (cox.get("terms") or {}).items()
        ),
    )


def cox_metrics(cox: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[Metric]:
    """Per-term metrics, the final log-likelihood, rounds and the per-round history."""
    out = [
        Metric((*prefix, term, field), t.get(field))
        for term, t in (cox.get("terms") or {}).items()
        for field in ("hr", "hr_lower", "hr_upper", "p", "coef", "se")
    ]
    out.append(Metric((*prefix, "loglik_final"), cox.get("loglik")))
    out.append(Metric((*prefix, "rounds"), cox.get("rounds")))
    for h in cox.get("history") or []:
        for key in ("loglik", "step_norm"):
            out.append(Metric((*prefix, key), h.get(key), step=int(h["round"])))
    return out


def present_cox(name: str, cox: Mapping[str, Any], heading: str, table_id: str) -> Presentation:
    """Tables, forest rows, convergence figure and metrics of one Cox model."""
    strata = ", ".join(cox.get("strata") or []) or "none (pooled baseline)"
    state = "converged" if cox.get("converged") else "DID NOT CONVERGE"
    lines = [
        f"ties {cox.get('ties')}, strata {strata}: {state} in {cox.get('rounds')} rounds; "
        f"n = {cox.get('n')}, events = {cox.get('events')}"
    ]
    if cox.get("message"):
        lines.append(f"note: {cox['message']}")
    figures = [
        Figure(
            "forest",
            "forest",
            "Hazard ratios with 95% confidence intervals",
            {
                "rows": [{"label": f"{name}: {heading}", "header": True}]
                + [
                    {"label": term, **t, "extra": t.get("p"), "extra_format": "p"}
                    for term, t in (cox.get("terms") or {}).items()
                ]
            },
        )
    ]
    if cox.get("history"):
        figures.append(
            Figure(f"convergence_{name}", "convergence", name, dict(cox), diagnostic=True)
        )
    return Presentation(
        heading=heading,
        lines=tuple(lines),
        tables=(terms_table(table_id, heading, cox),),
        figures=tuple(figures),
        metrics=tuple(cox_metrics(cox)),
        params={
            "kind": "cox",
            "param": cox.get("param"),
            "strata": cox.get("strata"),
            "ties": cox.get("ties"),
            "alpha": cox.get("alpha"),
        },
    )
