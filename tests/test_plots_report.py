"""Figures, CSV tables and the self-contained HTML report (no MLflow), against lifelines truth.

The results fixture is computed with lifelines on its Rossi data; every number checked here is
recomputed from those rows or from the fixture's lifelines fits, never copied from our output.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from analysis.kinds import REGISTRY
from analysis.kinds.format import Locale
from experiments.plots import (
    REFERENCE_COLOR,
    TREATMENT_COLORS,
    arm_colors,
    at_risk_at,
    plot_convergence,
    plot_forest,
    risk_table_times,
    write_plots,
)
from experiments.presentation import locale_for, presentations
from experiments.report import json_ready, render_report, write_tables
from tests.results_fixture import (
    ARM,
    PLAN_TEXT,
    REFERENCE,
    TREATMENT,
    _data,
    make_results,
    make_sites,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return write_plots(make_results(), tmp_path_factory.mktemp("plots"))


def test_write_plots_names_folders_and_formats(figures: dict[str, list[Path]]) -> None:
    names = {f"{p.parent.name}/{p.name}" for paths in figures.values() for p in paths}
    assert names == {
        "figures/km_arrest.png",
        "figures/km_arrest.svg",
        "figures/forest_ve.png",
        "figures/forest_ve.svg",
        "diagnostics/cox_arrest_convergence.png",
        "diagnostics/cox_arrest_convergence.svg",
        "diagnostics/efficacy_convergence.png",
        "diagnostics/efficacy_convergence.svg",
    }
    for paths in figures.values():
        png, svg = paths
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
        assert ET.parse(svg).getroot().tag.endswith("svg")


def test_risk_table_ticks_cover_follow_up_and_counts_match_rows() -> None:
    km = make_results()["analyses"]["km_arrest"]
    grid = risk_table_times(km["groups"])
    # Rossi follow-up ends at week 52: regular ticks to the first one past it, not the plan's.
    assert grid == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    rows = _data()
    for level, group in km["groups"].items():
        arm = rows[rows[ARM] == level]
        for t in grid:
            assert at_risk_at(group, t) == int((arm["time"] >= t).sum()), (level, t)


def test_reference_arm_has_one_colour_whatever_the_order() -> None:
    roles = {"Placebo": "reference", "Vaccine": "treatment"}
    one = arm_colors(["Placebo", "Vaccine"], roles)
    other = arm_colors(["Vaccine", "Placebo"], roles)
    assert one["Placebo"] == other["Placebo"] == REFERENCE_COLOR
    assert one["Vaccine"] == other["Vaccine"] == TREATMENT_COLORS[0]


def test_km_figure_words_come_from_the_adam_labels() -> None:
    results = make_results()
    shown = presentations(results)["km_arrest"]
    (figure,) = shown.figures
    assert figure.title == "Time to re-arrest: Kaplan–Meier estimates by Arm"  # ARM's label
    assert figure.data["xlabel"] == "Time (weeks)"
    assert figure.data["ylabel"] == "Survival probability (%)"
    assert figure.data["roles"] == {REFERENCE: "reference", TREATMENT: "treatment"}
    group = results["analyses"]["km_arrest"]["groups"][TREATMENT]
    assert group["median"] is None  # fewer than half re-arrested within the 52 weeks
    assert figure.data["legend"][TREATMENT].startswith(f"{TREATMENT} (N = 216): median NR (")


def test_incidence_display_and_units_in_japanese() -> None:
    results = make_results()
    results["analyses"]["km_arrest"]["display"] = "incidence"
    shown = presentations(results, locale_for(results, "ja"))["km_arrest"]
    (figure,) = shown.figures
    assert figure.data["incidence"] is True
    assert figure.data["ylabel"] == "累積発生率（%）"
    assert figure.data["xlabel"] == "期間（週）"
    at = next(t for t in shown.tables if t.id == "km_arrest_at")
    first_group = next(iter(results["analyses"]["km_arrest"]["groups"].values()))
    assert at.rows[0]["s0"] == pytest.approx(1 - first_group["at"]["survival"][0])


def test_optional_figures_absent() -> None:
    assert plot_convergence("x", {"kind": "cox", "terms": {}}) is None
    one_row = presentations(make_results())["cox_arrest"].figures[0]
    assert one_row.type == "forest" and plot_forest([one_row], Locale()) is None


def test_tables_are_raw_values_with_intervals_split(tmp_path: Path) -> None:
    results = make_results()
    paths = write_tables(results, tmp_path)
    assert set(paths) == set(results["analyses"])
    assert {p.parent.name for ps in paths.values() for p in ps} == {"tables"}
    assert [p.name for p in paths["efficacy"]] == ["efficacy.csv", "efficacy_cox.csv"]
    with paths["efficacy"][0].open() as fh:
        rows = list(csv.DictReader(fh))
    overall = rows[0]
    efficacy = results["analyses"]["efficacy"]
    assert overall["group"] == "Overall"
    assert float(overall["hr"]) == efficacy["hr"]
    assert float(overall["hr_upper"]) == efficacy["hr_upper"]
    assert float(overall["ve_lower"]) == efficacy["lower"]
    assert {r["group"] for r in rows} >= {"Japan", "Korea"}
    with paths["km_arrest"][0].open() as fh:
        km_rows = list(csv.DictReader(fh))
    n_times = sum(len(g["time"]) for g in results["analyses"]["km_arrest"]["groups"].values())
    assert len(km_rows) == n_times


def test_cox_splits_treatment_from_covariates() -> None:
    shown = presentations(make_results())["cox_arrest"]
    treatment, covariates = (t for t in shown.tables if not t.detail)
    assert [r["term"] for r in treatment.rows] == [f"{TREATMENT} vs {REFERENCE}"]
    assert [r["term"] for r in covariates.rows] == ["Age (per year)", "PRIO (per unit)"]
    (effect,) = shown.effects
    assert effect.label == f"Hazard ratio, {TREATMENT} vs {REFERENCE}"


def test_json_ready_replaces_nan() -> None:
    import numpy as np

    out = json_ready({"a": math.nan, "b": [np.float64(1.5), math.inf], "c": np.arange(2)})
    assert out == {"a": None, "b": [1.5, None], "c": [0, 1]}
    json.dumps(out, allow_nan=False)


def _report(figures: dict[str, list[Path]], lang: str = "en", **changes: object) -> str:
    results = make_results()
    results["mlflow_run_id"] = "0123abcd"
    results.update(changes)
    return render_report(
        results=results,
        plan_text=PLAN_TEXT,
        provenance={"prov.commit": "deadbeef"},
        sites=make_sites(),
        images=figures,
        lang=lang,
    )


def test_report_is_self_contained_and_leads_with_the_headline(
    figures: dict[str, list[Path]],
) -> None:
    page = _report(figures)
    assert page.startswith("<!DOCTYPE html>")
    for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page):
        assert ref.startswith(("data:", "#")), ref
    assert not re.search(r"https?://", page)
    assert page.count('src="data:image/png;base64,') == 4
    efficacy = make_results()["analyses"]["efficacy"]
    ve = f"{100 * efficacy['ve']:.1f}% (95% CI {100 * efficacy['lower']:.1f}%, "
    ve += f"{100 * efficacy['upper']:.1f}%)"
    hr = f"{efficacy['hr']:.2f} ({efficacy['hr_lower']:.2f}, {efficacy['hr_upper']:.2f})"
    text = html.unescape(page)
    headline = text.index("Primary result")
    assert text.index(ve) > headline and text.index(ve) < text.index("Analyses")
    for expected in (
        hr,
        "Tokyo General",
        "Age (years), mean (SD)",
        f"Treatment-by-country interaction: p = {efficacy['interaction_p']:.3f}",
        f"{TREATMENT} vs {REFERENCE}",
        "Time to re-arrest",
        "deadbeef",
        "0123abcd",
        "[[analysis]]",
    ):
        assert expected in text, expected
    # Python values never leak into the page
    shown = text.split("[[analysis]]")[0]
    for leak in (r"\{'", r"\['", r"\bNone\b", r"\bnan\b", r"p = <"):
        assert not re.search(leak, shown), leak


def test_report_has_no_phantom_site(figures: dict[str, list[Path]]) -> None:
    results = make_results()
    sites = [{"path": "/bundles/JP01"}, *make_sites()]  # a description without an id
    page = render_report(results=results, plan_text="", provenance={}, sites=sites, images={})
    text = html.unescape(page)
    assert "None" not in text
    flow = text[text.index("Subject flow per site") :]
    table = flow[flow.index("<tbody>") : flow.index("</tbody>")]
    assert table.count("<tr>") == len(results["sites"]) == 4


def test_synthetic_banner(figures: dict[str, list[Path]]) -> None:
    assert "SYNTHETIC DATA" in _report(figures, synthetic=True)
    assert "SYNTHETIC DATA" not in _report(figures)


def _embedded_cmap(page: str) -> set[int]:
    from fontTools.ttLib import TTFont

    covered: set[int] = set()
    for data in re.findall(r"url\(data:font/otf;base64,([A-Za-z0-9+/=]+)\)", page):
        covered |= set(TTFont(io.BytesIO(base64.b64decode(data))).getBestCmap())
    return covered


class _Text(HTMLParser):
    """The text nodes of a page outside <style> and <script>: what a browser shows."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.skip += tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        self.skip -= tag in ("style", "script")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def page_text(page: str) -> str:
    """Every character a browser shows of ``page``."""
    parser = _Text()
    parser.feed(page)
    return "".join(parser.parts)


