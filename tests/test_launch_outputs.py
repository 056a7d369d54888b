"""The launcher's output-only fields: sites named from site.toml (no phantom row), the
synthetic-data marker, the report languages, and the results.json fields the report reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis.errors import UserError
from analysis.plan import parse_plan
from experiments.launch import (
    build_results,
    describe_sites,
    run_languages,
    synthetic_bundles,
)
from experiments.report import render_report
from experiments.synth import generate_trial, write_trial
from tests.cdisc import split_cdisc_pilot

PLAN = parse_plan(
    '[study]\nid = "T"\n\n[[analysis]]\nname = "hr"\nkind = "cox"\nparam = "OS"\n'
    'covariates = ["TRT01P"]\nreference = { TRT01P = "Placebo" }\n'
)


@pytest.fixture(scope="module")
def synth_bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("synth")
    write_trial(generate_trial("drug", 120, 2, 7), out, "csv")
    return sorted((out / "sites").iterdir())


def test_sites_are_described_by_their_site_toml(synth_bundles: list[Path]) -> None:
    described = describe_sites(synth_bundles)
    assert [s["id"] for s in described] == ["JP01", "KR01"]
    assert [s["country"] for s in described] == ["JP", "KR"]
    assert all(
        s["name"] and s["path"] == str(p) for s, p in zip(described, synth_bundles, strict=True)
    )


def test_a_bad_site_toml_is_refused_before_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "site.toml").write_text('[site]\nid = "X"\n')
    with pytest.raises(UserError, match=r"site\.toml"):
        describe_sites([folder])


def test_phantom_site_never_reaches_the_report(synth_bundles: list[Path]) -> None:
    """Regression: the launcher passed {"path": ...} without ids and the report listed a site
    "None ... NO". Sites now come described by id, and an id-less entry is ignored."""
    described = describe_sites(synth_bundles)
    results = {
        "study": {"id": "T"},
        "sites": [{"id": s["id"], "country": s["country"], "n": 60} for s in described],
        "analyses": {},
    }
    for sites in (described, [{"path": "/somewhere"}, *described]):
        page = render_report(results=results, plan_text="", provenance={}, sites=sites)
        body = page[page.index("<tbody>", page.index("Subject flow")) :]
        body = body[: body.index("</tbody>")]
        assert body.count("<tr>") == 2
        assert "None" not in page


def test_synthetic_marker(synth_bundles: list[Path], cdisc_dir: Path, tmp_path: Path) -> None:
    assert synthetic_bundles(synth_bundles)
    pilot = split_cdisc_pilot(cdisc_dir, tmp_path / "sites", sites=["701"])
    assert not synthetic_bundles(pilot)
    assert not synthetic_bundles([])


def test_languages() -> None:
    assert run_languages(None, PLAN) == ["en"]
    assert run_languages("ja, ko,ja", PLAN) == ["ja", "ko"]
    with pytest.raises(UserError, match=r"--lang must be one of en, ja, ko; got 'fr'"):
        run_languages("en,fr", PLAN)


def test_results_carry_the_plan_and_the_marker() -> None:
    outcome = SimpleNamespace(
        sites=[], sites_missing=[], rounds=1, round_seconds=[0.1], analyses={}
    )
    results = build_results(PLAN, outcome, "x", 0.5, synthetic=True)
    assert results["synthetic"] is True
    assert results["plan"]["analysis"][0]["reference"] == {"TRT01P": "Placebo"}
    assert build_results(PLAN, outcome, "x", 0.5)["synthetic"] is False


def test_japanese_without_the_cjk_font_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import fonts

    monkeypatch.setattr(fonts, "cjk_font", lambda: None)
    with pytest.raises(UserError, match=r"--lang ja needs the Noto Sans CJK font.*fonts-noto-cjk"):
        run_languages("en,ja", PLAN)
    assert run_languages("en", PLAN) == ["en"]  # English reads without it
