"""Federated training end to end through Flower's strategies and the sites' handlers.

Most tests use :class:`federation.local_grid.LocalGrid` (Flower's strategies, messages and
protobuf encoding, ClientApp handlers, no engine); the slow test runs Flower's simulation engine
and checks it gives the same weights bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from statsmodels.duration.hazard_regression import PHReg

from analysis import cox
from analysis.data import SurvivalData
from analysis.privacy import gaussian_epsilon
from analysis.rounds import train_spec_from_plan
from federation.local_grid import LocalGrid
from federation.training import TrainingFailed, run_training
from federation.training_client import training_client_app
from federation.training_outcome import TrainingOutcome
from sites.bundle import load_bundle
from sites.training import site_stats, split
from tests.training_helpers import (
    POLICY,
    ROSSI_FEATURES,
    run_local,
    set_policy,
    train_plan,
    write_bundles,
    write_rossi_sites,
)

TOLERANCE = 1e-6
"""Federated gradient descent vs the Newton answer: max abs difference of coefficients."""


@pytest.fixture(scope="module")
def rossi(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_rossi_sites(tmp_path_factory.mktemp("rossi"))


@pytest.fixture(scope="module")
def drug(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_bundles(tmp_path_factory.mktemp("drug"))


def test_federated_linear_cox_equals_pooled_newton(rossi: list[Path]) -> None:
    """FedAvg with one full-batch step per round is gradient descent on the site-stratified
    Breslow likelihood of the pooled training rows: it reaches that model's Newton answer."""
    plan = train_plan(
        param="ARREST", features=ROSSI_FEATURES, rounds=150, lr=1.0, test_fraction=0.2
    )
    outcome, _ = run_local(rossi, plan)
    ours = np.asarray(list(outcome.coefficients().values()))  # type: ignore[union-attr]

    spec = train_spec_from_plan(plan, "risk")
    parts = [split(load_bundle(b), spec).train for b in rossi]
    designs = [outcome.encoder.encode(p.covariates) for p in parts]
    x = np.vstack(designs)
    time = np.concatenate([p.time for p in parts])
    event = np.concatenate([p.event for p in parts])
    strata = np.concatenate([np.full(p.n, k) for k, p in enumerate(parts)])
    pooled = PHReg(time, x, status=event, strata=strata, ties="breslow").fit().params
    assert np.max(np.abs(ours - pooled)) < TOLERANCE

    # the survival engine's federated Newton Cox on the same design columns
    names = [f"c{j}" for j in range(x.shape[1])]
    encoded = [
        SurvivalData(
            p.time, p.event, {**dict(zip(names, d.T, strict=True)), "SITE": p.covariates["SITE"]}
        )
        for p, d in zip(parts, designs, strict=True)
    ]
    newton = cox.fit_federated(encoded, names, strata=["SITE"], ties="breslow", tolerance=1e-12)
    assert np.max(np.abs(ours - np.asarray(newton.coef))) < TOLERANCE
    assert 0.55 < outcome.final["combined"]["harrell_c"] < 0.75


def test_same_seed_same_model_bit_for_bit(drug: list[Path]) -> None:
    plan = train_plan(
        model="deepsurv",
        hidden=[8, 4],
        strategy="fedadam",
        server_lr=0.05,
        optimizer="adam",
        lr=0.01,
        batch_size=64,
        local_epochs=2,
        rounds=3,
        seed=5,
    )
    first, _ = run_local(drug, plan)
    again, _ = run_local(drug, plan)
    other, _ = run_local(drug, plan.replace("seed = 5", "seed = 6"))
    assert list(first.state) == list(again.state)
    assert all(first.state[k].tobytes() == again.state[k].tobytes() for k in first.state)
    assert first.history == again.history
    assert any(first.state[k].tobytes() != other.state[k].tobytes() for k in first.state)


def _coefficients(outcome: TrainingOutcome) -> dict[str, float]:
    found = outcome.coefficients()
    assert found is not None, "a linear model has coefficients"
    return found


