"""The reports of both demos (`make demo`) in English, Japanese and Korean, rendered by headless
Chromium: the right words for each design, and no missing glyph.

Each demo is generated as `make demo` does (same design, size and seed), run through the whole
federated protocol in process (the engine is tested in test_simulation), and written with the
launcher's output code. Screenshots land in tests/artifacts/report_<design>_<lang>.png for a
person to look at.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest

from experiments.console import format_results
from experiments.launch import build_results, describe_sites, synthetic_bundles
from experiments.outputs import write_outputs
from experiments.plan import load_plan
from experiments.synth import generate_trial, write_trial
from federation.inprocess import InProcessTransport
from federation.protocol import run_plan
from federation.secure_protocol import run_secure
from tests.browser import ARTIFACTS, find_chromium, run_chromium
from tests.secure_helpers import ClearSumTransport
from tests.test_plots_report import page_text

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "ja", "ko")
DESIGNS = ("vaccine", "drug")
FONT_PROBE = """<script>
const text = document.body.innerText;
Promise.all(['TrialfedSans', 'TrialfedMono'].map(f => document.fonts.load('16px ' + f, text)))
  .then(() => {
    const state = [...document.fonts].map(f => f.family + ':' + f.status).join(',');
    document.body.setAttribute('data-fonts', state);
  }, error => document.body.setAttribute('data-fonts', 'error ' + error));
</script></body>"""


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """design -> {"out": results folder, "results": results.json dict}."""
    out: dict[str, dict[str, Any]] = {}
    for design in DESIGNS:
        root = tmp_path_factory.mktemp(design)
        write_trial(generate_trial(design, 3000, 6, 20261128), root, "csv")
        bundles = sorted((root / "sites").iterdir())
        plan = load_plan(REPO / "experiments" / "plans" / f"demo_{design}.toml")
        # the plan as `make demo` runs it: secure aggregation where it asks for it (the sites'
        # vectors summed in the clear here; the engines sum them with SecAgg+)
        runner = run_secure if plan.run.secure_aggregation else run_plan
        transport = ClearSumTransport(bundles) if plan.run.secure_aggregation else None
        outcome = runner(plan, transport or InProcessTransport(bundles))
        synthetic = synthetic_bundles(bundles)
        results = build_results(plan, outcome, "in-process", 0.0, synthetic=synthetic)
        write_outputs(
            results,
            root / "results",
            plan_text=plan.text,
            provenance={},
            sites=describe_sites(bundles),
            languages=LANGS,
        )
        out[design] = {"out": root / "results", "results": results}
    return out


def _report(demos: dict[str, dict[str, Any]], design: str, lang: str) -> str:
    name = "report.html" if lang == "en" else f"report.{lang}.html"
    return (demos[design]["out"] / name).read_text(encoding="utf-8")


def test_drug_demo_speaks_of_hazard_ratios_and_survival(demos: dict[str, dict[str, Any]]) -> None:
    """Regression: the drug demo reported "VE = 28.2%" for overall survival and drew OS as a
    cumulative incidence."""
    results = demos["drug"]["results"]
    assert {a["kind"] for a in results["analyses"].values()} == {"summary", "km", "logrank", "cox"}
    assert results["analyses"]["km"]["display"] == "survival"
    page = page_text(_report(demos, "drug", "en"))
    console = format_results(results)
    for text in (page, console):
        assert "Hazard ratio" in text and "Vaccine efficacy" not in text
        assert not re.search(r"\bVE\b", text)
    assert "Survival probability" in page and "Cumulative incidence" not in page
    assert "ワクチン有効率" not in page_text(_report(demos, "drug", "ja"))
    figures = {p.name for p in (demos["drug"]["out"] / "figures").iterdir()}
    assert figures == {"km.png", "km.svg", "forest_hr.png", "forest_hr.svg"}


def test_vaccine_demo_reports_efficacy_and_incidence(demos: dict[str, dict[str, Any]]) -> None:
    results = demos["vaccine"]["results"]
    page = page_text(_report(demos, "vaccine", "en"))
    ve = results["analyses"]["ve"]
    headline = page[page.index("Primary result") : page.index("Estimand")]
    assert f"Vaccine efficacy, Vaccine vs Placebo: {100 * ve['ve']:.1f}%" in headline
    assert "Cumulative incidence" in page
    assert "SYNTHETIC DATA" in page
    assert "ワクチン有効率" in page_text(_report(demos, "vaccine", "ja"))
    assert "백신 효능" in page_text(_report(demos, "vaccine", "ko"))


def _embedded(page: str) -> set[int]:
    from fontTools.ttLib import TTFont

    covered: set[int] = set()
    for data in re.findall(r"url\(data:font/otf;base64,([A-Za-z0-9+/=]+)\)", page):
        covered |= set(TTFont(io.BytesIO(base64.b64decode(data))).getBestCmap())
    return covered


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("lang", LANGS)
def test_report_renders_in_chromium_with_every_glyph(
    demos: dict[str, dict[str, Any]], design: str, lang: str, tmp_path: Path
) -> None:
    chromium = find_chromium()
    page = _report(demos, design, lang)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", FONT_PROBE, 1), encoding="utf-8")
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    fonts = re.search(r'data-fonts="([^"]*)"', dom.stdout)
    assert fonts, dom.stdout[-1000:]
    # both embedded faces decode and load (a bad data: URI would read "error")
    assert set(fonts[1].split(",")) == {"TrialfedSans:loaded", "TrialfedMono:loaded"}
    shown = page_text(dom.stdout)
    covered = _embedded(page)
    missing = sorted({ch for ch in shown if ch.isprintable() and ord(ch) not in covered})
    assert not missing, missing
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report_{design}_{lang}.png"
    shot.unlink(missing_ok=True)
    done = run_chromium(
        chromium, tmp_path / "profile", f"--screenshot={shot}", probe.as_uri(), size="1280,7000"
    )
    assert shot.exists() and shot.stat().st_size > 100_000, done.stderr[-2000:]
