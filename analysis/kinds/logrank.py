"""``kind = "logrank"``: the (stratified) k-group log-rank test.

Site aggregate: :func:`analysis.km.grouped_event_tables` by group and strata. Estimator: the
tables merged over sites, then :func:`analysis.logrank.logrank_test`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from analysis import logrank
from analysis.kinds.base import (
    ALPHA,
    AnalysisSpec,
    Column,
    Kind,
    Metric,
    Presentation,
    Query,
    Table,
    names_key,
    register,
    text_key,
)
from analysis.kinds.context import EstimateContext
from analysis.kinds.format import number as _num
from analysis.kinds.format import p_value as _p


@dataclass(frozen=True)
class LogrankAnalysis(AnalysisSpec):
    """Log-rank test of ``param`` between the levels of ``by``, stratified by ``strata``."""

    param: str = ""
    by: str = ""
    strata: tuple[str, ...] = ()
    alpha: float = 0.05

    kind: ClassVar[str] = "logrank"


@register
class LogrankKind(Kind):
    """The log-rank test."""

    name = "logrank"
    title = "Log-rank test"
    spec = LogrankAnalysis
    keys = {
        "param": text_key("ADTTE endpoint (PARAMCD)", required=True),
        "by": text_key("ADSL variable whose levels are compared", required=True),
        "strata": names_key("stratification variables (SITE, COUNTRY or ADSL variables)"),
        "alpha": ALPHA,
    }

    def grouping(self, spec: LogrankAnalysis) -> tuple[str, ...]:
        return (spec.by, *spec.strata)

    def queries(self, spec: LogrankAnalysis) -> list[Query]:
        return [Query(spec.name, spec.name, "event_table", spec.param, self.grouping(spec))]

    def estimate(self, spec: LogrankAnalysis, context: EstimateContext) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.name,
            "param": spec.param,
            "by": spec.by,
            "strata": list(spec.strata),
        }
        payloads = context.payloads(spec.name)
        sums = [p for p in payloads if isinstance(p, Mapping) and "variance" in p]
        if sums:  # secure aggregation, SITE among the strata: the sites' summed stratum terms
            return {**out, **_from_sums(sums).to_dict()}
        tables = context.tables(spec.name)
        keyed = {(key[0], tuple(key[1:])): table for key, table in tables.items()}
        if not keyed:
            return {**out, "statistic": None, "df": 0, "p": None, "groups": {}}
        return {**out, **logrank.logrank_test(keyed).to_dict()}

    def present(self, name: str, result: Mapping[str, Any]) -> Presentation:
        strata = ", ".join(result.get("strata") or []) or "none"
        table = Table(
            name,
            f"Log-rank test of {result.get('param')} by {result.get('by')} (strata: {strata})",
            (
                Column("group", "Group"),
                Column("observed", "Observed events", "int"),
                Column("expected", "Expected events", "num"),
            ),
            tuple({"group": g, **v} for g, v in (result.get("groups") or {}).items()),
            notes=(
                f"chi-square = {_num(result.get('statistic'))}, df = {result.get('df')}, "
                f"p = {_p(result.get('p'))}",
            ),
        )
        return Presentation(
            heading=(
                f"log-rank test of {result.get('param')} by {result.get('by')} "
                f"(strata: {strata}): chi2 = {_num(result.get('statistic'))}, "
                f"df = {result.get('df')}, p = {_p(result.get('p'))}"
            ),
            tables=(table,),
            metrics=tuple(
                Metric((key,), result.get(key), headline=key == "p")
                for key in ("statistic", "p", "df")
            ),
            params={"kind": self.name, "param": result.get("param"), "by": result.get("by")},
        )


def _from_sums(sums: list[Mapping[str, Any]]) -> logrank.LogrankResult:
    """The test from ``{"groups", "observed", "expected", "variance"}`` payloads (same groups)."""
    groups = tuple(str(g) for g in sums[0]["groups"])
    k = len(groups)
    o, e, v = np.zeros(k), np.zeros(k), np.zeros((k, k))
    for part in sums:
        o += np.asarray(part["observed"], dtype=np.float64).reshape(k)
        e += np.asarray(part["expected"], dtype=np.float64).reshape(k)
        v += np.asarray(part["variance"], dtype=np.float64).reshape(k, k)
    return logrank.result_from_sums(groups, o, e, v)
