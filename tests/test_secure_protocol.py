"""The secure round protocol and the site's rules under secure aggregation, without an engine.

The sites' vectors are computed by their own code and summed in the clear in this process
(tests/secure_helpers.ClearSumTransport): the layouts, the site aggregates on the common grid,
the exact decoding and the pooled estimators are checked against the plain run with the
disclosure rules off (k = 0, itself checked against lifelines elsewhere). tests/test_secure.py
runs the same through Flower's SecAgg+.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.errors import UserError
from analysis.plan import parse_plan
from analysis.secure_layout import SecureState, round_layout
from experiments.synth import generate_trial, write_trial
from federation.exchange import RunFailed
from federation.inprocess import InProcessTransport
from federation.protocol import request, run_plan
from federation.secure_client import EXPECTED, guard
from federation.secure_protocol import run_secure
from sites.node import default_audit_log, serve, serve_secure
from tests.cdisc import split_cdisc_pilot
from tests.secure_helpers import ClearSumTransport, compare, plain, secure, set_policy

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "plans" / "demo_vaccine.toml"
EXACT = "min_cell_count = 0\npublish_site_estimates = true\n"
SECURE = "min_cell_count = 5\npublish_site_estimates = true\n"
"""The sites' default rules (k = 5); each publishes its own fit as in the exact run, so both runs
start the Newton iteration at the same point and take the same steps."""
STRICT = "min_cell_count = 5\n"  # the default policy: no fit published
PILOT_PLAN = """
[study]
id = "PILOT-SECURE"
[run]
min_sites = 1
[[analysis]]
name = "t1"
kind = "summary"
by = "TRT01P"
[[analysis]]
name = "km"
kind = "km"
param = "TTDE"
by = "TRT01P"
times = [30, 60, 90, 120]
[[analysis]]
name = "lr"
kind = "logrank"
param = "TTDE"
by = "TRT01P"
[[analysis]]
name = "lr_site"
kind = "logrank"
param = "TTDE"
by = "TRT01P"
strata = ["SITE"]
[[analysis]]
name = "cox_site"
kind = "cox"
param = "TTDE"
covariates = ["TRT01P"]
reference = { TRT01P = "Placebo" }
strata = ["SITE"]
[[analysis]]
name = "cox_sex"
kind = "cox"
param = "TTDE"
covariates = ["TRT01P", "AGE"]
reference = { TRT01P = "Placebo" }
strata = ["SEX"]
[[analysis]]
name = "cox_pooled"
kind = "cox"
param = "TTDE"
covariates = ["TRT01P", "AGE", "SEX"]
reference = { TRT01P = "Placebo", SEX = "F" }
ties = "breslow"
"""


@pytest.fixture(scope="module")
def trial_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trial")
    write_trial(generate_trial("vaccine", subjects=1200, sites=6, seed=11), out, "csv", 5)
    return out


def _copy(source: Path, target: Path, policy: str) -> list[Path]:
    shutil.copytree(source, target)
    return set_policy(sorted(target.iterdir()), policy)


def _assert_equal(exact: Any, secured: Any, tol: float = 1e-9) -> dict[str, float]:
    worst = compare(exact.analyses, secured.analyses)
    assert all(d <= tol for d in worst.values()), worst
    return worst


def test_secure_demo_plan_equals_the_plain_exact_run(trial_dir: Path, tmp_path: Path) -> None:
    text = plain(DEMO.read_text())
    exact = run_plan(
        parse_plan(text), InProcessTransport(_copy(trial_dir / "sites", tmp_path / "a", EXACT))
    )
    bundles = _copy(trial_dir / "sites", tmp_path / "b", SECURE)
    secured = run_secure(parse_plan(secure(text)), ClearSumTransport(bundles))
    worst = _assert_equal(exact, secured)
    assert set(worst) >= {"coef", "se", "survival", "expected"}
    assert secured.secure["rounds"][0] == {"round": 2, "sites": [b.name for b in bundles]}
    assert secured.analyses["ve"]["by_site"] == exact.analyses["ve"]["by_site"]
    assert not secured.refusals and not secured.disclosure
    assert all(set(s["events"].values()) == {None} for s in secured.sites)  # no per-site count


def test_without_published_fits_the_newton_start_differs_not_the_estimate(
    trial_dir: Path, tmp_path: Path
) -> None:
    """No fit leaves a site (the default policy): the iteration starts at zero and ends at the
    same maximum, within the Newton tolerance (SEs come from the last point evaluated)."""
    text = plain(DEMO.read_text())
    exact = run_plan(
        parse_plan(text), InProcessTransport(_copy(trial_dir / "sites", tmp_path / "a", EXACT))
    )
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT)
    secured = run_secure(parse_plan(secure(text)), ClearSumTransport(bundles))
    worst = _assert_equal(exact, secured, tol=1e-6)
    assert worst["coef"] <= 1e-9
    assert secured.analyses["ve"]["by_site"] == {}  # no site published its own fit


def test_secure_pilot_split_by_site_equals_the_plain_exact_run(
    cdisc_dir: Path, tmp_path: Path
) -> None:
    """17 sites of 1 to 41 subjects at k = 5: the plain run refuses or coarsens at 9 of them,
    the secure run gives the exact pooled answer (KM, log-rank, Cox with either baseline)."""
    plain_sites = set_policy(split_cdisc_pilot(cdisc_dir, tmp_path / "a"), EXACT)
    exact = run_plan(parse_plan(PILOT_PLAN), InProcessTransport(plain_sites))
    sites = set_policy(split_cdisc_pilot(cdisc_dir, tmp_path / "b"), SECURE)
    coarse = run_plan(parse_plan(PILOT_PLAN), InProcessTransport(sites))
    assert coarse.disclosure  # the plain k = 5 run changes answers
    secured = run_secure(parse_plan(secure(PILOT_PLAN)), ClearSumTransport(sites))
    _assert_equal(exact, secured)
    assert all(s["contributed"] for s in secured.sites) and len(secured.sites) == 17
    assert secured.analyses["cox_pooled"]["converged"]


def test_pooled_cells_below_k_are_suppressed_and_noted(trial_dir: Path, tmp_path: Path) -> None:
    text = '[study]\nid = "S"\n[run]\nsecure_aggregation = true\n' + (
        '[[analysis]]\nname = "t1"\nkind = "summary"\nby = "RACE"\n'
        '[[analysis]]\nname = "km"\nkind = "km"\nparam = "COVID"\nby = "RACE"\n'
    )
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT)
    adsl = bundles[0] / "adsl.csv"
    rows = adsl.read_text().splitlines()
    rows[1] = rows[1].replace(",ASIAN,", ",WHITE,")  # one subject of a level nobody else has
    adsl.write_text("\n".join(rows) + "\n")
    out = run_secure(parse_plan(text), ClearSumTransport(bundles))
    pooled = [n for n in out.disclosure if n["site"] == "pooled"]
    assert {n["analysis"] for n in pooled} == {"t1", "km"}
    assert "WHITE" not in out.analyses["t1"]["groups"]
    assert "WHITE" not in out.analyses["km"]["groups"]
    assert out.analyses["t1"]["incomplete"]["WHITE"] == {"group": ["pooled"]}


def test_a_site_requiring_secure_aggregation_refuses_a_plain_plan(
    trial_dir: Path, tmp_path: Path
) -> None:
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT)
    set_policy(bundles[:1], STRICT + "require_secure_aggregation = true\n")
    text = plain(DEMO.read_text())
    with pytest.raises(RunFailed, match=r"JP01 \(round 1: refused \(require_secure_aggregation\)"):
        run_plan(parse_plan(text), InProcessTransport(bundles))
    entry = json.loads(default_audit_log(bundles[0]).read_text().splitlines()[-1])
    assert entry["outcome"] == "refused" and entry["rule"] == "require_secure_aggregation"
    secured = run_secure(parse_plan(secure(text)), ClearSumTransport(bundles))
    assert secured.analyses["ve"]["ve"] is not None


def test_secure_rounds_are_never_answered_in_the_clear(trial_dir: Path, tmp_path: Path) -> None:
    bundle = _copy(trial_dir / "sites", tmp_path / "b", STRICT)[0]
    plan = parse_plan(secure(DEMO.read_text()))
    reply = serve(bundle, request(plan, 2, {"countries": ["JP", "KR"], "models": {}}))
    assert reply["ok"] is False and reply["rule"] == "secure_aggregation"
    plain_plan = parse_plan(plain(DEMO.read_text()))
    vector, refused = serve_secure(bundle, request(plain_plan, 2, {"countries": ["JP"]}))
    assert vector is None and refused["rule"] == "secure_aggregation"


def test_fewer_than_three_sites_never_form_a_secure_sum(trial_dir: Path, tmp_path: Path) -> None:
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT)[:2]
    with pytest.raises(RunFailed, match="at least 3 sites; 2 answered"):
        run_secure(parse_plan(secure(DEMO.read_text())), ClearSumTransport(bundles))
    with pytest.raises(UserError, match="needs Flower's SecAgg"):
        run_plan(parse_plan(secure(DEMO.read_text())), InProcessTransport(bundles))


SETUP = {"stage": "setup", "sample_num": 4, "share_num": 4, "threshold": 3, **EXPECTED}


@pytest.mark.parametrize(
    ("configs", "why"),
    [
        ({**SETUP, "sample_num": 2, "share_num": 2, "threshold": 2}, "cover 2 sites"),
        ({**SETUP, "share_num": 3}, "3 sites would share its keys; this site needs 4"),
        ({**SETUP, "sample_num": 40, "share_num": 9, "threshold": 5}, "needs 15"),
        ({**SETUP, "threshold": 2}, "not a majority"),
        ({**SETUP, "clipping_range": 8.0}, "clipping_range"),
        ({**SETUP, "mod_range": 2**16}, "mod_range"),
        ({"stage": "share_keys", "1": [b"a", b"b"], "2": [b"c", b"d"]}, "only 2 sites"),
        ({"stage": "collect_masked_vectors", "srcs": [7], "ctxts": [b"x"]}, "fewer than 3"),
        ({"stage": "unmask", "active_nids": [1, 2], "dead_nids": [3]}, "fewer than 3"),
    ],
)
def test_the_guard_refuses_what_would_single_a_site_out(configs: dict, why: str) -> None:
    assert why in guard(configs)


def test_the_guard_lets_a_proper_secure_sum_through() -> None:
    assert guard(SETUP) == ""
    assert guard({**SETUP, "sample_num": 40, "share_num": 15, "threshold": 8}) == ""
    assert guard({"stage": "unmask", "active_nids": [1, 2, 3], "dead_nids": [4]}) == ""


def test_a_value_out_of_range_refuses_its_analysis_naming_it(
    trial_dir: Path, tmp_path: Path
) -> None:
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT)
    adsl = bundles[2] / "adsl.csv"
    lines = adsl.read_text().splitlines()
    header = lines[0].split(",")
    age = header.index("AGE")
    cells = lines[1].split(",")
    cells[age] = "9000000000000000"  # 9e15: its sum of squares is beyond 2**52
    lines[1] = ",".join(cells)
    adsl.write_text("\n".join(lines) + "\n")
    text = secure(DEMO.read_text()).replace("min_sites = 0", "min_sites = 5")
    out = run_secure(parse_plan(text), ClearSumTransport(bundles))
    refusal = next(r for r in out.refusals if r["analysis"] == "table1")
    assert refusal["site"] == bundles[2].name and refusal["rule"] == "secure_aggregation"
    assert "table1/age" in refusal["message"] and "2**52" in refusal["message"]
    assert out.analyses["table1"]["secure_aggregation"]["sites"] == [
        b.name for i, b in enumerate(bundles) if i != 2
    ]
    assert out.analyses["km"]["secure_aggregation"]["sites"] == [b.name for b in bundles]
    cox = out.analyses["cox"]  # AGE enters the information as its square: refused too
    assert not cox["converged"] and "cox/information: value 6.1" in cox["message"]


def test_a_dropout_leaves_the_others_summed_and_names_the_site(
    trial_dir: Path, tmp_path: Path
) -> None:
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT)
    text = secure(DEMO.read_text()).replace("min_sites = 0", "min_sites = 5")
    out = run_secure(parse_plan(text), ClearSumTransport(bundles, drop={3: 3}))
    assert [m["id"] for m in out.sites_missing] == [bundles[3].name]
    assert "collect_masked_vectors" in out.sites_missing[0]["reason"]
    assert out.secure["rounds"][0]["sites"] == [b.name for b in bundles]
    assert out.secure["rounds"][1]["sites"] == [b.name for i, b in enumerate(bundles) if i != 3]
    assert bundles[3].name not in out.analyses["cox"]["secure_aggregation"]["sites"]
    assert bundles[3].name in out.analyses["km"]["secure_aggregation"]["sites"]


def test_a_state_that_does_not_cover_the_site_is_refused(trial_dir: Path, tmp_path: Path) -> None:
    """A coordinator that leaves out a site's level or cuts the time axis short gets the
    analysis refused (rule ``state``), never a vector that silently drops the site's rows."""
    bundle = _copy(trial_dir / "sites", tmp_path / "b", STRICT)[0]
    plan = parse_plan(
        '[study]\nid = "S"\n[run]\nsecure_aggregation = true\n'
        '[[analysis]]\nname = "t1"\nkind = "summary"\nby = "TRT01P"\n'
        '[[analysis]]\nname = "km"\nkind = "km"\nparam = "COVID"\nby = "TRT01P"\n'
    )
    levels = {"TRT01P": ["Placebo"], "SEX": ["F", "M"]}
    state: dict[str, Any] = {
        "secure": {"levels": levels, "params": ["COVID"], "end": 20},
        "models": {},
    }
    state |= {"countries": ["JP"], "evaluate": [], "queries": ["t1", "km"]}
    vector, payload = serve_secure(bundle, request(plan, 2, state))
    assert vector is not None and payload["ok"]
    refused = payload["reply"]["refused"]
    assert refused["t1"]["rule"] == "state" and "'Vaccine'" in refused["t1"]["message"]
    assert refused["km"]["rule"] == "state"
    layout = round_layout(plan, 2, SecureState.from_dict(state["secure"], plan, ["JP"]), [])
    assert np.array_equal(vector, layout.encode({}))  # zeros: nothing of the site's data


def test_an_identifier_grouping_is_refused_by_name_and_the_run_goes_on(
    trial_dir: Path, tmp_path: Path
) -> None:
    """Under secure aggregation USUBJID (text) is refused by its ADaM name: its level names would
    leave in round 1. The other analyses are computed."""
    text = '[study]\nid = "S"\n[run]\nsecure_aggregation = true\nmin_sites = 3\n' + (
        '[[analysis]]\nname = "bad"\nkind = "km"\nparam = "COVID"\nby = "USUBJID"\n'
        '[[analysis]]\nname = "km"\nkind = "km"\nparam = "COVID"\nby = "TRT01P"\n'
    )
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT)
    out = run_secure(parse_plan(text), ClearSumTransport(bundles))
    assert out.analyses["bad"]["refused"] is True
    assert {r["rule"] for r in out.analyses["bad"]["refusals"]} == {"identifier"}
    assert set(out.analyses["km"]["groups"]) == {"Placebo", "Vaccine"}
