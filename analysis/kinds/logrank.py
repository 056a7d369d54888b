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
    PARAM,
    AnalysisSpec,
    Column,
    Effect,
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
from analysis.kinds.format import number
from analysis.kinds.wording import join, resolve


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
        "param": PARAM,
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

    def present(self, name: str, result: Mapping[str, Any], locale: Any = None) -> Presentation:
        loc = resolve(locale)
        by, param = str(result.get("by") or ""), str(result.get("param") or "")
        strata = [loc.var(v) for v in result.get("strata") or []]
        stratified = loc.t("logrank.stratified", vars=join(loc, strata)) if strata else ""
        heading = loc.t(
            "logrank.heading", param=loc.param(param), by=loc.var(by), strata=stratified
        )
        outcome = loc.t(
            "logrank.result",
            chi2=number(result.get("statistic"), 2),
            df=result.get("df"),
            p=loc.p(result.get("p")),
        )
        table = Table(
            name,
            heading,
            (
                Column("group", loc.t("group")),
                Column("observed", loc.t("logrank.observed"), "int"),
                Column("expected", loc.t("logrank.expected"), "num1"),
            ),
            tuple(
                {"group": loc.level(by, g), **v} for g, v in (result.get("groups") or {}).items()
            ),
        )
        return Presentation(
            heading=heading,
            lines=(outcome,),
            tables=(table,),
            metrics=tuple(
                Metric((key,), result.get(key), headline=key == "p")
                for key in ("statistic", "p", "df")
            ),
            params={"kind": self.name, "param": param, "by": by},
            effects=(Effect(loc.t("logrank.effect"), "p", None, p=result.get("p"), format="p"),),
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
