"""Figures, CSV tables and the self-contained HTML report (no MLflow)."""

from __future__ import annotations

import csv
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from experiments.plots import (
    at_risk_at,
    plot_convergence,
    plot_forest,
    risk_table_times,
    write_plots,
)
from experiments.report import json_ready, render_report, write_tables
from tests.results_fixture import PLAN_TEXT, make_results, make_sites

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return write_plots(make_results(), tmp_path_factory.mktemp("plots"))


def test_write_plots_names_and_formats(figures: dict[str, list[Path]]) -> None:
    names = {p.name for paths in figures.values() for p in paths}
    assert names == {
        "km_km_arrest.png",
        "km_km_arrest.svg",
        "forest.png",
        "forest.svg",
        "convergence_cox_arrest.png",
        "convergence_cox_arrest.svg",
        "convergence_efficacy.png",
        "convergence_efficacy.svg",
    }
    for paths in figures.values():
        png, svg = paths[-2:]
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
    svg_text = figures["forest"][1].read_text()
    assert "interaction p = 0.222" in svg_text.replace("\u00a0", " ") or "interaction" in svg_text


def test_risk_table_times_and_counts() -> None:
    km = make_results()["analyses"]["km_arrest"]
    assert risk_table_times(km) == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    group = km["groups"]["No aid"]
    assert at_risk_at(group, 0.0) == group["at_risk"][0] == 216
    for t, n in zip(group["at"]["time"], group["at"]["at_risk"], strict=True):
        assert at_risk_at(group, t) == n
    assert at_risk_at(group, 1e9) == 0
    for g in km["groups"].values():
        del g["at"]
    grid = risk_table_times(km)
    assert grid[0] == 0.0 and grid[-1] <= 52 and len(grid) >= 4


def test_optional_figures_absent() -> None:
    assert plot_convergence("x", {"kind": "cox", "terms": {}}) is None
    assert plot_forest({"analyses": {"km": {"kind": "km"}}}) is None


def test_tables(tmp_path: Path) -> None:
    results = make_results()
    paths = write_tables(results, tmp_path)
    assert set(paths) == set(results["analyses"])
    # the first table of each analysis is <analysis>.csv, with raw (unformatted) values
    assert [p.name for p in paths["efficacy"]] == ["efficacy.csv", "efficacy_cox.csv"]
    with paths["efficacy"][0].open() as fh:
        rows = list(csv.DictReader(fh))
    overall = rows[0]
    assert overall["group"] == "Overall"
    assert float(overall["hr"]) == results["analyses"]["efficacy"]["hr"]
    assert {r["group"] for r in rows} >= {"JP", "KR"}
    with paths["km_arrest"][0].open() as fh:
        km_rows = list(csv.DictReader(fh))
    n_times = sum(len(g["time"]) for g in results["analyses"]["km_arrest"]["groups"].values())
    assert len(km_rows) == n_times


def test_json_ready_replaces_nan() -> None:
    import numpy as np

    out = json_ready({"a": math.nan, "b": [np.float64(1.5), math.inf], "c": np.arange(2)})
    assert out == {"a": None, "b": [1.5, None], "c": [0, 1]}
    json.dumps(out, allow_nan=False)


def test_report_is_self_contained(figures: dict[str, list[Path]]) -> None:
    results = make_results()
    results["mlflow_run_id"] = "0123abcd"
    html = render_report(
        results=results,
        plan_text=PLAN_TEXT,
        provenance={"Git commit": "deadbeef"},
        sites=make_sites(),
        images=figures,
    )
    assert html.startswith("<!DOCTYPE html>")
    # No external resource: every src/href is a data: URI or an in-page anchor.
    for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html):
        assert ref.startswith(("data:", "#")), ref
    assert not re.search(r"https?://", html)
    assert html.count('src="data:image/png;base64,') == 4
    for text in (
        "Study and provenance",
        results["plan_sha256"],
        "0123abcd",
        "deadbeef",
        "Tokyo General",
        "Table" if False else "Age, mean (SD)",
        "0.477 to 1.003",  # VE analysis HR 95% CI
        "-0.3% to 52.3%",  # VE % 95% CI
        "treatment-by-country interaction p = 0.2224",
        "chi-square = 3.838",
        "ARM[Financial aid]",
        "NR",  # a median not reached
        "[[analysis]]",
    ):
        assert text in html, text


def test_forest_lists_sites_only_while_readable() -> None:
    from experiments.plots import MAX_FOREST_SITES, _forest_rows

    site = {"hr": 0.5, "hr_lower": 0.3, "hr_upper": 0.9, "n": 30, "events": 12, "country": "JP"}

    def ve_with(sites: int) -> dict[str, object]:
        by_site = {f"S{i:04d}": dict(site) for i in range(sites)}
        return {"analyses": {"ve": {"kind": "ve", **site, "by_site": by_site}}}

    labels = [label for label, _, _ in _forest_rows(ve_with(MAX_FOREST_SITES))]
    assert sum("site S" in label for label in labels) == MAX_FOREST_SITES
    labels = [label for label, _, _ in _forest_rows(ve_with(1000))]
    assert not any("site S" in label for label in labels)
    assert "1000 sites: per-site estimates in report.html" in labels[-1]
