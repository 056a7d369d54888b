"""The federated CDISC pilot KM figure has the published Figure 14-1's ticks and numbers at risk.

PUBLISHED is the risk table of the CDISC pilot's Figure 14-1 ("Time to first dermatologic event
by treatment group", safety population, by TRT01A) as the R Consortium's Pilot 1 submission to
FDA publishes it: github.com/RConsortium/submissions-pilot1, output/tlf-kmplot.pdf (commit
cbc154b52020122a6982d60ee0d06b7a8d1c1600 of that file), read out of the PDF with
docs/reports/published_at_risk.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from experiments.plots import arm_colors, at_risk_at, risk_table_times
from experiments.presentation import locale_for, presentations
from tests.cdisc import pilot_km_results, read_pilot

PUBLISHED_TIMES = [0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 140.0, 160.0, 180.0, 200.0]
PUBLISHED = {
    "Placebo": [86, 75, 65, 59, 50, 47, 45, 42, 40, 35, 0],
    "Xanomeline Low Dose": [84, 58, 31, 20, 14, 12, 8, 6, 6, 5, 0],
    "Xanomeline High Dose": [84, 48, 31, 14, 7, 4, 4, 4, 4, 3, 0],
}


@pytest.fixture(scope="module")
def pilot(cdisc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return pilot_km_results(cdisc_dir, tmp_path_factory.mktemp("pilot"))


def test_the_published_population_is_the_vendored_one(cdisc_dir: Path) -> None:
    adsl, _ = read_pilot(cdisc_dir)
    assert (adsl["SAFFL"] == "Y").all()  # the figure's safety population is every subject
    counts = adsl["TRT01A"].value_counts().to_dict()
    assert counts == {arm: numbers[0] for arm, numbers in PUBLISHED.items()}


def test_ticks_and_numbers_at_risk_equal_the_published_figure(pilot: dict[str, Any]) -> None:
    groups = pilot["analyses"]["ttde"]["groups"]
    assert risk_table_times(groups) == PUBLISHED_TIMES
    for arm, numbers in PUBLISHED.items():
        assert [at_risk_at(groups[arm], t) for t in PUBLISHED_TIMES] == numbers, arm


def test_figure_words_and_colours(pilot: dict[str, Any]) -> None:
    (figure,) = presentations(pilot)["ttde"].figures
    assert figure.title == (
        "Time to First Dermatologic Event: Kaplan–Meier estimates by Treatment (actual)"
    )
    assert figure.data["xlabel"] == "Time (days)"
    assert figure.data["ylabel"] == "Survival probability (%)"
    roles = figure.data["roles"]
    assert roles["Placebo"] == "reference"  # no plan reference: the arm that reads as one
    colors = arm_colors(list(roles), roles)
    ko = presentations(pilot, locale_for(pilot, "ko"))["ttde"].figures[0]
    assert ko.data["xlabel"] == "기간 (일)" and ko.data["risk_title"] == "위험 대상자 수"
    assert len(set(colors.values())) == 3