def test_strategies_and_history(drug: list[Path]) -> None:
    variants: dict[str, dict[str, Any]] = {
        "fedavg": {},
        "fedavg3": {"local_epochs": 3},
        "fedprox": {"strategy": "fedprox", "proximal_mu": 1.0, "local_epochs": 3},
        "fedadam": {"strategy": "fedadam"},
    }
    runs = {name: run_local(drug, train_plan(rounds=4, **keys)) for name, keys in variants.items()}
    coefs = {k: np.asarray(list(_coefficients(o).values())) for k, (o, _) in runs.items()}
    assert not np.allclose(coefs["fedavg"], coefs["fedadam"])
    outcome, grid = runs["fedavg"]
    assert [h["round"] for h in outcome.history] == [1, 2, 3, 4]
    final = outcome.final
    assert set(final["sites"]) == {"JP01", "JP02", "KR01"}
    for site in final["sites"].values():
        assert {"harrell_c", "uno_c", "ibs", "train_loss", "test_loss"} <= set(site)
    combined = final["combined"]
    n = {s: v["n_test"] for s, v in final["sites"].items()}
    weighted = sum(final["sites"][s]["ibs"] * n[s] for s in n) / sum(n.values())
    assert combined["ibs"] == pytest.approx(weighted, rel=1e-12)
    assert (
        outcome.history[-1]["combined"]["train_loss"] < outcome.history[0]["combined"]["train_loss"]
    )
    # bytes counted by the supervisor: every site received and sent something each round
    assert all(b["to_site"] > 0 and b["from_site"] > 0 for b in outcome.bytes.values())
    assert sum(grid.bytes_up.values()) > sum(b["from_site"] for b in outcome.bytes.values())
    doc = outcome.to_dict()
    assert doc["kind"] == "train" and doc["privacy"] is None
    assert doc["final"]["combined"]["harrell_c"] == combined["harrell_c"]
    # FedProx's mu travels to the sites: a strong pull keeps the weights near the start
    assert np.linalg.norm(coefs["fedprox"]) < np.linalg.norm(coefs["fedavg3"])


def test_logistic_landmark_model(drug: list[Path]) -> None:
    outcome, _ = run_local(drug, train_plan(model="logistic", landmark=365.0, rounds=3))
    combined = outcome.final["combined"]
    assert 0 < combined["brier"] < 0.5
    assert "ibs" not in combined
    assert "(intercept)" in outcome.coefficients()  # type: ignore[operator]


def test_site_that_does_not_allow_train_refuses(tmp_path: Path) -> None:
    bundles = write_bundles(tmp_path)
    set_policy(bundles[1], '[policy]\nallowed_analyses = ["km", "cox"]\n')
    with pytest.raises(TrainingFailed) as info:
        run_local(bundles, train_plan())
    text = str(info.value)
    assert "site JP02 refuses analysis 'risk'" in text
    assert "allowed_analyses" in text


def test_training_statistics_obey_the_disclosure_rules(tmp_path: Path) -> None:
    """Under min_cell_count the training split's event table (for the federated censoring KM)
    leaves on the rules' coarser grid, every released count 0 or at least k, with the totals
    unchanged, and the results say what the rule changed, site by site."""
    bundles = write_bundles(tmp_path)
    k = 5
    set_policy(bundles[0], POLICY.replace("min_cell_count = 0", f"min_cell_count = {k}"))
    spec = train_spec_from_plan(train_plan(), "risk", "plan")
    bundle = load_bundle(bundles[0])
    exact = split(bundle, spec).train
    stats = site_stats(bundle, spec)
    events = np.asarray(stats["event_table"]["n_event"])
    censored = np.asarray(stats["event_table"]["n_censored"])
    assert all(c == 0 or c >= k for c in [*events, *censored])
    assert events.sum() == exact.event.sum() and events.sum() + censored.sum() == exact.n
    assert len(events) < np.unique(exact.time).size  # coarser than the exact times
    assert stats["disclosure"][0]["rule"] == "min_cell_count"
    outcome, _ = run_local(bundles, train_plan())
    assert outcome.disclosure, "the coarsening is reported"
    assert {n["site"] for n in outcome.disclosure} == {bundle.site_id}
    assert all(n["analysis"] == "risk" for n in outcome.disclosure)
    assert outcome.to_dict()["disclosure"] == outcome.disclosure


def test_site_approve_previews_what_training_would_take(tmp_path: Path) -> None:
    """`trialfed site approve --dry-run` lists a train analysis: the statistics round computed
    by the site's own handler on its data (sizes, numbers, what the rules changed) and what each
    round sends; a site whose policy does not allow training sees the refusal instead."""
    from analysis.plan import parse_plan
    from experiments.site_approve import preview
    from sites.audit import count_numbers

    bundles = write_bundles(tmp_path)
    set_policy(bundles[0], POLICY.replace("min_cell_count = 0", "min_cell_count = 5"))
    set_policy(bundles[1], '[policy]\nallowed_analyses = ["km", "cox"]\n')
    text = train_plan(strategy="fedadam", rounds=7)
    plan = parse_plan(text)
    spec = train_spec_from_plan(text, "risk", "plan")
    lines = preview(load_bundle(bundles[0]), plan)
    stats = site_stats(load_bundle(bundles[0]), spec)
    statistics = next(line for line in lines if line.startswith("  [risk] statistics"))
    assert f"({stats['n_train']} / {stats['n_test']})" in statistics
    assert statistics.endswith(f": {count_numbers(stats)} numbers")
    exact = split(load_bundle(bundles[0]), spec).train
    events, times = int(exact.event.sum()), len(stats["event_table"]["time"])
    change = (
        f"group (training split): {events} events and {exact.n - events} censorings released "
        f"at {times} of {np.unique(exact.time).size} distinct times"
    )
    assert f"    risk: min_cell_count: {change}" in lines
    assert any("each of 7 rounds (fedadam, model cox-linear)" in line for line in lines)
    refused = preview(load_bundle(bundles[1]), plan)
    assert any(
        line.startswith("  [risk] REFUSED") and "allowed_analyses" in line for line in refused
    )


