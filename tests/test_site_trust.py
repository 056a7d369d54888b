"""A hostile coordinator against the site's own rules (issue: site trust).

Each test plays an attack: identifier, date and free-text variables as groups, strata or
covariates; groups below k; a many-strata log-rank; hand-made messages no plan derives; a
relabelled kind; extreme and too many coefficient vectors; a fine risk-set grid; malformed state
that used to raise; wrong policies. Each is refused and audited, or returns nothing about fewer
than k subjects. The sites are a synthetic 6-site trial of 300 subjects with the default policy
(k = 5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.km import EventTable, at_risk_at
from analysis.plan import parse_plan
from experiments.cli import main
from experiments.synth import generate_trial, write_trial
from federation.inprocess import InProcessTransport
from federation.protocol import request, run_plan
from sites.node import default_audit_log, serve
from tests.secure_helpers import plain

K = 5
HEAD = '[study]\nid = "ATTACK"\n\n'


@pytest.fixture(scope="module")
def trial_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trial")
    write_trial(generate_trial("vaccine", subjects=300, sites=6, seed=3), out, "csv", K)
    return out


@pytest.fixture
def sites(trial_dir: Path, tmp_path: Path) -> list[Path]:
    """A fresh copy per test (each test writes audit logs and evaluation points)."""
    import shutil

    shutil.copytree(trial_dir / "sites", tmp_path / "sites")
    return sorted((tmp_path / "sites").iterdir())


def _plan(body: str) -> Any:
    return parse_plan(HEAD + body)


def _ask(bundle: Path, body: str, number: int = 1, state: dict | None = None) -> dict:
    return serve(bundle, request(_plan(body), number, state or {}))


def _entries(bundle: Path) -> list[dict]:
    return [json.loads(x) for x in default_audit_log(bundle).read_text().splitlines()]


def _set_policy(bundle: Path, key: str, value: str) -> None:
    path = bundle / "site.toml"
    lines = [x for x in path.read_text().splitlines() if not x.startswith(f"{key} =")]
    path.write_text("\n".join(lines) + f"\n{key} = {value}\n")


# ---------------------------------------------------------------- identifiers, dates, free text

FINE = {
    "summary by subject": 'name = "a"\nkind = "summary"\nby = "USUBJID"\n',
    "km by subject": 'name = "a"\nkind = "km"\nparam = "COVID"\nby = "USUBJID"\n',
    "log-rank by subject, many strata": (
        'name = "a"\nkind = "logrank"\nparam = "COVID"\nby = "USUBJID"\n'
        'strata = ["TRT01P", "AGE", "SEX", "RANDDT", "SITE"]\n'
    ),
    "log-rank stratified by age": (
        'name = "a"\nkind = "logrank"\nparam = "COVID"\nby = "TRT01P"\nstrata = ["AGE"]\n'
    ),
    "cox on the subject id": (
        'name = "a"\nkind = "cox"\nparam = "COVID"\ncovariates = ["USUBJID"]\n'
    ),
    "cox stratified by subject": (
        'name = "a"\nkind = "cox"\nparam = "COVID"\ncovariates = ["AGE"]\nstrata = ["USUBJID"]\n'
    ),
    "cox on a date": 'name = "a"\nkind = "cox"\nparam = "COVID"\ncovariates = ["RANDDT"]\n',
}


@pytest.mark.parametrize("attack", sorted(FINE))
def test_identifier_date_and_fine_variables_are_refused(sites: list[Path], attack: str) -> None:
    plan = _plan("[[analysis]]\n" + FINE[attack])
    transport = InProcessTransport(sites)
    outcome = run_plan(plan, transport)
    result = outcome.analyses["a"]
    assert result["refused"] is True
    assert {r["rule"] for r in result["refusals"]} == {"identifier"}
    assert {r["site"] for r in result["refusals"]} == {p.name for p in sites}
    for bundle in sites:
        (entry,) = _entries(bundle)
        assert entry["refused"] == {"a": "identifier"}
        assert entry["released"] == {}  # nothing of the refused analysis left


def test_no_subject_identifier_ever_leaves_a_site(sites: list[Path]) -> None:
    text = "".join(
        "[[analysis]]\n" + body.replace('"a"', f'"a{i}"') for i, body in enumerate(FINE.values())
    )
    transport = InProcessTransport(sites)
    plan = _plan(text + '[[analysis]]\nname = "ok"\nkind = "km"\nparam = "COVID"\nby = "TRT01P"\n')
    outcome = run_plan(plan, transport)
    assert not outcome.analyses["ok"].get("refused")
    for bundle in sites:
        reply = serve(bundle, request(plan, 1, {}))
        assert "DEMO-VAX-" not in json.dumps(reply, default=str)


# ---------------------------------------------------------------- small groups and counts


def _released_counts_ok(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for field in ("n_event", "n_censored"):
            counts = np.asarray(row[field])
            small = counts[(counts > 0) & (counts < K)]
            # at most one remainder per kind, at the table's last release (see
            # analysis.disclosure.release_indices)
            assert small.size <= 1, (row["key"], field, counts)
        assert sum(row["n_event"]) + sum(row["n_censored"]) >= K


def test_every_released_group_and_count_holds_at_least_k(sites: list[Path]) -> None:
    plan = Path(__file__).resolve().parents[1] / "experiments" / "plans" / "demo_vaccine.toml"
    text = plain(plan.read_text())  # the demo plan asks for secure aggregation
    for bundle in sites:
        reply = serve(bundle, request(parse_plan(text), 1, {}))
        assert reply["ok"]
        answers = reply["reply"]["answers"]
        _released_counts_ok(answers["km"])
        _released_counts_ok(answers["logrank"])
        for arm, item in answers["table1"]["arms"].items():
            assert item["n"] >= K, arm
            for cells in (item["sex"], item["events"], item["censored"]):
                assert all(v == 0 or v >= K for v in cells.values()), (arm, cells)
        for model in ("cox", "ve"):
            assert answers[model]["n"] >= K


def test_groups_below_k_are_left_out_and_named(sites: list[Path]) -> None:
    adsl = sites[0] / "adsl.csv"
    lines = adsl.read_text().splitlines()
    header = lines[0].split(",")
    sex = header.index("SEX")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows[:3]:  # three subjects of another sex level: a group below k
        row[sex] = "U"
    adsl.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    reply = _ask(sites[0], '[[analysis]]\nname = "k"\nkind = "km"\nparam = "COVID"\nby = "SEX"\n')
    keys = [row["key"] for row in reply["reply"]["answers"]["k"]]
    assert ["U"] not in keys and ["F"] in keys
    notes = [n["change"] for n in reply["reply"]["disclosure"]]
    assert any("group (U): fewer than 5 subjects, left out" in n for n in notes)
    summary = _ask(sites[0], '[[analysis]]\nname = "t"\nkind = "summary"\nby = "SEX"\n')
    assert "U" not in summary["reply"]["answers"]["t"]["arms"]


# ---------------------------------------------------------------- messages no plan derives


def test_hand_made_messages_are_refused_and_audited(sites: list[Path]) -> None:
    bundle = sites[0]
    body = (
        '[[analysis]]\nname = "c"\nkind = "cox"\nparam = "COVID"\n'
        'covariates = ["TRT01P"]\nstrata = ["SITE"]\n'
    )
    plan = _plan(body)
    legacy = {
        "round": 1,
        "cox_local": [
            {
                "id": "x",
                "kind": "cox",
                "param": "COVID",
                "model": {"filter": {"USUBJID": "DEMO-VAX-JP01-0001"}},
            }
        ],
    }
    forged_hash = {**request(plan, 1, {}), "plan_sha256": "0" * 64}
    unknown_model = request(
        plan, 2, {"countries": ["JP", "KR"], "models": {"probe": {"beta": [0.0]}}}
    )
    other_country = request(
        _plan(
            body.replace('kind = "cox"', 'kind = "ve"').replace(
                'covariates = ["TRT01P"]', 'reference = { TRT01P = "Placebo" }'
            )
        ),
        2,
        {"countries": ["JP", "KR"], "models": {"c@KR": {"beta": [0.0]}}},
    )
    no_country = request(plan, 2, {"countries": ["KR"], "models": {"c": {"beta": [0.0]}}})
    expected = [
        (legacy, "request"),
        (forged_hash, "plan"),
        (unknown_model, "plan"),
        (other_country, "plan"),
        (no_country, "state"),
    ]
    for message, rule in expected:
        reply = serve(bundle, message)
        assert not reply["ok"] and reply["rule"] == rule, (rule, reply)
    entries = _entries(bundle)
    assert [e["outcome"] for e in entries] == ["refused"] * len(expected)
    assert [e["rule"] for e in entries] == [rule for _, rule in expected]


def test_a_relabelled_kind_is_refused_by_the_kind_the_plan_declares(sites: list[Path]) -> None:
    bundle = sites[0]
    _set_policy(bundle, "allowed_analyses", '["summary"]')
    # an event-table query labelled "summary": the site reads the kind from the plan itself
    body = (
        '[[analysis]]\nname = "summary"\nkind = "km"\nparam = "COVID"\nby = "TRT01P"\n'
        '[[analysis]]\nname = "t"\nkind = "summary"\n'
    )
    reply = _ask(bundle, body)
    assert reply["ok"]
    assert reply["reply"]["refused"]["summary"]["rule"] == "allowed_analyses"
    assert set(reply["reply"]["answers"]) == {"t"}


# ---------------------------------------------------------------- coefficient probes


COX = (
    '[run]\nmax_rounds = 4\n[[analysis]]\nname = "c"\nkind = "cox"\nparam = "COVID"\n'
    'covariates = ["TRT01P", "AGE"]\nreference = { TRT01P = "Placebo" }\nstrata = ["SITE"]\n'
)
LEVELS = {"TRT01P": ["Placebo", "Vaccine"]}


def _evaluate(bundle: Path, beta: list[float], body: str = COX) -> dict:
    state = {"countries": ["JP", "KR"], "models": {"c": {"levels": LEVELS, "beta": beta}}}
    return _ask(bundle, body, 2, state)


def _refused(reply: dict) -> str:
    assert reply["ok"]
    return reply["reply"]["refused"].get("c", {}).get("rule", "")


def test_extreme_far_and_too_many_coefficient_vectors_are_refused(sites: list[Path]) -> None:
    bundle = sites[0]
    assert _refused(_evaluate(bundle, [50.0, 0.0])) == "coefficients"  # one arm singled out
    assert _refused(_evaluate(bundle, [0.0, 1.0])) == "coefficients"  # 1 per year of age
    assert _refused(_evaluate(bundle, [0.0, 0.0])) == ""
    assert _refused(_evaluate(bundle, [-1.0, 0.01])) == ""
    assert _refused(_evaluate(bundle, [-9.0, 0.0])) == "coefficients"  # a jump, not a step
    assert _refused(_evaluate(bundle, [-1.5, 0.02])) == ""
    assert _refused(_evaluate(bundle, [-1.6, 0.02])) == ""
    # max_rounds = 4 distinct points per model and plan; a point seen before is answered again
    assert _refused(_evaluate(bundle, [-1.7, 0.02])) == "coefficients"
    assert _refused(_evaluate(bundle, [0.0, 0.0])) == ""
    entries = _entries(bundle)
    assert entries[0]["asked"][0]["beta"] == [50.0, 0.0]  # the probe is on record
    assert entries[0]["refused"] == {"c": "coefficients"}


def test_a_fine_risk_set_grid_learns_nothing_beyond_round_one(sites: list[Path]) -> None:
    bundle = sites[0]
    body = COX.replace('strata = ["SITE"]', "strata = []")
    first = _ask(bundle, body)["reply"]["answers"]
    (released,) = first["grid:COVID:"]
    table = EventTable(released["time"], released["n_event"], released["n_censored"])
    grid = np.arange(0.0, float(table.time.max()) + 1.0)  # every day
    state: dict[str, Any] = {
        "countries": ["JP", "KR"],
        "models": {
            "c": {
                "levels": LEVELS,
                "beta": [0.0, 0.0],
                "center": [0.0, 0.0],
                "grids": [{"key": [], "time": grid}],
            }
        },
    }
    reply = _ask(bundle, body, 2, state)
    assert _refused(reply) == ""
    moments = reply["reply"]["answers"]["c"]
    r0 = np.asarray(moments["r0"])  # at beta = 0: the number at risk on the coordinator's grid
    np.testing.assert_array_equal(r0, at_risk_at(table, grid))
    # a grid that leaves out a released event time is refused (and audited), never an error
    event_times = table.time[table.n_event > 0]
    state["models"]["c"]["grids"] = [{"key": [], "time": np.setdiff1d(grid, event_times[:1])}]
    assert _refused(_ask(bundle, body, 2, state)) == "state"


@pytest.mark.parametrize(
    "point",
    [
        {"levels": LEVELS, "beta": "abc"},
        {"levels": 5, "beta": [0.0, 0.0]},
        {"levels": {"TRT01P": ["Vaccine"]}, "beta": [0.0, 0.0]},
        {"levels": LEVELS, "beta": [[0.0], [1.0]]},
        "not a table",
    ],
)
def test_malformed_state_is_a_refusal_not_an_error(sites: list[Path], point: Any) -> None:
    bundle = sites[0]
    state = {"countries": ["JP", "KR"], "models": {"c": point}}
    reply = _ask(bundle, COX, 2, state)
    assert reply["ok"] and "c" in reply["reply"]["refused"]
    assert reply["reply"]["answers"] == {}
    assert _entries(bundle)[-1]["refused"] == {"c": reply["reply"]["refused"]["c"]["rule"]}


# ---------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("min_cel_count = 5", "unknown key 'min_cel_count' (did you mean 'min_cell_count'?)"),
        ('allowed_analysis = ["km"]', "did you mean 'allowed_analyses'?"),
        ('allowed_analyses = "ve"', 'allowed_analyses must be a list of analysis kinds or "any"'),
        ('publish_site_estimates = "no"', "publish_site_estimates must be true or false"),
        ("min_cell_count = 2.5", "min_cell_count must be an integer in [0, 1000]"),
        ('approved_plans = ["abc"]', "approved_plans must be a list of SHA-256"),
    ],
)
def test_a_wrong_policy_fails_closed(
    sites: list[Path], line: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = sites[0]
    key = line.split(" =")[0]
    _set_policy(bundle, key, line.split("= ", 1)[1])
    assert main(["site", "check", str(bundle)]) == 2
    assert message in capsys.readouterr().err
    reply = serve(bundle, request(_plan('[[analysis]]\nname = "t"\nkind = "summary"\n'), 1, {}))
    assert not reply["ok"] and reply["rule"] == "data"  # the site answers nothing


def test_only_approved_plans_are_answered(sites: list[Path], tmp_path: Path) -> None:
    bundle = sites[0]
    body = '[[analysis]]\nname = "t"\nkind = "summary"\n'
    _set_policy(bundle, "approved_plans", "[]")
    reply = _ask(bundle, body)
    assert not reply["ok"] and reply["rule"] == "approved_plans"
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(HEAD + body + "# a comment is not content\n")
    assert main(["site", "approve", str(bundle), str(plan_file)]) == 0
    assert _ask(bundle, body)["ok"]
    other = _ask(bundle, body + 'by = "SEX"\n')
    assert not other["ok"] and other["rule"] == "approved_plans"


def test_a_site_estimate_leaves_only_where_published(sites: list[Path]) -> None:
    bundle = sites[0]
    assert "fit" in _ask(bundle, COX)["reply"]["answers"]["c"]
    _set_policy(bundle, "publish_site_estimates", "false")
    reply = _ask(bundle, COX)["reply"]
    assert "fit" not in reply["answers"]["c"]
    assert {n["rule"] for n in reply["disclosure"]} == {"publish_site_estimates"}


def test_a_plan_for_other_sites_is_refused(sites: list[Path]) -> None:
    body = '[[analysis]]\nname = "t"\nkind = "summary"\n'
    plan = parse_plan('[study]\nid = "X"\nsites = ["KR01"]\n\n' + body)
    reply = serve(sites[0], request(plan, 1, {}))
    assert not reply["ok"] and reply["rule"] == "sites"
