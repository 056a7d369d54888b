"""Every reply a site sends is in its hash-chained audit log; tampering is detected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.plan import parse_plan
from experiments.cli import main
from federation.inprocess import InProcessTransport
from federation.protocol import run_plan
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


def test_every_reply_is_audited_and_the_chain_verifies(tmp_path: Path) -> None:
    bundles = _sites(tmp_path)
    transport = InProcessTransport(bundles)
    outcome = run_plan(parse_plan(PLAN), transport)
    for node, bundle in enumerate(bundles):
        log = default_audit_log(bundle)
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(entries) == outcome.rounds
        assert [e["round"] for e in entries] == list(range(1, outcome.rounds + 1))
        assert {q["analysis"] for q in entries[0]["queries"]} == {"km", "c"}
        sent = transport.sent[0][node]
        assert entries[0]["request_sha256"] == payload_digest(sent)
        assert all(e["outcome"] == "answered" and e["site"] == f"S{node + 1}" for e in entries)
        assert verify(log).ok and verify(log).entries == outcome.rounds


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


def test_refusals_are_audited_too(tmp_path: Path) -> None:
    bundle = _sites(tmp_path)[0]
    request = {
        "round": 1,
        "event_tables": [{"id": "x", "analysis": "x", "kind": "km", "param": "NOPE", "by": []}],
    }
    reply = serve(bundle, request)
    assert not reply["ok"] and "PARAMCD 'NOPE'" in reply["error"]
    (entry,) = [json.loads(x) for x in default_audit_log(bundle).read_text().splitlines()]
    assert entry["outcome"] == "refused"


def test_an_unwritable_audit_path_fails_closed(tmp_path: Path) -> None:
    bundle = _sites(tmp_path)[0]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    reply = serve(bundle, {"round": 1}, audit_log=blocker / "audit.jsonl")
    assert not reply["ok"] and "cannot write the audit log" in reply["error"]
