"""Secure aggregation on Flower's simulation engine (issue 15): SecAgg+ between the real
ServerApp and ClientApps, the sites' code in the engine's worker processes.

A secure run equals the plain run with the disclosure rules off (k = 0: the pooled analysis,
itself checked against lifelines elsewhere) while the sites keep their default rules (k = 5):
counts exactly, Cox coefficients and standard errors to 1e-9. A recording coordinator keeps
every message it receives, and none holds a site's vector; the unmasked sum is the sum of the
vectors each site computes for its request. A site that drops out mid-round within SecAgg+'s
threshold leaves the others summed and is named; below the threshold the run fails, naming it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from analysis.fixedpoint import CLIPPING_RANGE
from analysis.plan import parse_plan
from experiments.synth import generate_trial, write_trial
from federation.exchange import RunFailed
from federation.flower_internals import bytes_to_ndarray
from federation.inprocess import InProcessTransport
from federation.protocol import run_plan
from federation.secure import REPLY_KEY, REQUEST_KEY, StageEvent, observe
from federation.simulation import run_simulated
from sites.node import default_audit_log, serve_secure
from tests.cdisc import split_cdisc_pilot
from tests.secure_helpers import compare, plain, secure, set_policy
from tests.test_secure_protocol import DEMO, EXACT, PILOT_PLAN, SECURE, STRICT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trial_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trial")
    write_trial(generate_trial("vaccine", subjects=3000, sites=6), out, "csv", 5)
    return out


def _copy(source: Path, target: Path, policy: str, count: int | None = None) -> list[Path]:
    shutil.copytree(source, target)
    return set_policy(sorted(target.iterdir())[:count], policy)


class Recorder:
    """Every message the coordinator sends and receives in the secure stages, and the sums."""

    def __init__(self) -> None:
        self.events: list[StageEvent] = []
        self.queries: list[StageEvent] = []  # plain round trips (round 1)

    def __call__(self, event: StageEvent) -> None:
        (self.queries if event.stage == "query" else self.events).append(event)

    def received(self) -> list[Message]:
        return [m for e in self.events for m in e.received]

    def rounds(self) -> list[list[StageEvent]]:
        """The events of each secure round (four stages, then the sum)."""
        out: list[list[StageEvent]] = [[]]
        for event in self.events:
            out[-1].append(event)
            if event.stage == "sum":
                out.append([])
        return out[:-1]


def _arrays(message: Message) -> list[np.ndarray]:
    """Every array a received message carries (array records, and bytes in config records)."""
    if message.has_error():
        return []
    found = [
        a.numpy() for record in message.content.array_records.values() for a in record.values()
    ]
    for record in message.content.config_records.values():
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bytes):
                    try:
                        found.append(bytes_to_ndarray(item))
                    except (ValueError, OSError):
                        continue  # a key, share or ciphertext: not an array
    return found


def _site_vectors(secure_round: list[StageEvent], bundles: dict[str, Path]) -> list[np.ndarray]:
    """Each site's vector for its request, recomputed by the site's code after the run."""
    collect = next(e for e in secure_round if e.stage == "collect_masked_vectors")
    requests = {
        m.metadata.dst_node_id: json.loads(
            str(m.content.config_records["fitins.config"][REQUEST_KEY])
        )
        for m in collect.sent
    }
    vectors = []
    for reply in collect.received:
        clear = json.loads(str(reply.content.config_records["fitres.metrics"][REPLY_KEY]))
        site = clear["reply"]["site"]["id"]
        vector, _ = serve_secure(bundles[site], requests[reply.metadata.src_node_id])
        assert vector is not None
        vectors.append(vector)
    return vectors


def test_secure_demo_equals_the_plain_run_and_the_coordinator_sees_no_site_vector(
    trial_dir: Path, tmp_path: Path
) -> None:
    text = plain(DEMO.read_text())
    exact = run_plan(
        parse_plan(text), InProcessTransport(_copy(trial_dir / "sites", tmp_path / "a", EXACT))
    )
    bundles = _copy(trial_dir / "sites", tmp_path / "b", SECURE)
    recorder = Recorder()
    with observe(recorder):
        secured = run_simulated(parse_plan(secure(text)), bundles)
    worst = compare(exact.analyses, secured.analyses)
    assert max(worst.values()) <= 1e-9, worst
    assert secured.rounds == exact.rounds  # round 2 sums round 1 and evaluates the Cox start
    rounds = recorder.rounds()
    assert len(rounds) == secured.rounds - 1 and len(recorder.queries) == 1
    by_id = {b.name: b for b in bundles}
    for secure_round in rounds:
        assert [e.stage for e in secure_round] == [
            "setup",
            "share_keys",
            "collect_masked_vectors",
            "unmask",
            "sum",
        ]
        vectors = _site_vectors(secure_round, by_id)
        assert len(vectors) == len(bundles)
        total = secure_round[-1].sums
        assert total is not None and np.array_equal(total, np.sum(vectors, axis=0).astype(np.int64))
        masked = 0
        for message in (m for e in secure_round for m in e.received):
            for array in _arrays(message):
                masked += array.shape == vectors[0].shape  # a masked vector
                for vector in vectors:
                    for plain_form in (vector, vector + CLIPPING_RANGE):
                        if array.shape == plain_form.shape:
                            assert np.mean(array == plain_form) < 0.01
        assert masked == len(bundles)  # one masked vector per site, nothing else of its size
    collect = [e for r in rounds for e in r if e.stage == "collect_masked_vectors"]
    assert all(
        not r.content.array_records["fitres.parameters"] for e in collect for r in e.received
    )


def test_secure_pilot_by_site_equals_the_plain_exact_run(cdisc_dir: Path, tmp_path: Path) -> None:
    plain_sites = set_policy(split_cdisc_pilot(cdisc_dir, tmp_path / "a"), EXACT)
    exact = run_plan(parse_plan(PILOT_PLAN), InProcessTransport(plain_sites))
    sites = set_policy(split_cdisc_pilot(cdisc_dir, tmp_path / "b"), SECURE)
    secured = run_simulated(parse_plan(secure(PILOT_PLAN)), sites)
    worst = compare(exact.analyses, secured.analyses)
    assert max(worst.values()) <= 1e-9, worst
    assert len(secured.secure["rounds"][0]["sites"]) == 17


def _break_audit_after(round_number: int, bundle: Path) -> Any:
    """A progress callback that makes ``bundle``'s audit log unwritable once round
    ``round_number`` ends: the site then fails mid-way through the next secure round (after it
    shared its keys), as a site that crashes does, and refuses to send anything unaudited."""

    def progress(line: str) -> None:
        if line.startswith(f"round {round_number}:"):
            log = default_audit_log(bundle)
            log.unlink()
            log.mkdir()  # appending to a folder fails, whoever runs the site

    return progress


def test_a_site_dropping_out_within_the_threshold_leaves_the_rest_summed(
    trial_dir: Path, tmp_path: Path
) -> None:
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT, count=4)
    text = secure(DEMO.read_text()).replace("min_sites = 0", "min_sites = 3")
    out = run_simulated(parse_plan(text), bundles, progress=_break_audit_after(2, bundles[1]))
    missing = out.sites_missing
    assert [m["id"] for m in missing] == [bundles[1].name]
    assert "round 3" in missing[0]["reason"] and "audit" in missing[0]["reason"]
    rest = [b.name for i, b in enumerate(bundles) if i != 1]
    assert out.secure["rounds"][1]["sites"] == rest
    assert out.analyses["cox"]["secure_aggregation"]["sites"] == rest
    assert out.analyses["cox"]["converged"]
    # the Cox model from round 3 on is the three remaining sites' model
    three = _copy(trial_dir / "sites", tmp_path / "c", EXACT, count=4)
    del three[1]
    exact = run_plan(parse_plan(plain(DEMO.read_text())), InProcessTransport(three))
    terms = out.analyses["cox"]["terms"]
    for term, row in exact.analyses["cox"]["terms"].items():
        assert abs(terms[term]["coef"] - row["coef"]) <= 1e-6


def test_a_dropout_below_the_threshold_fails_the_run_naming_the_site(
    trial_dir: Path, tmp_path: Path
) -> None:
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT, count=3)
    text = secure(DEMO.read_text()).replace("min_sites = 0", "min_sites = 2")
    with pytest.raises(RunFailed, match=rf"round 3: the secure sum failed.*{bundles[2].name}"):
        run_simulated(parse_plan(text), bundles, progress=_break_audit_after(2, bundles[2]))


def test_trialfed_run_writes_the_secure_results(trial_dir: Path, tmp_path: Path) -> None:
    bundles = _copy(trial_dir / "sites", tmp_path / "b", STRICT)
    plan = tmp_path / "plan.toml"
    plan.write_text(secure(DEMO.read_text()))
    out = tmp_path / "out"
    args = ["run", str(plan), "--sites", *map(str, bundles), "--out", str(out), "--no-tracking"]
    done = subprocess.run(
        [sys.executable, "-m", "experiments.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["secure_aggregation"]["time_grid"] == {"unit": 1.0, "end": 300.0}
    assert "secure sum over 6/6 sites" in done.stderr
    assert results["analyses"]["ve"]["ve"] > 0.5


def test_the_ray_backend_sums_securely_too(cdisc_dir: Path, tmp_path: Path) -> None:
    """Flower's Ray backend keeps each node's state between the four SecAgg+ stages as the
    process backend does: a secure run of `trialfed run --backend ray` equals the plain exact
    run (three CDISC pilot sites)."""
    three = ["701", "705", "708"]
    exact_sites = set_policy(split_cdisc_pilot(cdisc_dir, tmp_path / "a", sites=three), EXACT)
    exact = run_plan(parse_plan(PILOT_PLAN), InProcessTransport(exact_sites))
    sites = set_policy(split_cdisc_pilot(cdisc_dir, tmp_path / "b", sites=three), SECURE)
    plan = tmp_path / "plan.toml"
    plan.write_text(secure(PILOT_PLAN))
    out = tmp_path / "out"
    args = ["run", str(plan), "--sites", *map(str, sites), "--out", str(out), "--no-tracking"]
    done = subprocess.run(
        [sys.executable, "-m", "experiments.cli", *args, "--backend", "ray"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "secure sum over 3/3 sites" in done.stderr
    results = json.loads((out / "results.json").read_text())
    worst = compare(exact.analyses, results["analyses"])
    assert max(worst.values()) <= 1e-9, worst
