"""Process lifecycle and state of a deployment, on real processes (docs/deployment.md).

- Each stop signal (SIGTERM, SIGINT, SIGHUP) sent to a deployed ``trialfed run``, a
  ``trialfed site start`` and a ``trialfed coordinator start`` stops every process each started
  (every PID seen in its tree is gone), within a bounded time, with a final line; the stopped run
  is stopped at the coordinator and its MLflow run is KILLED. The same for ``trialfed ui``.
- One state, one coordinator: a second coordinator on the same state exits 2 naming the first
  one's PID; two coordinators with separate states on one machine never see each other's sites
  or runs.
- The example systemd units in docs/deployment.md parse, and their commands are valid
  ``trialfed`` command lines.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.cli import build_parser
from federation.deployment.processes import free_port
from tests.deployment_fed import (
    ONE_ROUND_PLAN,
    Federation,
    Proc,
    alive,
    build_federation,
    start_federation,
    tail,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
STOP_WITHIN_S = 30.0
STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
MANY_ROUNDS_PLAN = """
[study]
id = "STOP-TEST"
title = "a run stopped mid-way"

[run]
round_timeout = 60

[[analysis]]
name = "cox"
kind = "cox"
param = "COVID"
covariates = ["TRT01P", "AGE"]
reference = { TRT01P = "Placebo" }
"""


def _stop(proc: Proc, sig: signal.Signals) -> str:
    """Send ``sig``; the process must exit within the bound and leave no descendant alive."""
    proc.tree()
    started = time.monotonic()
    proc.send(sig)
    try:
        proc.popen.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{proc.name} still running after {sig.name}\n{tail(proc.log)}"
        ) from None
    took = time.monotonic() - started
    left = alive(proc.seen - {proc.popen.pid})
    assert not left, f"{proc.name}: {sig.name} left {sorted(left)} running\n{tail(proc.log)}"
    assert took < STOP_WITHIN_S
    return proc.text()


def _mlflow_status(fed: Federation, study: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(fed.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    return str(runs[0].info.status)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = build_federation(tmp_path_factory.mktemp("stop"), n_sites=1, subjects=300)
    try:
        yield start_federation(federation)
    finally:
        federation.stop_all()


def _site_up(fed: Federation) -> Proc:
    if not (0 in fed.sites and fed.sites[0].alive()):
        fed.start_site(0)
    fed.wait_sites([0])
    return fed.sites[0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_stopped_deployed_run_is_stopped_everywhere_and_killed(
    fed: Federation, sig: signal.Signals
) -> None:
    site = _site_up(fed)
    plan = fed.plan("stop", MANY_ROUNDS_PLAN)
    run = fed.spawn("run", fed.cli("run", str(plan), "--coordinator", fed.control_address,
                                   "--out", str(fed.tmp / "out")))  # fmt: skip
    wait_for(lambda: "round 1:" in run.text() or not run.alive(), 120, "round 1", [run.log])
    text = _stop(run, sig)
    assert run.popen.returncode == 130, text[-3000:]
    assert re.search(r"run \d+: stopping it at the coordinator", text), text[-3000:]
    run_id = int(re.search(r"run (\d+) submitted", text).group(1))  # type: ignore[union-attr]
    wait_for(lambda: fed.control.status(run_id).finished, 60, "the run stopped", fed.logs())
    assert fed.control.status(run_id).status != "finished:completed"
    assert _mlflow_status(fed, "STOP-TEST") == "KILLED"
    assert site.alive(), tail(site.log)


@pytest.mark.slow
@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_stop_signal_stops_a_site_and_all_it_started(
    fed: Federation, sig: signal.Signals
) -> None:
    site = _site_up(fed)
    text = _stop(site, sig)
    assert site.popen.returncode == 0, text[-3000:]
    assert f"site {fed.site_ids[0]} stopped ({sig.name} received" in text.splitlines()[-1]
    assert len(site.seen) >= 3, site.seen  # trialfed, the SuperNode, the runner


@pytest.mark.slow
@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_stop_signal_stops_a_coordinator_and_all_it_started(
    fed: Federation, sig: signal.Signals
) -> None:
    """Each signal on a coordinator of its own state (the module's keeps serving)."""
    own = dataclasses.replace(
        fed, state=fed.tmp / f"state-{sig.name}", port=0, control_port=0, coordinator=None,
        sites={}, extra=[],
    )  # fmt: skip
    coordinator = own.start_coordinator()
    assert len(coordinator.tree()) >= 4  # trialfed, SuperLink, its SuperExec, nginx (+ worker)
    text = _stop(coordinator, sig)
    assert coordinator.popen.returncode == 0, text[-3000:]
    assert f"coordinator stopped ({sig.name} received" in text.splitlines()[-1]
    assert not (own.state / "coordinator.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_ui_stops_the_mlflow_server_on_a_stop_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "experiments.cli", "ui", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    ui = Proc("ui", popen, log)
    try:
        wait_for(lambda: "MLflow UI for" in ui.text() or not ui.alive(), 240, "the UI", [log])
        assert ui.alive(), tail(log)
        assert len(ui.tree()) > 1  # the MLflow server and its workers
        text = _stop(ui, sig)
        assert "MLflow UI stopped" in text.splitlines()[-1], text[-2000:]
    finally:
        ui.stop(signal.SIGKILL)


@pytest.mark.slow
def test_one_coordinator_per_state_and_separate_states_never_mix(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    a = build_federation(tmp_path_factory.mktemp("states"), n_sites=2, subjects=300)
    b = dataclasses.replace(a, state=a.tmp / "state-b", sites={}, extra=[], coordinator=None)
    try:
        start_federation(a, sites=[0])
        assert a.coordinator is not None
        # The same state again, from the same folder: refused, naming the holder's PID.
        clash = a.run_cli(
            "coordinator", "start", "--certs", str(a.certs), "--host", "127.0.0.1",
            "--port", str(free_port()), "--state", str(a.state), timeout=60,
        )  # fmt: skip
        assert clash.returncode == 2, clash.stderr
        assert f"PID {a.coordinator.popen.pid}" in clash.stderr
        # A second coordinator on its own state, same machine, same working directory.
        start_federation(b, sites=[1])
        plan = a.plan("iso", ONE_ROUND_PLAN.format(study="ISO", min_sites=0, round_timeout=60))
        seen: dict[str, list[str]] = {}
        runs: dict[str, set[str]] = {}
        for name, fed in (("a", a), ("b", b)):
            status = fed.run_cli("status", "--state", str(fed.state))
            assert "sites: 1 enrolled, 1 online" in status.stdout, status.stdout
            done = fed.run_cli("run", str(plan), "--coordinator", fed.control_address,
                               "--out", str(fed.tmp / f"out-{name}"), "--no-tracking",
                               env={**fed.env, "TRIALFED_STATE": str(fed.state)})  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
            results = json.loads((fed.tmp / f"out-{name}" / "results.json").read_text())
            seen[name] = [s["id"] for s in results["sites"]]
            runs[name] = {str(r["run-id"]) for r in fed.control.runs()}
        assert seen == {"a": [a.site_ids[0]], "b": [a.site_ids[1]]}
        assert runs["a"].isdisjoint(runs["b"]) and len(runs["a"]) == len(runs["b"]) == 1
    finally:
        b.stop_all()
        a.stop_all()


def _units() -> dict[str, str]:
    text = (REPO / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```ini\n(.*?)```", text, flags=re.S)
    units = {}
    for block in blocks:
        name = re.match(r"# (\S+\.service)", block)
        if name:
            units[name.group(1)] = block
    return units


def test_systemd_units_in_the_docs_parse() -> None:
    units = _units()
    assert set(units) == {"trialfed-coordinator.service", "trialfed-site.service"}
    parser = build_parser()
    for name, text in units.items():
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(text)
        assert {"Unit", "Service", "Install"} <= set(unit.sections()), name
        service = unit["Service"]
        assert service["KillMode"] == "mixed" and int(service["TimeoutStopSec"]) >= 30
        command = shlex.split(service["ExecStart"])
        assert Path(command[0]).name == "trialfed", command
        args = parser.parse_args(command[1:])
        expected = "coordinator" if "coordinator" in name else "site"
        assert args.command == expected and getattr(args, f"{expected}_command") == "start"
        if expected == "site":
            assert "3" in service["RestartPreventExitStatus"].split()  # revoked: do not restart


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    trialfed = shutil.which("trialfed") or str(Path(sys.executable).parent / "trialfed")
    for name, text in _units().items():
        path = tmp_path / name
        path.write_text(re.sub(r"/opt/trialfed/\.venv/bin/trialfed", trialfed, text))
        done = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        problems = [
            line for line in done.stderr.splitlines()
            if name in line and "not found" not in line.lower() and "user" not in line.lower()
        ]  # fmt: skip
        assert not problems, done.stderr


ESCAPER = """
import signal, subprocess, sys, time
sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
deaf = [sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
subprocess.Popen(sleep, start_new_session=True)  # leaves the group, as Flower's helpers do
subprocess.Popen(deaf)  # stays in the group but ignores SIGTERM
time.sleep(0.5)
print("ready", flush=True)
time.sleep(600)
"""
SUPERVISED = """
import os, sys
from federation.deployment.lifecycle import Supervisor, supervise_until_stopped
supervisor = Supervisor(lambda m: print("trialfed:", m, flush=True))
supervisor.start("escaper", [sys.executable, "-c", sys.argv[1]], dict(os.environ))
sys.exit(supervise_until_stopped(supervisor, lambda child: "a child exited", "test"))
"""


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_supervisor_stops_children_that_leave_the_group_or_ignore_sigterm(
    tmp_path: Path, sig: signal.Signals
) -> None:
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-c", SUPERVISED, ESCAPER], cwd=REPO, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    proc = Proc("supervised", popen, log)
    try:
        wait_for(lambda: "ready" in proc.text() or not proc.alive(), 30, "the children", [log])
        assert len(proc.tree()) == 4, proc.seen  # supervisor, escaper, two grandchildren
        text = _stop(proc, sig)
        assert popen.returncode == 0, text
        assert f"test stopped ({sig.name} received" in text.splitlines()[-1]
    finally:
        proc.stop(signal.SIGKILL)
