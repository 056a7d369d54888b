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
    PARAM,
    TIES_KEY,
    AnalysisSpec,
    Column,
    Effect,
    Figure,
    Kind,
    Metric,
    Presentation,
    Table,
    names_key,
    pairs_key,
    reference_key,
    register,
)
from analysis.kinds.context import EstimateContext, FittedModel
from analysis.kinds.cox_model import CoxModelDef
from analysis.kinds.format import Locale, is_arm, parse_term
from analysis.kinds.wording import (
    conf_level,
    covariate_label,
    is_treatment_term,
    join,
    model_variables,
    resolve,
)


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
        "param": PARAM,
        "covariates": names_key("ADSL covariates", required=True, allow_empty=False),
        "reference": reference_key("reference level per categorical covariate"),
        "strata": names_key("SITE (site-stratified baseline), COUNTRY or ADSL variables"),
        "ties": TIES_KEY,
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

    def present(self, name: str, result: Mapping[str, Any], locale: Any = None) -> Presentation:
        loc = resolve(locale)
        heading = loc.t("cox.heading", param=loc.param(str(result.get("param") or "")))
        return present_cox(name, result, heading, loc)


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


def model_line(loc: Locale, cox: Mapping[str, Any], short: bool = False) -> str:
    """Adjustment, strata, ties, convergence and size of a fitted model, in one line
    (``short``: adjustment and strata only)."""
    terms = list(cox.get("terms") or {})
    covariates = [v for v in model_variables(terms) if not is_arm(v)]
    strata = [loc.var(v) for v in cox.get("strata") or []]
    rounds = cox.get("rounds")
    parts = [
        loc.t("cox.adjusted", vars=join(loc, [loc.var(v) for v in covariates]))
        if covariates
        else "",
        loc.t("cox.strata", vars=join(loc, strata)) if strata else loc.t("cox.pooled"),
        loc.t("cox.ties", ties=str(cox.get("ties") or "").capitalize()),
        loc.t("cox.converged" if cox.get("converged") else "cox.not_converged", rounds=rounds),
        loc.t("cox.size", n=loc.fmt(cox.get("n"), "int"), events=loc.fmt(cox.get("events"), "int")),
    ]
    return loc.t("clause_sep").join(p for p in (parts[:2] if short else parts) if p)


def _term_rows(
    loc: Locale, terms: Mapping[str, Any], names: list[str], label: Any
) -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "term": label(loc, term),
            "hr": [terms[term].get("hr"), terms[term].get("hr_lower"), terms[term].get("hr_upper")],
            "p": terms[term].get("p"),
            "coef": terms[term].get("coef"),
            "se": terms[term].get("se"),
        }
        for term in names
    )


def terms_tables(name: str, loc: Locale, cox: Mapping[str, Any]) -> tuple[Table, ...]:
    """The treatment-effect terms and the covariate terms, each in its own table."""
    conf = conf_level(cox.get("alpha", 0.05))
    terms: Mapping[str, Any] = cox.get("terms") or {}
    treatment = [t for t in terms if is_treatment_term(t)]
    covariates = [t for t in terms if t not in treatment]

    def columns(first: str) -> tuple[Column, ...]:
        return (
            Column("term", first),
            Column("hr", loc.t("cox.hr_ci", conf=conf), "est_hr"),
            Column("p", loc.t("p"), "p"),
            Column("coef", loc.t("cox.coef"), "num"),
            Column("se", loc.t("cox.se"), "num"),
        )

    out = []
    if treatment:
        out.append(
            Table(
                name,
                loc.t("cox.treatment"),
                columns(loc.t("cox.comparison")),
                _term_rows(loc, terms, treatment, lambda lc, t: lc.term(t)),
            )
        )
    if covariates:
        out.append(
            Table(
                f"{name}_covariates" if treatment else name,
                loc.t("cox.covariates"),
                columns(loc.t("cox.covariate")),
                _term_rows(loc, terms, covariates, covariate_label),
            )
        )
    return tuple(out)


def treatment_effects(loc: Locale, cox: Mapping[str, Any], weight: int = 2) -> tuple[Effect, ...]:
    """A hazard-ratio effect per treatment term of a fitted model."""
    conf = conf_level(cox.get("alpha", 0.05))
    return tuple(
        Effect(
            loc.t("cox.effect", comparison=loc.term(term)),
            "hr",
            t.get("hr"),
            t.get("hr_lower"),
            t.get("hr_upper"),
            t.get("p"),
            "hr",
            conf,
            weight,
            loc.term(term),
            loc.t("method.cox", model=model_line(loc, cox, short=True)),
        )
        for term, t in (cox.get("terms") or {}).items()
        if is_treatment_term(term)
    )


def forest_hr(
    loc: Locale, heading: str, cox: Mapping[str, Any], rows: list[dict[str, Any]]
) -> Figure:
    """The shared hazard-ratio forest figure (``forest_hr``): a header row, then ``rows``."""
    conf = conf_level(cox.get("alpha", 0.05))
    terms = [t for t in (cox.get("terms") or {}) if is_treatment_term(t)]
    favours: list[str] = []
    if len(terms) == 1:
        var, level = parse_term(terms[0])
        ref = loc.references.get(var)
        if ref is not None and level is not None:
            favours = [
                loc.t("forest.favours", arm=loc.level(var, level)),
                loc.t("forest.favours", arm=loc.level(var, ref)),
            ]
    return Figure(
        "forest_hr",
        "forest",
        loc.t("forest.title_hr", conf=conf),
        {
            "scale": "hr",
            "axis": loc.t("forest.axis_hr"),
            "favours": favours,
            "columns": [loc.t("forest.n_events"), loc.t("forest.hr_col", conf=conf), loc.t("p")],
            "rows": [{"label": heading, "header": True}, *rows],
        },
    )


def present_cox(
    name: str,
    cox: Mapping[str, Any],
    heading: str,
    loc: Locale,
    table_id: str | None = None,
    forest: bool = True,
) -> Presentation:
    """Tables, effects, forest rows, convergence figure and metrics of one Cox model."""
    lines = [model_line(loc, cox)]
    if cox.get("message"):
        lines.append(loc.t("note", text=cox["message"]))
    figures = []
    if forest:
        rows = [
            {
                "label": effect.label,
                "hr": effect.value,
                "lower": effect.lower,
                "upper": effect.upper,
                "n": cox.get("n"),
                "events": cox.get("events"),
                "p": effect.p,
            }
            for effect in treatment_effects(loc, cox)
        ]
        if rows:
            figures.append(forest_hr(loc, f"{heading}: {model_line(loc, cox, True)}", cox, rows))
    if cox.get("history"):
        figures.append(
            Figure(f"{name}_convergence", "convergence", name, dict(cox), diagnostic=True)
        )
    return Presentation(
        heading=heading,
        lines=tuple(lines),
        tables=terms_tables(table_id or name, loc, cox),
        figures=tuple(figures),
        metrics=tuple(cox_metrics(cox)),
        params={
            "kind": "cox",
            "param": cox.get("param"),
            "strata": cox.get("strata"),
            "ties": cox.get("ties"),
            "alpha": cox.get("alpha"),
        },
        effects=treatment_effects(loc, cox),
    )
