"""``kind = "km"``: Kaplan–Meier curves of an endpoint by a grouping variable.

Site aggregate: :func:`analysis.km.grouped_event_tables` (event and censoring counts per group
and time). Estimator: the tables merged over sites, then :func:`analysis.km.kaplan_meier`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from analysis import km
from analysis.kinds.base import (
    ALPHA,
    AnalysisSpec,
    Column,
    Figure,
    Kind,
    Metric,
    Presentation,
    Query,
    Table,
    choice_key,
    register,
    text_key,
    times_key,
)
from analysis.kinds.context import EstimateContext

DISPLAYS = ("survival", "incidence")
_CURVE = ("time", "survival", "ci_lower", "ci_upper", "at_risk", "events", "censored")


@dataclass(frozen=True)
class KMAnalysis(AnalysisSpec):
    """Kaplan–Meier estimate of ``param`` by ``by`` (one curve when ``by`` is empty)."""

    param: str = ""
    by: str = ""
    times: tuple[float, ...] = ()
    alpha: float = 0.05
    display: str = "survival"

    kind: ClassVar[str] = "km"


@register
class KMKind(Kind):
    """Kaplan–Meier curves."""

    name = "km"
    title = "Kaplan-Meier"
    spec = KMAnalysis
    keys = {
        "param": text_key("ADTTE endpoint (PARAMCD)", required=True),
        "by": text_key("ADSL grouping variable (default: one curve)"),
        "times": times_key("time points for the survival and at-risk table"),
        "alpha": ALPHA,
        "display": choice_key(DISPLAYS, "plot survival S(t) or cumulative incidence 1 - S(t)"),
    }

    def grouping(self, spec: KMAnalysis) -> tuple[str, ...]:
        return (spec.by,) if spec.by else ()

    def queries(self, spec: KMAnalysis) -> list[Query]:
        return [Query(spec.name, spec.name, "event_table", spec.param, self.grouping(spec))]

    def estimate(self, spec: KMAnalysis, context: EstimateContext) -> dict[str, Any]:
        groups = {}
        for key, table in context.tables(spec.name).items():
            if table.n == 0:
                continue
            fit = km.kaplan_meier(table, alpha=spec.alpha, times=spec.times or None)
            groups[key[0] if key else "all"] = fit.to_dict()
        return {
            "kind": self.name,
            "param": spec.param,
            "by": spec.by,
            "alpha": spec.alpha,
            "display": spec.display,
            "groups": groups,
        }

    def present(self, name: str, result: Mapping[str, Any]) -> Presentation:
        groups = result.get("groups") or {}
        conf = int(round(100 * (1 - float(result.get("alpha", 0.05)))))
        medians = Table(
            f"{name}_medians",
            f"Median time to event ({conf}% CI)",
            (
                Column("group", "Group"),
                Column("n", "N", "int"),
                Column("events", "Events", "int"),
                Column("median", "Median", "time"),
                Column("median_ci", f"{conf}% CI", "ci"),
            ),
            tuple(
                {
                    "group": level,
                    "n": (g.get("at_risk") or [None])[0],
                    "events": sum(g.get("events") or []),
                    "median": g.get("median"),
                    "median_ci": g.get("median_ci"),
                }
                for level, g in groups.items()
            ),
        )
        at_rows = []
        for level, g in groups.items():
            at = g.get("at") or {}
            columns = (at.get("time", []), at.get("survival", []), at.get("at_risk", []))
            for t, s, r in zip(*columns, strict=True):
                at_rows.append({"group": level, "time": t, "survival": s, "at_risk": r})
        estimates = Table(
            f"{name}_at",
            "Survival at the plan's time points",
            (
                Column("group", "Group"),
                Column("time", "Time", "time"),
                Column("survival", "Survival", "num"),
                Column("at_risk", "At risk", "int"),
            ),
            tuple(at_rows),
        )
        figure = Figure(
            f"km_{name}",
            "km",
            f"Kaplan-Meier: {result.get('param')} by {result.get('by') or 'all'}",
            {**dict(result), "name": name},
        )
        curve = Table(
            name,
            "Kaplan-Meier estimates",
            (
                Column("group", "Group"),
                Column("time", "Time", "time"),
                Column("survival", "Survival", "num"),
                Column("ci_lower", "Lower", "num"),
                Column("ci_upper", "Upper", "num"),
                Column("at_risk", "At risk", "int"),
                Column("events", "Events", "int"),
                Column("censored", "Censored", "int"),
            ),
            tuple(
                {"group": level, **dict(zip(_CURVE, values, strict=True))}
                for level, g in groups.items()
                for values in zip(*(g.get(k, []) for k in _CURVE), strict=True)
            ),
            detail=True,
        )
        metrics = tuple(Metric(("median", level), g.get("median")) for level, g in groups.items())
        return Presentation(
            heading=(
                f"Kaplan-Meier, endpoint {result.get('param')}, by {result.get('by') or 'none'}"
            ),
            tables=(curve, medians, estimates),
            figures=(figure,),
            metrics=metrics,
            params={"kind": self.name, "param": result.get("param"), "by": result.get("by")},
        )
