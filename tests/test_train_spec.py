"""The kind = "train" plan table: defaults, every validation message, the plan lookup."""

from __future__ import annotations

from typing import Any

import pytest

from analysis.errors import UserError
from analysis.kinds.train import DPSpec, parse_train_spec
from analysis.rounds import train_spec_from_plan
from tests.training_helpers import train_plan

BASE: dict[str, Any] = {
    "name": "risk",
    "kind": "train",
    "param": "OS",
    "model": "cox-linear",
    "features": ["AGE", "SEX", "TRT01P"],
    "test_flag": "TESTFL",
}


def test_issue_example_parses() -> None:
    spec = parse_train_spec(
        {**BASE, "strategy": "fedadam", "rounds": 50, "local_epochs": 1, "lr": 0.01, "seed": 0}
    )
    assert (spec.strategy, spec.rounds, spec.lr, spec.test_flag) == ("fedadam", 50, 0.01, "TESTFL")
    assert spec.features == ("AGE", "SEX", "TRT01P")
    assert spec.dp is None


def test_dp_table() -> None:
    spec = parse_train_spec({**BASE, "dp": {"clip": 1.0, "noise_multiplier": 2, "delta": 1e-5}})
    assert spec.dp == DPSpec(1.0, 2.0, 1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"strategy": "fedsgd"},
            "analysis 'risk': strategy must be one of {'fedadam', 'fedavg', 'fedprox'}; "
            "got 'fedsgd'",
        ),
        ({"model": "cox"}, "model must be one of {'cox-linear', 'deepsurv', 'logistic'}"),
        ({"rounds": 0}, "rounds must be an integer in [1, 1000]; got 0"),
        ({"rounds": 2.5}, "rounds must be an integer in [1, 1000]; got 2.5"),
        ({"lr": 0}, "lr must be a number > 0; got 0"),
        ({"local_epochs": 0}, "local_epochs must be an integer in [1, 1000]; got 0"),
        ({"seed": "x"}, "seed must be an integer in [0, 2**63); got 'x'"),
        ({"test_fraction": 0.2}, "exactly one of test_flag"),
        ({"test_flag": None}, "exactly one of test_flag"),
        ({"features": []}, "features must be a list of distinct ADSL variable names"),
        ({"features": ["AGE", "AGE"]}, "features must be a list of distinct"),
        ({"strategy": "fedprox"}, "strategy 'fedprox' needs proximal_mu"),
        ({"proximal_mu": 0.1}, "proximal_mu applies to strategy 'fedprox' only"),
        ({"server_lr": 0.1}, "server_lr applies to strategy 'fedadam' only"),
        ({"hidden": [16]}, "hidden applies to model 'deepsurv' only"),
        ({"model": "deepsurv", "hidden": [0]}, "hidden must be a list of 1 to 8 layer widths"),
        ({"model": "logistic"}, "model 'logistic' needs landmark"),
        ({"landmark": 30}, "landmark applies to model 'logistic' only"),
        ({"dp": {"clip": 1.0}}, "dp needs exactly the keys ['clip', 'noise_multiplier', 'delta']"),
        (
            {"dp": {"clip": 1.0, "noise_multiplier": 1.0, "delta": 2.0}},
            "dp.delta must be a number in (0, 1); got 2.0",
        ),
        (
            {"strategy": "fedadam", "dp": {"clip": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}},
            "dp needs strategy 'fedavg' or 'fedprox'",
        ),
        ({"epochs": 3}, "unknown key(s) ['epochs'] for kind 'train'"),
        ({"param": None}, "missing required key(s) ['param']"),
    ],
)
def test_errors_name_key_allowed_and_value(change: dict[str, Any], message: str) -> None:
    table = {**BASE, **change}
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(UserError) as info:
        parse_train_spec(table, "plan.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("plan.toml: invalid analysis plan")


def test_every_problem_is_listed() -> None:
    with pytest.raises(UserError) as info:
        parse_train_spec({**BASE, "rounds": 0, "lr": -1, "strategy": "x"})
    text = str(info.value)
    assert "rounds must be" in text and "lr must be" in text and "strategy must be" in text


def test_from_plan_text() -> None:
    spec = train_spec_from_plan(train_plan(strategy="fedprox", proximal_mu=0.5), "risk")
    assert (spec.strategy, spec.proximal_mu, spec.test_fraction) == ("fedprox", 0.5, 0.25)
    with pytest.raises(UserError, match=r"analysis must be one of \['risk'\]; got 'other'"):
        train_spec_from_plan(train_plan(), "other")
