"""Every request a site answers or refuses is in its hash-chained audit log, which records what
was derived and what left; tampering, cutting, emptying and restarting are detected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.plan import parse_plan
from experiments.cli import main
from federation.inprocess import InProcessTransport
from federation.protocol import request, run_plan
from sites.audit import payload_digest, verify
from sites.node import default_audit_log, serve
from tests import datasets

PLAN = """
[study]
id = "A"

[[analysis]]
name = "km"
kind = "km"
param = "OS"
by = "TRT01P"

[[analysis]]
name = "c"
kind = "cox"
param = "OS"
covariates = ["TRT01P", "AGE"]
reference = { TRT01P = "A" }
strata = ["SITE"]
"""


def _sites(tmp_path: Path) -> list[Path]:
    return datasets.bundles_from_frame(
        datasets.toy([30, 30, 30], seed=11),
        tmp_path,
        site="site",
        time="time",
        event="event",
        arm="ARM",
    )


def _entries(bundle: Path) -> list[dict]:
    return [json.loads(x) for x in default_audit_log(bundle).read_text().splitlines()]


def test_every_reply_is_audited_with_what_was_derived_and_what_left(tmp_path: Path) -> None:
    bundles = _sites(tmp_path)
    transport = InProcessTransport(bundles)
    plan = parse_plan(PLAN)
    outcome = run_plan(plan, transport)
    for node, bundle in enumerate(bundles):
        entries = _entries(bundle)
        assert len(entries) == outcome.rounds
        assert [e["round"] for e in entries] == list(range(1, outcome.rounds + 1))
        assert [e["index"] for e in entries] == list(range(1, outcome.rounds + 1))
        first = entries[0]
        assert first["plan_sha256"] == plan.sha256 and first["study"] == "A"
        # the site records the queries it derived from the plan, not labels it was sent
        assert {q.get("query") for q in first["asked"]} == {"km", "c"}
        assert {"query": "km", "op": "event_table", "param": "OS", "by": ["TRT01P"]} in (
            first["asked"]
        )
        # what left: a digest and a size per answer
        assert set(first["released"]) == {"km", "c"}
        assert all(len(r["sha256"]) == 64 and r["numbers"] > 0 for r in first["released"].values())
        # a Cox round records the model and the coefficient vector evaluated
        later = entries[1]
        (asked,) = later["asked"]
        assert asked["model"] == "c" and len(asked["beta"]) == 2
        assert entries[0]["request_sha256"] == payload_digest(transport.sent[0][node])
        assert all(e["outcome"] == "answered" and e["site"] == f"S{node + 1}" for e in entries)
        assert verify(default_audit_log(bundle)).ok
        # the run's results name each site's chain head and entry count
        (site,) = [s for s in outcome.sites if s["id"] == f"S{node + 1}"]
        assert site["audit"] == {"head": entries[-1]["hash"], "entries": outcome.rounds}


def test_tampering_is_detected_and_reported_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundles = _sites(tmp_path)
    run_plan(parse_plan(PLAN), InProcessTransport(bundles))
    assert main(["site", "audit", str(bundles[0])]) == 0
    assert "hash chain intact" in capsys.readouterr().out

    log = default_audit_log(bundles[0])
    lines = log.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["outcome"] = "refused"
    log.write_text("\n".join([lines[0], json.dumps(edited, sort_keys=True), *lines[2:]]) + "\n")
    assert main(["site", "audit", str(bundles[0])]) == 1
    assert "line 2: entry was altered" in capsys.readouterr().err

    log.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # an entry removed
    report = verify(log)
    assert not report.ok and "line 2: chain broken" in report.problem


@pytest.mark.parametrize("damage", ["cut", "emptied", "deleted", "restarted"])
def test_a_log_cut_emptied_or_restarted_since_a_run_is_detected(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bundles = _sites(tmp_path)
    outcome = run_plan(parse_plan(PLAN), InProcessTransport(bundles))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"sites": outcome.sites, "sites_missing": []}))
    command = ["site", "audit", str(bundles[0]), "--against", str(results)]
    assert main(command) == 0
    assert "is the one" in capsys.readouterr().out
    log = default_audit_log(bundles[0])
    lines = log.read_text().splitlines()
    if damage == "cut":  # the last entries removed: the chain itself still verifies
        log.write_text("\n".join(lines[:-2]) + "\n")
        assert verify(log).ok
    elif damage == "emptied":
        log.write_text("")
    elif damage == "deleted":
        log.unlink()
    else:  # deleted and started again: a fresh, valid chain of the same length
        log.unlink()
        run_plan(parse_plan(PLAN), InProcessTransport(bundles))
        assert verify(log).ok and verify(log).entries == len(lines)
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "FAILED verification" in err
    assert ("restarted" in err) if damage == "restarted" else ("cut short" in err or "gone" in err)


def test_refusals_are_audited_too(tmp_path: Path) -> None:
    bundle = _sites(tmp_path)[0]
    plan = parse_plan(PLAN.replace('param = "OS"\nby', 'param = "NOPE"\nby'))
    reply = serve(bundle, request(plan, 1, {}))
    assert reply["ok"]
    assert reply["reply"]["refused"]["km"]["rule"] == "plan"
    assert "PARAMCD 'NOPE'" in reply["reply"]["refused"]["km"]["message"]
    (entry,) = _entries(bundle)
    assert entry["outcome"] == "answered" and entry["refused"] == {"km": "plan"}
    assert set(entry["released"]) == {"c"}  # the refused analysis released nothing
    # a request no plan derives is refused whole, and audited
    reply = serve(bundle, {"round": 1, "event_tables": [{"param": "OS", "by": ["USUBJID"]}]})
    assert not reply["ok"] and reply["rule"] == "request"
    assert _entries(bundle)[-1]["outcome"] == "refused"
    assert reply["audit"]["entries"] == 2


def test_an_unwritable_audit_path_fails_closed(tmp_path: Path) -> None:
    bundle = _sites(tmp_path)[0]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    reply = serve(bundle, {"round": 1}, audit_log=blocker / "audit.jsonl")
    assert not reply["ok"] and "cannot write the audit log" in reply["error"]
