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
from analysis.kinds.format import number


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

    def present(self, name: str, result: Mapping[str, Any]) -> Presentation:
        groups = dict(result.get("groups") or {})
        if result.get("overall"):
            groups["Overall"] = result["overall"]
        columns = (Column("row", ""),) + tuple(Column(g, g, "text") for g in groups)
        rows: list[dict[str, Any]] = [
            {"row": "N", **{g: v.get("n") for g, v in groups.items()}},
            {
                "row": "Age, mean (SD)",
                **{
                    g: f"{number(v.get('age_mean'), 1)} ({number(v.get('age_sd'), 1)})"
                    for g, v in groups.items()
                },
            },
        ]
        overall = result.get("overall") or {}
        for level in overall.get("sex") or {}:
            rows.append(
                {"row": f"Sex {level}", **{g: v["sex"].get(level) for g, v in groups.items()}}
            )
        for param in overall.get("events") or {}:
            rows.append(
                {
                    "row": f"{param}: events / censored",
                    **{
                        g: f"{v['events'].get(param)} / {v['censored'].get(param)}"
                        for g, v in groups.items()
                    },
                }
            )
        notes = tuple(
            f"{group}: {cell} excludes site(s) {', '.join(sites)} (cells below min_cell_count)"
            for group, cells in (result.get("incomplete") or {}).items()
            for cell, sites in cells.items()
        )
        table = Table(name, f"Table 1 by {result.get('by')}", columns, tuple(rows), notes)
        metrics = tuple(
            Metric(("n", level), g.get("n")) for level, g in (result.get("groups") or {}).items()
        )
        return Presentation(
            heading=f"Table 1 by {result.get('by')}",
            tables=(table,),
            metrics=metrics,
            params={"kind": self.name, "by": result.get("by")},
        )
