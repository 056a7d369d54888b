"""Secure aggregation in a real deployment on 127.0.0.1: one SuperLink and three SuperNodes with
TLS and site authentication (the federation of tests/test_deployment.py, started afresh here).

The deployed secure run equals the secure simulation of the same plan on the same bundles, and
both equal the plain run with the disclosure rules off (Table 1 aside: the coordinator suppresses
pooled cells below k there); every secure round covers all three sites. The plan is the
deployment test's without its Cox model: a deployed secure round is four Flower round trips, about
9 s each on loopback (3 s polling at both ends, a ClientApp process per message), so the Cox
iteration is left to the simulation tests (tests/test_secure.py) to keep this test near a minute.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from analysis.base import json_safe
from analysis.plan import parse_plan
from federation.inprocess import InProcessTransport
from federation.protocol import run_plan
from tests.deployment_fed import Federation, build_federation, start_federation, tail
from tests.secure_helpers import compare, secure, set_policy
from tests.test_deployment import PLAN as DEPLOY_PLAN

PLAN = DEPLOY_PLAN[: DEPLOY_PLAN.index('[[analysis]]\nname = "cox"')]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = build_federation(tmp_path_factory.mktemp("secure-deploy"))
    try:
        yield start_federation(federation)
    finally:
        federation.stop_all()


def test_deployed_secure_run_equals_the_simulation_and_the_plain_exact_run(
    fed: Federation,
) -> None:
    text = secure(PLAN.format(min_sites=0, round_timeout=60))
    plan = fed.tmp / "secure.toml"
    plan.write_text(text)
    out = str(fed.tmp / "secure-dep")
    dep = fed.run_cli("run", str(plan), "--coordinator", fed.control_address, "--ca",
                      str(fed.ca), "--out", out, "--no-tracking")  # fmt: skip
    logs = "\n".join(tail(p) for p in fed.logs())
    assert dep.returncode == 0, f"{dep.stderr[-4000:]}\n{logs}"
    sim = fed.run_cli("run", str(plan), "--sites", *map(str, fed.bundles),
                      "--out", str(fed.tmp / "secure-sim"), "--no-tracking")  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-4000:]
    d = json.loads((fed.tmp / "secure-dep" / "results.json").read_text())
    s = json.loads((fed.tmp / "secure-sim" / "results.json").read_text())
    assert d["engine"] == "deployment" and d["sites_missing"] == []
    assert d["analyses"] == s["analyses"]  # the same sums, bit for bit
    rounds = d["secure_aggregation"]["rounds"]
    assert len(rounds) == d["rounds"] - 1
    assert all(sorted(r["sites"]) == sorted(fed.site_ids) for r in rounds)
    exact_sites = fed.tmp / "exact"
    for bundle in fed.bundles:
        shutil.copytree(bundle, exact_sites / bundle.name, ignore=shutil.ignore_patterns(".*"))
    bundles = set_policy(
        sorted(exact_sites.iterdir()), "min_cell_count = 0\npublish_site_estimates = true\n"
    )
    exact = run_plan(
        parse_plan(PLAN.format(min_sites=0, round_timeout=60)), InProcessTransport(bundles)
    )
    exact_json = json_safe(exact.analyses)
    names = ("km", "logrank")
    worst = compare({k: exact_json[k] for k in names}, {k: d["analyses"][k] for k in names})
    assert max(worst.values()) <= 1e-9, worst
    pooled = [n for n in d["disclosure"] if n["site"] == "pooled"]
    assert all(n["analysis"] == "table1" for n in pooled)