def test_training_is_held_to_the_sites_the_rounds_pooled(tmp_path: Path) -> None:
    """A node that answers the training statistics as another site than the one it answered
    the analysis rounds as is not pooled: the run fails naming it."""
    bundles = write_bundles(tmp_path)
    grid = LocalGrid(training_client_app(), [{"bundle": str(b)} for b in bundles])
    nodes = sorted(grid.get_node_ids())
    ids = [load_bundle(b).site_id for b in bundles]
    swapped = {ids[0]: nodes[1], ids[1]: nodes[0], ids[2]: nodes[2]}
    with pytest.raises(TrainingFailed, match=f"node of site {ids[0]} answered as {ids[1]}"):
        run_training(grid, train_plan(rounds=1), "risk", timeout=60, site_nodes=swapped)
    honest = dict(zip(ids, nodes, strict=True))
    outcome = run_training(grid, train_plan(rounds=1), "risk", timeout=60, site_nodes=honest)
    assert outcome.sites == sorted(ids)
    only_two = {ids[0]: nodes[0], ids[1]: nodes[1]}  # the third was not pooled in the rounds
    outcome = run_training(grid, train_plan(rounds=1), "risk", timeout=60, site_nodes=only_two)
    assert outcome.sites == sorted(ids[:2])


def test_dp_policy_and_accounting(tmp_path: Path) -> None:
    bundles = write_bundles(tmp_path)
    set_policy(bundles[0], POLICY + "require_dp_epsilon_max = 3.0\n")
    with pytest.raises(TrainingFailed, match="require_dp_epsilon_max = 3 requires differential"):
        run_local(bundles, train_plan())
    too_little = {"clip": 0.5, "noise_multiplier": 3.0, "delta": 1e-5}  # epsilon 3.38 > 3
    with pytest.raises(TrainingFailed, match=r"epsilon = 3.38 at delta = 1e-05 after 5 rounds"):
        run_local(bundles, train_plan(dp=too_little))

    enough = {"clip": 0.5, "noise_multiplier": 4.0, "delta": 1e-5}  # epsilon 2.45 <= 3
    outcome, _ = run_local(bundles, train_plan(dp=enough))
    assert outcome.privacy is not None
    assert outcome.privacy.epsilon == gaussian_epsilon(4.0, 5, 1e-5).epsilon
    assert outcome.to_dict()["privacy"]["epsilon"] == pytest.approx(2.4515, abs=1e-4)
    again, _ = run_local(bundles, train_plan(dp=enough))  # seeded noise: reproducible
    assert all(outcome.state[k].tobytes() == again.state[k].tobytes() for k in outcome.state)


def test_dp_clips_each_site_update(drug: list[Path]) -> None:
    """Flower's wrapper is in place: with a tiny clip and almost no noise, each round moves the
    weights by at most the clip norm (the mean of clipped updates), unlike plain FedAvg."""
    clip, rounds = 1e-3, 3
    dp = {"clip": clip, "noise_multiplier": 1e-9, "delta": 1e-5}
    clipped, _ = run_local(drug, train_plan(dp=dp, rounds=rounds))
    plain, _ = run_local(drug, train_plan(rounds=rounds))
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in clipped.state.values()))
    assert norm <= rounds * clip * (1 + 1e-6)
    assert math.sqrt(sum(float(np.sum(v**2)) for v in plain.state.values())) > 10 * rounds * clip


@pytest.mark.slow
def test_flower_simulation_engine_gives_the_same_model(drug: list[Path], tmp_path: Path) -> None:
    """Flower's Simulation Runtime (Ray backend, one virtual SuperNode per site, in a process of
    its own) runs the same ServerApp logic and ClientApp handlers: the weights equal the
    in-process run's bit for bit."""
    plan = train_plan(strategy="fedadam", rounds=3, seed=3)
    expected, _ = run_local(drug, plan)
    (tmp_path / "plan.toml").write_text(plan)
    cmd = [
        sys.executable,
        "-m",
        "tests.training_simulation",
        str(tmp_path),
        str(tmp_path / "plan.toml"),
    ]
    process = subprocess.Popen(
        [*cmd, *map(str, drug)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ray's daemons join this process group: stopped below
    )
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output[-4000:]
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["sites"] == expected.sites
    with np.load(tmp_path / "state.npz") as state:
        assert list(state) == list(expected.state)
        for key, value in expected.state.items():
            assert state[key].tobytes() == value.tobytes()
