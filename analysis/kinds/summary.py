"""``kind = "summary"``: Table 1 (subjects, age, sex, events per endpoint) by a grouping variable.

Site aggregate: :func:`analysis.summary.summary_aggregate` (additive sums per group).
Estimator: the sum over sites, then :func:`analysis.summary.summarise`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Any, ClassVar

from analysis import summary
from analysis.kinds.base import (
    ALPHA,
    AnalysisSpec,
    Column,
    Kind,
    Metric,
    Presentation,
    Query,
    Table,
    register,
    text_key,
)
from analysis.kinds.context import EstimateContext
from analysis.kinds.format import MISSING, Locale, integer, number
from analysis.kinds.wording import join, resolve


@dataclass(frozen=True)
class SummaryAnalysis(AnalysisSpec):
    """Table 1 of the subjects by ``by`` (default the planned arm, TRT01P)."""

    by: str = "TRT01P"
    param: str = ""
    alpha: float = 0.05

    kind: ClassVar[str] = "summary"


@register
class SummaryKind(Kind):
    """Table 1."""

    name = "summary"
    title = "Table 1"
    spec = SummaryAnalysis
    keys = {
        "by": text_key("ADSL grouping variable (default TRT01P)"),
        "param": text_key("unused; kept for plans that name the endpoint"),
        "alpha": ALPHA,
    }

    def grouping(self, spec: SummaryAnalysis) -> tuple[str, ...]:
        return (spec.by,)

    def level_variables(self, spec: SummaryAnalysis) -> tuple[str, ...]:
        return (spec.by, "SEX")  # Table 1 counts the sexes

    def queries(self, spec: SummaryAnalysis) -> list[Query]:
        return [Query(spec.name, spec.name, "summary", by=(spec.by,))]

    def estimate(self, spec: SummaryAnalysis, context: EstimateContext) -> dict[str, Any]:
        parts: list[Any] = []
        incomplete: dict[str, dict[str, list[str]]] = {}
        for site, payload in context.answers.get(spec.name, []):
            part = dict(payload)
            for group, field, key in part.pop("suppressed", []):
                cell = f"{field} {key}".strip()
                incomplete.setdefault(group, {}).setdefault(cell, []).append(site)
            parts.append(part)
        if not parts:
            return {"kind": self.name, "by": spec.by, "groups": {}, "overall": None}
        total = reduce(summary.add_summaries, parts)
        out = {"kind": self.name, "by": spec.by, **summary.summarise(total).to_dict()}
        if incomplete:
            out["incomplete"] = incomplete  # group -> cell -> sites that withheld it
        return out

    def present(self, name: str, result: Mapping[str, Any], locale: Any = None) -> Presentation:
        loc = resolve(locale)
        by = str(result.get("by") or "")
        groups = dict(result.get("groups") or {})
        overall = result.get("overall") or {}
        if overall:
            groups[loc.t("overall")] = overall
        partial = {
            (group, cell)
            for group, cells in (result.get("incomplete") or {}).items()
            for cell in cells
        }
        columns = (Column("row", ""),) + tuple(
            Column(g, loc.t("n_header", group=_level(loc, by, g, result), n=integer(v.get("n"))))
            for g, v in groups.items()
        )
        rows: list[dict[str, Any]] = [
            {
                "row": loc.t("summary.subjects"),
                **{g: integer(v.get("n")) for g, v in groups.items()},
            },
            {
                "row": loc.t("summary.age"),
                **{
                    g: f"{number(v.get('age_mean'), 1)} ({number(v.get('age_sd'), 1)})"
                    for g, v in groups.items()
                },
            },
            {"row": loc.t("summary.sex")},
        ]
        for level in overall.get("sex") or {}:
            rows.append(
                {
                    "row": "  " + loc.level("SEX", level),
                    **{
                        g: _count(v.get("sex", {}).get(level), v.get("n"))
                        for g, v in groups.items()
                    },
                }
            )
        for param in overall.get("events") or {}:
            for field, key in (("events", "summary.events"), ("censored", "summary.censored")):
                row = {"row": loc.t(key, param=loc.param(param))}
                for g, v in groups.items():
                    cell = _count(v.get(field, {}).get(param), v.get("n"))
                    if (g, f"{field} {param}") in partial:
                        cell = loc.t("summary.partial", value=cell)
                    row[g] = cell
                rows.append(row)
        notes = []
        for group, cells in (result.get("incomplete") or {}).items():
            sites = sorted({site for withheld in cells.values() for site in withheld})
            label = _level(loc, by, group, result)
            notes.append(loc.t("summary.withheld", group=label, sites=join(loc, sites)))
        heading = loc.t("summary.heading", by=loc.var(by))
        table = Table(name, heading, columns, tuple(rows), tuple(notes))
        arms = result.get("groups") or {}
        metrics = tuple(Metric(("n", level), g.get("n")) for level, g in arms.items())
        return Presentation(
            heading=heading,
            tables=(table,),
            metrics=metrics,
            params={"kind": self.name, "by": by},
            population={
                "by": loc.var(by),
                "groups": {loc.level(by, lv): g.get("n") for lv, g in arms.items()},
                "total": overall.get("n"),
            },
        )


def _level(loc: Locale, by: str, group: str, result: Mapping[str, Any]) -> str:
    return group if group not in (result.get("groups") or {}) else loc.level(by, group)


def _count(value: Any, total: Any) -> str:
    """``n (x.x%)`` of ``total``; ``NA`` when the count is missing."""
    if value is None:
        return MISSING
    if not total:
        return integer(value)
    return f"{integer(value)} ({100 * value / total:.1f}%)"
