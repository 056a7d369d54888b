"""A new analysis kind is one module: registered, it is parsed, answered by the sites, estimated
and rendered by the console, report, tables, plots and MLflow code without touching them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from analysis.kinds import REGISTRY
from analysis.kinds.base import (
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
from analysis.plan import parse_plan
from experiments.console import format_results
from experiments.launch import build_results
from experiments.report import render_report, write_tables
from experiments.tracking_records import analysis_metrics, headline_metrics
from federation.inprocess import InProcessTransport
from federation.protocol import run_plan
from tests import datasets


@dataclass(frozen=True)
class EventCountAnalysis(AnalysisSpec):
    """Events and subjects per group of an endpoint (a toy kind for this test)."""

    param: str = ""
    by: str = ""

    kind: ClassVar[str] = "eventcount"


class EventCountKind(Kind):
    name = "eventcount"
    title = "Event counts"
    spec = EventCountAnalysis
    keys = {"param": text_key("endpoint", required=True), "by": text_key("group variable")}

    def grouping(self, spec: EventCountAnalysis) -> tuple[str, ...]:
        return (spec.by,) if spec.by else ()

    def queries(self, spec: EventCountAnalysis) -> list[Query]:
        return [Query(spec.name, spec.name, "event_table", spec.param, self.grouping(spec))]

    def estimate(self, spec: EventCountAnalysis, context: EstimateContext) -> dict[str, Any]:
        groups = {
            (key[0] if key else "all"): {"n": t.n, "events": t.n_events}
            for key, t in context.tables(spec.name).items()
        }
        return {"kind": self.name, "param": spec.param, "groups": groups}

    def present(self, name: str, result: Mapping[str, Any], locale: Any = None) -> Presentation:
        rows = tuple({"group": g, **v} for g, v in result["groups"].items())
        table = Table(
            name,
            "Events per group",
            (Column("group", "Group"), Column("n", "N", "int"), Column("events", "Events", "int")),
            rows,
        )
        total = sum(v["events"] for v in result["groups"].values())
        return Presentation(
            heading=f"event counts of {result['param']}",
            tables=(table,),
            metrics=(Metric(("events",), total, headline=True),),
        )


@pytest.fixture
def eventcount() -> Iterator[None]:
    register(EventCountKind)
    try:
        yield
    finally:
        del REGISTRY["eventcount"]


def test_a_new_kind_runs_and_renders_end_to_end(eventcount: None, tmp_path: Path) -> None:
    frame = datasets.toy([30, 30, 30], seed=2)
    bundles = datasets.bundles_from_frame(
        frame, tmp_path / "sites", site="site", time="time", event="event", arm="ARM"
    )
    plan = parse_plan(
        '[study]\nid = "T"\n[[analysis]]\nname = "ev"\nkind = "eventcount"\n'
        'param = "OS"\nby = "TRT01P"\n'
    )
    outcome = run_plan(plan, InProcessTransport(bundles))
    results = build_results(plan, outcome, "in-process", 0.0)
    groups = results["analyses"]["ev"]["groups"]
    # independent truth: the rows of the toy trial
    for arm, rows in frame.groupby("ARM"):
        assert groups[str(arm)] == {"n": len(rows), "events": int(rows["event"].sum())}
    text = format_results(results)
    assert "[ev] event counts of OS" in text and "Events per group" in text
    html = render_report(results=results, plan_text=plan.text, provenance={}, images={})
    assert "Events per group" in html
    (path,) = write_tables(results, tmp_path)["ev"]
    assert path.name == "ev.csv" and path.read_text().startswith("group,n,events")
    from experiments.presentation import presentation

    shown = presentation("ev", results["analyses"]["ev"])
    assert headline_metrics("ev", shown) == {"ev/events": float(frame["event"].sum())}
    assert analysis_metrics(shown) == {"events": float(frame["event"].sum())}
    # and the sites answer it only through the plan they derive: an unknown kind fails to parse
    del REGISTRY["eventcount"]
    with pytest.raises(Exception, match="kind must be one of"):
        parse_plan(plan.text)
    register(EventCountKind)