@pytest.mark.parametrize(
    ("lang", "words"),
    [("en", "Hazard ratio"), ("ja", "ハザード比"), ("ko", "위험비")],
)
def test_report_languages_and_embedded_font_cover_every_character(
    figures: dict[str, list[Path]], lang: str, words: str
) -> None:
    page = _report(figures, lang)
    assert f"<html lang='{lang}'>" in page
    assert words in page
    covered = _embedded_cmap(page)
    missing = {ch for ch in page_text(page) if ch.isprintable() and ord(ch) not in covered}
    assert not missing, sorted(missing)


def test_every_kind_presents_in_every_language() -> None:
    results = make_results()
    for lang in ("en", "ja", "ko"):
        loc = locale_for(results, lang)
        for name, section in results["analyses"].items():
            shown = REGISTRY[section["kind"]].present(name, section, loc)
            assert shown.heading and "{" not in shown.heading, (lang, name)


def test_a_kind_that_words_itself_in_english_still_renders() -> None:
    """A kind whose ``present`` takes no locale (written before the languages) renders in any
    report, in its own words."""
    from analysis.kinds.base import Kind, Presentation

    class Legacy(Kind):
        name = "legacy_test_kind"

        def present(self, name: str, result: object) -> Presentation:  # type: ignore[override]
            return Presentation(heading=f"legacy {name}")

    REGISTRY[Legacy.name] = Legacy()
    try:
        results = {"study": {"id": "T"}, "analyses": {"x": {"kind": Legacy.name}}}
        shown = presentations(results, locale_for(results, "ja"))
        assert shown["x"].heading == "legacy x"
    finally:
        del REGISTRY[Legacy.name]
