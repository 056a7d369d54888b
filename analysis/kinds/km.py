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
    PARAM,
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
from analysis.kinds.format import Locale
from analysis.kinds.wording import conf_level, group_label, resolve, roles

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
        "param": PARAM,
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

    def present(self, name: str, result: Mapping[str, Any], locale: Any = None) -> Presentation:
        loc = resolve(locale)
        groups: Mapping[str, Any] = result.get("groups") or {}
        by, param = str(result.get("by") or ""), str(result.get("param") or "")
        conf = conf_level(result.get("alpha", 0.05))
        incidence = result.get("display") == "incidence"
        unit = loc.unit(param)
        label = {lv: group_label(loc, by, lv) for lv in groups}
        by_words = loc.var(by) if by else loc.t("all_subjects")
        heading = loc.t("km.heading", param=loc.param(param), by=by_words)
        medians = Table(
            f"{name}_medians",
            loc.t("km.medians", unit=unit, conf=conf)
            if unit
            else loc.t("km.medians_no_unit", conf=conf),
            (
                Column("group", loc.t("group")),
                Column("n", loc.t("n"), "int"),
                Column("events", loc.t("events"), "int"),
                Column("censored", loc.t("censored"), "int"),
                Column("median", loc.t("km.median_ci", conf=conf), "est_time"),
            ),
            tuple(
                {
                    "group": label[lv],
                    "n": _first(g.get("at_risk")),
                    "events": sum(g.get("events") or []),
                    "censored": sum(g.get("censored") or []),
                    "median": [g.get("median"), *(g.get("median_ci") or [None, None])],
                }
                for lv, g in groups.items()
            ),
        )
        measure = loc.t("km.incidence" if incidence else "km.survival")
        figure = Figure(
            name,
            "km",
            loc.t("km.title", param=loc.param(param), by=by_words),
            {
                "groups": dict(groups),
                "incidence": incidence,
                "labels": label,
                "roles": roles(loc, by, list(groups)),
                "legend": {
                    lv: loc.t(
                        "km.legend",
                        group=label[lv],
                        n=loc.fmt(_first(g.get("at_risk")), "int"),
                        median=loc.fmt(
                            [g.get("median"), *(g.get("median_ci") or [None, None])], "est_time"
                        ),
                    )
                    for lv, g in groups.items()
                },
                "legend_title": by_words,
                "note": loc.t("km.note", conf=conf, unit=unit)
                if unit
                else loc.t("km.note_no_unit", conf=conf),
                "xlabel": loc.t("time", unit=unit) if unit else loc.t("time_no_unit"),
                "ylabel": loc.t("percent_axis", what=measure),
                "risk_title": loc.t("number_at_risk"),
            },
        )
        metrics = tuple(Metric(("median", level), g.get("median")) for level, g in groups.items())
        at = _at_table(name, loc, groups, label, measure, incidence, unit)
        return Presentation(
            heading=heading,
            tables=(_curve_table(name, groups), medians, *((at,) if at.rows else ())),
            figures=(figure,),
            metrics=metrics,
            params={"kind": self.name, "param": param, "by": by, "display": result.get("display")},
        )


def _first(values: Any) -> Any:
    return values[0] if values else None


def _at_table(
    name: str,
    loc: Locale,
    groups: Mapping[str, Any],
    label: Mapping[str, str],
    measure: str,
    incidence: bool,
    unit: str,
) -> Table:
    """The estimate and number at risk at the plan's times, one row per time."""
    rows: dict[float, dict[str, Any]] = {}
    columns = [Column("time", loc.t("time", unit=unit) if unit else loc.t("time_no_unit"), "time")]
    for i, (level, g) in enumerate(groups.items()):
        at = g.get("at") or {}
        columns.append(Column(f"s{i}", loc.t("km.cell", group=label[level], what=measure), "pct"))
        columns.append(
            Column(f"r{i}", loc.t("km.cell", group=label[level], what=loc.t("at_risk")), "int")
        )
        columns_at = (at.get("time", []), at.get("survival", []), at.get("at_risk", []))
        for t, s, r in zip(*columns_at, strict=True):
            row = rows.setdefault(float(t), {"time": t})
            row[f"s{i}"] = None if s is None else (1.0 - s if incidence else s)
            row[f"r{i}"] = r
    return Table(
        f"{name}_at",
        loc.t("km.at", measure=measure),
        tuple(columns),
        tuple(rows[t] for t in sorted(rows)),
    )


def _curve_table(name: str, groups: Mapping[str, Any]) -> Table:
    """The whole curve (written as CSV, not shown)."""
    return Table(
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
