"""Analysis plans: the example plans parse, and every mistake is named before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.errors import UserError
from analysis.kinds.cox import CoxAnalysis
from analysis.plan import parse_plan
from experiments.plan import load_plan

PLANS = Path(__file__).resolve().parents[1] / "experiments" / "plans"

HEAD = '[study]\nid = "S"\n'


@pytest.mark.parametrize("path", sorted(PLANS.glob("*.toml")), ids=lambda p: p.name)
def test_example_plans_parse(path: Path) -> None:
    plan = load_plan(path)
    assert plan.study_id
    assert {a.kind for a in plan.analyses} >= {"km", "cox"}
    assert len(plan.sha256) == 64


def test_defaults_and_values() -> None:
    plan = parse_plan(
        HEAD
        + """
[run]
min_sites = 2
round_timeout = 30

[[analysis]]
name = "c"
kind = "cox"
param = "OS"
covariates = ["TRT01P", "AGE"]
reference = { TRT01P = "Placebo" }
strata = []
ties = "breslow"
alpha = 0.1
"""
    )
    (cox,) = plan.analyses
    assert isinstance(cox, CoxAnalysis)
    assert cox.ties == "breslow" and cox.alpha == 0.1 and cox.strata == ()
    assert cox.reference_map == {"TRT01P": "Placebo"}
    assert plan.run.min_sites == 2 and plan.run.round_timeout == 30


def test_sha256_is_the_content_not_the_text() -> None:
    text = HEAD + '[[analysis]]\nname = "k"\nkind = "km"\nparam = "OS"\n'
    plan = parse_plan(text)
    # comments, key order and keys written at their default are not content
    assert plan.sha256 == parse_plan(text + "# comment\n").sha256
    assert plan.sha256 == parse_plan(text + 'alpha = 0.05\ndisplay = "survival"\n').sha256
    reordered = HEAD + '[[analysis]]\nparam = "OS"\nkind = "km"\nname = "k"\n'
    assert plan.sha256 == parse_plan(reordered).sha256
    # any change of content is a new plan
    assert plan.sha256 != parse_plan(text + "alpha = 0.1\n").sha256
    assert plan.sha256 != parse_plan(text.replace('"OS"', '"PFS"')).sha256
    assert plan.text == text  # kept as written, for provenance
    # the canonical TOML parses back to the same plan
    again = parse_plan(plan.to_toml())
    assert again.sha256 == plan.sha256 and again.analyses == plan.analyses


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[[analysis]]\nname = "a"\nkind = "coxx"\n', "kind must be one of {'cox', 'km', "),
        (
            '[[analysis]]\nname = "a"\nkind = "km"\nparam = "OS"\nfoo = 1\n',
            "unknown key(s) ['foo']",
        ),
        (
            '[[analysis]]\nname = "a"\nkind = "cox"\nparam = "OS"\n',
            "missing required key(s) ['covariates']",
        ),
        ('[[analysis]]\nname = "a"\nkind = "km"\nparam = "OS"\n' * 2, "name 'a' is used twice"),
        (
            '[[analysis]]\nname = "a"\nkind = "cox"\nparam = "OS"\ncovariates = ["X"]\n'
            'ties = "exact"\n',
            "ties must be one of {'breslow', 'efron'}; got 'exact'",
        ),
        (
            '[[analysis]]\nname = "a"\nkind = "km"\nparam = "OS"\ntimes = [-1]\n',
            "times must be a list",
        ),
        (
            '[[analysis]]\nname = "a"\nkind = "km"\nparam = "OS"\nalpha = 2\n',
            "alpha must be a number in (0, 0.5); got 2",
        ),
        (
            '[[analysis]]\nname = "a"\nkind = "ve"\nparam = "OS"\nreference = { SEX = "F" }\n',
            "reference must name the reference level of the arm variable 'TRT01P'",
        ),
        (
            '[run]\nmin_sites = -1\n[[analysis]]\nname = "a"\nkind = "km"\nparam = "OS"\n',
            "[run]: min_sites must be an integer in [0, 10000]; got -1",
        ),
        (
            '[run]\nretries = 3\n[[analysis]]\nname = "a"\nkind = "km"\nparam = "OS"\n',
            "[run]: unknown key(s) ['retries']",
        ),
        ("", "at least one [[analysis]]"),
        ('[[analysis]]\nname = "1bad"\nkind = "km"\n', "name must be a string"),
    ],
)
def test_plan_errors_name_the_problem(body: str, expected: str) -> None:
    with pytest.raises(UserError) as info:
        parse_plan(HEAD + body, source="plan.toml")
    assert expected in str(info.value)
    assert str(info.value).startswith("plan.toml: ")


def test_missing_study_and_bad_toml() -> None:
    with pytest.raises(UserError, match=r"\[study\] id is required"):
        parse_plan('[[analysis]]\nname = "a"\nkind = "km"\nparam = "OS"\n')
    with pytest.raises(UserError, match="not valid TOML"):
        parse_plan("[study\n")


def test_missing_plan_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="plan file not found"):
        load_plan(tmp_path / "nope.toml")
