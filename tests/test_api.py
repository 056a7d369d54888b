"""The Python API: a plan built in code equals its TOML twin, and the worked example of
docs/python-api.md runs as written (in Flower's simulation engine) with the right numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analysis.errors import UserError
from analysis.plan import parse_plan
from experiments.api import Analysis, Plan
from experiments.synth import generate_trial, write_trial

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"

TOML = """
[study]
id = "DEMO-VAX"
title = "Demo COVID-19 vaccine efficacy trial"

[[analysis]]
name = "km"
kind = "km"
param = "COVID"
by = "TRT01P"
times = [0, 90, 180]

[[analysis]]
name = "cox"
kind = "cox"
param = "COVID"
covariates = ["TRT01P", "AGE"]
reference = { TRT01P = "Placebo" }
strata = ["SITE"]
"""


def test_a_plan_built_in_code_has_the_hash_of_its_toml_twin() -> None:
    plan = Plan(
        "DEMO-VAX",
        [
            Analysis("km", "km", param="COVID", by="TRT01P", times=(0, 90, 180)),
            Analysis(
                "cox",
                "cox",
                param="COVID",
                covariates=["TRT01P", "AGE"],
                reference={"TRT01P": "Placebo"},
                strata=["SITE"],
                ties="efron",  # the default, written or not
            ),
        ],
        title="Demo COVID-19 vaccine efficacy trial",
    )
    assert plan.sha256 == parse_plan(TOML).sha256
    assert parse_plan(plan.to_toml()).sha256 == plan.sha256


def test_a_plan_built_in_code_is_validated_like_toml() -> None:
    with pytest.raises(UserError, match=r"ties must be one of \{'breslow', 'efron'\}; got 'exact'"):
        Plan("S", [Analysis("cox", "c", param="OS", covariates=["AGE"], ties="exact")])
    with pytest.raises(UserError, match="kind must be one of"):
        Plan("S", [Analysis("kaplan", "k", param="OS")])


@pytest.mark.slow
def test_the_worked_example_runs_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    trial = generate_trial("vaccine", subjects=1200, sites=4, seed=5)
    write_trial(trial, tmp_path / "demo" / "vaccine", "csv", min_cell_count=0)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the documented example
    results = namespace["results"]
    assert results.results_["engine"] == "simulation"
    table1 = results.summary
    assert table1.loc["n", "Overall"] == 1200
    assert table1.loc["n", "Placebo"] + table1.loc["n", "Vaccine"] == 1200
    assert set(results.km["group"]) == {"Placebo", "Vaccine"}
    cox = results.cox.summary
    assert cox.loc["TRT01P[T.Vaccine]", "hr"] == pytest.approx(
        results.results_["analyses"]["cox"]["terms"]["TRT01P[T.Vaccine]"]["hr"]
    )
    assert namespace["axes"].get_lines()  # the KM curves were drawn
    out = capsys.readouterr().out
    assert namespace["plan"].sha256 in out and "vaccine hazard ratio" in out
