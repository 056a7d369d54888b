"""A real deployment on 127.0.0.1: one coordinator (SuperLink behind nginx) and three sites
(SuperNode + site runner), TLS and site authentication, started as ``trialfed`` processes.

Fast tests check the pieces (certificates, keys, fingerprints against ``ssh-keygen``, the
outcome codec, the SuperNode output filter, the roster, nginx's acceptance of the generated
configuration, the app-bundle comparison). The slow tests share one federation (module fixture)
and each brings the federation to the state it needs first, so any one of them can run alone:
a deployed run equals the simulation of the same plan and ``trialfed results`` rebuilds it; a
coordinator restart keeps finished runs; a site killed mid-run is named as missing or fails the
run, and rejoins at once after a hard kill; unenrolled, keyless and plaintext nodes are refused;
sites open no port; a site's credentials reach no Control API; a tampered app bundle is refused
unless the site approved its hash; a revoked site stops with one clear line.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.errors import UserError
from experiments.plan import load_plan
from federation.deployment.appcode import app_dir, bundle_digests, compare, installed_digests
from federation.deployment.control import Control, _conclude, _wait, run_deployed
from federation.deployment.pki import create_certificates, create_site_keys, server_names
from federation.deployment.processes import (
    STOCK_POLLING_ENV,
    free_port,
    parse_address,
    supernode_command,
)
from federation.deployment.proxy import check_config, write_config
from federation.deployment.roster import Roster, key_fingerprint
from federation.deployment.site import NodeOutput
from federation.protocol import Outcome, RunFailed
from federation.runlog import decode_log, encode_outcome
from tests.deployment_fed import (
    ONE_ROUND_PLAN,
    START_TIMEOUT_S,
    Federation,
    Proc,
    alive,
    build_federation,
    start_federation,
    tail,
    wait_for,
)

PLAN = """
[study]
id = "DEPLOY-TEST"
title = "deployment test"

[run]
min_sites = {min_sites}
round_timeout = {round_timeout}

[[analysis]]
name = "table1"
kind = "summary"
by = "TRT01P"

[[analysis]]
name = "km"
kind = "km"
param = "COVID"
by = "TRT01P"

[[analysis]]
name = "logrank"
kind = "logrank"
param = "COVID"
by = "TRT01P"

[[analysis]]
name = "cox"
kind = "cox"
param = "COVID"
covariates = ["TRT01P", "AGE"]
reference = {{ TRT01P = "Placebo" }}
"""


# --- fast tests ---------------------------------------------------------------------------------


def test_certificates_name_hosts_and_protect_keys(tmp_path: Path) -> None:
    files = create_certificates(["coord.example.org", "10.0.0.5"], tmp_path / "certs")
    names = server_names(files.server_cert)
    assert {"coord.example.org", "10.0.0.5", "localhost", "127.0.0.1"} <= set(names)
    assert files.ca_key.stat().st_mode & 0o777 == 0o600
    assert files.server_key.stat().st_mode & 0o777 == 0o600
    ca_before = files.ca_cert.read_bytes()
    again = create_certificates(["other.example.org"], tmp_path / "certs")
    assert again.ca_cert.read_bytes() == ca_before  # the CA is reused, sites keep their copy
    assert "other.example.org" in server_names(again.server_cert)
    with pytest.raises(UserError, match="host name or an IP"):
        create_certificates(["https://bad/"], tmp_path / "c2")


def test_site_keys_in_flower_format(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = create_site_keys(tmp_path)
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert private.stat().st_mode & 0o777 == 0o600
    with pytest.raises(UserError, match="already exists"):
        create_site_keys(tmp_path)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_fingerprint_is_the_one_ssh_keygen_prints(tmp_path: Path) -> None:
    _private, public = create_site_keys(tmp_path)
    shown = subprocess.run(
        ["ssh-keygen", "-lf", str(public)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert key_fingerprint(public) == shown


def test_outcome_survives_the_log_exactly() -> None:
    analyses = {"cox": {"coef": np.array([0.1 + 0.2, -1 / 3, float("nan")])}, "x": np.float64(2.5)}
    outcome = Outcome(analyses, [{"id": "A"}], [], 3, 1.25, [0.5, 0.75])
    noise = "\x1b[92mINFO \x1b[0m: something\n"
    text = noise + "\n".join(f"junk {line}" for line in encode_outcome(outcome)) + "\n" + noise
    back = decode_log(text).outcome
    assert back is not None
    coef = back.analyses["cox"]["coef"]
    assert coef[0] == 0.1 + 0.2 and coef[1] == -1 / 3 and np.isnan(coef[2])
    assert back.rounds == 3 and back.round_seconds == [0.5, 0.75]
    truncated = "\n".join(encode_outcome(outcome)[:-1]) if len(encode_outcome(outcome)) > 1 else ""
    assert decode_log(truncated).outcome is None


def test_failure_line_becomes_the_right_exception() -> None:
    failed = 'TRIALFED-FAILURE {"type": "RunFailed", "message": "only 1 of 3 sites"}\n'
    assert isinstance(decode_log(failed).failure, RunFailed)
    refused = 'TRIALFED-FAILURE {"type": "UserError", "message": "site X refused"}\n'
    assert isinstance(decode_log(refused).failure, UserError)


def test_coordinator_address_and_ca_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="HOST:PORT"):
        parse_address("https://coord:9093")
    with pytest.raises(UserError, match="--ca is required"):
        Control("127.0.0.1:9093", None, home=tmp_path)


def test_sites_run_flowers_supernode_polling_promptly_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, ca, key, secret = (tmp_path / n for n in ("bundle", "ca.pem", "site.key", "secret"))
    monkeypatch.delenv(STOCK_POLLING_ENV, raising=False)
    prompt = supernode_command(bundle, "coord:9093", ca, key, 9094, secret)
    assert prompt[:3] == [sys.executable, "-m", "federation.deployment.supernode"]
    monkeypatch.setenv(STOCK_POLLING_ENV, "1")
    stock = supernode_command(bundle, "coord:9093", ca, key, 9094, secret)
    assert Path(stock[0]).name == "flower-supernode" and stock[1:] == prompt[3:]


REFUSED_START = """\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode
\x1b[91mERROR \x1b[0m:     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[code: 2004] Failed to activate SuperNode.
"""
REVOKED_RUN = """\x1b[92mINFO \x1b[0m:      SuperNode ID: 42
\x1b[92mINFO \x1b[0m:      Received successfully
Traceback (most recent call last):
  File "flwr/supernode/start_client_internal.py", line 250, in start_client_internal
httpx.HTTPStatusError: Client error '401 Unauthorized' for url 'https://c/v1/fleet/pull-messages'
"""
REVOKED_HEARTBEAT = """\x1b[92mINFO \x1b[0m:      SuperNode ID: 42
Exception in thread Thread-2 (_run):
Traceback (most recent call last):
  File "threading.py", line 1045, in _bootstrap_inner
\x1b[92mINFO \x1b[0m:      SuperNode terminated gracefully.
    self.run()
  File "flwr/supercore/heartbeat.py", line 98, in _run
httpx.HTTPStatusError: Client error '401 Unauthorized' for url 'https://c/v1/fleet/send-node-heartbeat'
For more information check: https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/401
"""
OTHER_CRASH = """\x1b[92mINFO \x1b[0m:      SuperNode ID: 42
Traceback (most recent call last):
  File "x.py", line 1, in f
ValueError: something else
"""


def _filtered(text: str) -> tuple[NodeOutput, list[str]]:
    shown: list[str] = []
    output = NodeOutput(shown.append)
    for line in text.splitlines(keepends=True):
        output(line)
    output.finish()
    return output, shown


def test_supernode_output_is_one_line_per_known_failure() -> None:
    refused, shown = _filtered(REFUSED_START)
    assert refused.refused and not refused.activated and shown == []
    revoked, shown = _filtered(REVOKED_RUN)
    assert revoked.revoked and revoked.node_id == 42
    assert not any("Traceback" in line or "401" in line for line in shown), shown
    # Flower's heartbeat thread dies on the 401 while the main thread goes on logging
    revoked, shown = _filtered(REVOKED_HEARTBEAT)
    assert revoked.revoked, shown
    assert not any(w in line for line in shown for w in ("Traceback", "401", "Exception")), shown
    assert any("terminated gracefully" in line for line in shown)
    crash, shown = _filtered(OTHER_CRASH)  # an unknown failure is shown whole
    assert not crash.revoked and any("ValueError: something else" in line for line in shown)
    assert any("Traceback" in line for line in shown)


def test_one_site_start_per_site_home(tmp_path: Path) -> None:
    import os

    from federation.deployment.site import SiteLock

    first = SiteLock(tmp_path)
    first.acquire()
    assert (tmp_path / "site.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(UserError, match=rf"already being served from .* \(PID {os.getpid()}\)"):
        SiteLock(tmp_path).acquire()
    assert first._handle is not None  # held for the life of `trialfed site start`
    first._handle.close()


def test_roster_enrols_refuses_duplicates_and_revokes(tmp_path: Path) -> None:
    roster = Roster(tmp_path)
    keys = [create_site_keys(tmp_path / f"k{i}")[1].read_text() for i in range(2)]
    roster.check_new("JP01", "JP", keys[0])
    roster.add("JP01", "JP", keys[0], 11)
    with pytest.raises(UserError, match="already enrolled"):
        roster.check_new("JP01", "JP", keys[1])
    with pytest.raises(UserError, match="already enrolled as site JP01"):
        roster.check_new("KR01", "KR", keys[0])
    with pytest.raises(UserError, match="--country"):
        roster.check_new("KR01", "Korea", keys[1])
    with pytest.raises(UserError, match="--site"):
        roster.check_new("KR 01", "KR", keys[1])
    roster.add("KR01", "KR", keys[1], 12)
    assert roster.by_node() == {11: "JP01", 12: "KR01"}
    roster.record_answers(7, [{"id": "KR01", "version": "0.1.0"}])
    assert roster.get("KR01").last_run == 7 and roster.get("KR01").version == "0.1.0"
    roster.remove("JP01")
    assert [s.site_id for s in roster.sites()] == ["KR01"]
    assert roster.revoked()[0]["site_id"] == "JP01" and roster.revoked()[0]["revoked_at"]
    with pytest.raises(UserError, match="not on the roster"):
        roster.get("JP01")
    with pytest.raises(UserError, match="was revoked on .* new key pair"):
        roster.check_new("JP01", "JP", keys[0])


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="needs nginx")  # fmt: skip
def test_nginx_accepts_the_generated_configuration(tmp_path: Path) -> None:
    files = create_certificates(["127.0.0.1"], tmp_path / "certs")
    config = write_config(tmp_path, "127.0.0.1:9093", "127.0.0.1:9094", files)
    check_config(config)  # nginx -t
    text = config.read_text()
    assert "location /v1/fleet/" in text and "/v1/control" not in text.split("location /")[0]
    assert re.search(r"location / \{\s*return 403", text)


def test_app_bundle_code_is_compared_file_by_file(tmp_path: Path) -> None:
    app = app_dir(tmp_path)

    def fab(folder: Path) -> bytes:
        path = tmp_path / "app.fab"
        with zipfile.ZipFile(path, "w") as archive:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(folder).as_posix())
        return path.read_bytes()

    assert compare(bundle_digests(fab(app)), installed_digests()).same
    handler = app / "federation" / "client_app.py"
    handler.write_text(handler.read_text() + "\n# changed\n")
    (app / "sites" / "extra.py").write_text("X = 1\n")
    (app / "analysis" / "errors.py").unlink()
    diff = compare(bundle_digests(fab(app)), installed_digests())
    assert diff.changed == ["federation/client_app.py"]
    assert diff.added == ["sites/extra.py"] and diff.removed == ["analysis/errors.py"]
    assert "changed: federation/client_app.py" in diff.describe()


# --- the federation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = build_federation(tmp_path_factory.mktemp("deploy"))
    try:
        yield start_federation(federation)
    finally:
        federation.stop_all()


def _ensure_sites(fed: Federation) -> None:
    """Every site running and online (a test before may have stopped one)."""
    for i in range(len(fed.bundles)):
        if not (i in fed.sites and fed.sites[i].alive()):
            fed.start_site(i)
    fed.wait_sites(list(range(len(fed.bundles))))


def _values(x: Any) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in x], dtype=float)


def _run(fed: Federation, plan: Path, out: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return fed.run_cli(
        "run", str(plan), "--coordinator", fed.control_address, "--out", str(fed.tmp / out),
        *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_deployed_run_equals_simulation_and_results_rebuild_it(fed: Federation) -> None:
    _ensure_sites(fed)
    plan = fed.plan("full", PLAN.format(min_sites=0, round_timeout=60))
    dep = _run(fed, plan, "dep")
    logs = "\n".join(tail(p) for p in fed.logs())
    assert dep.returncode == 0, f"{dep.stderr[-4000:]}\n{logs}"
    sim = fed.run_cli("run", str(plan), "--sites", *map(str, fed.bundles),
                      "--out", str(fed.tmp / "sim"), "--no-tracking")  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-4000:]
    d = json.loads((fed.tmp / "dep" / "results.json").read_text())
    s = json.loads((fed.tmp / "sim" / "results.json").read_text())
    assert d["engine"] == "deployment" and s["engine"] == "simulation"
    assert sorted(x["id"] for x in d["sites"]) == sorted(fed.site_ids)
    assert d["sites_missing"] == []
    assert d["analyses"]["table1"] == s["analyses"]["table1"]
    for level, group in s["analyses"]["km"]["groups"].items():
        dep_group = d["analyses"]["km"]["groups"][level]
        np.testing.assert_array_equal(_values(dep_group["time"]), _values(group["time"]))
        np.testing.assert_array_equal(_values(dep_group["survival"]), _values(group["survival"]))
    np.testing.assert_allclose(
        d["analyses"]["logrank"]["statistic"], s["analyses"]["logrank"]["statistic"], rtol=1e-12
    )
    for term, row in s["analyses"]["cox"]["terms"].items():
        got = d["analyses"]["cox"]["terms"][term]
        assert abs(got["coef"] - row["coef"]) <= 1e-12, (term, got["coef"], row["coef"])
        assert abs(got["se"] - row["se"]) <= 1e-12
    # The roster named the expected sites and recorded who answered.
    assert f"expected sites {', '.join(sorted(fed.site_ids))}" in dep.stderr
    run_id = int(re.search(r"run (\d+) submitted", dep.stderr).group(1))  # type: ignore[union-attr]
    status = fed.run_cli("status", "--state", str(fed.state))
    assert status.returncode == 0, status.stderr
    assert f"sites: {len(fed.site_ids)} enrolled, {len(fed.site_ids)} online" in status.stdout
    assert re.search(rf"{run_id}\s+finished:completed", status.stdout), status.stdout
    # An earlier run's results.json and MLflow run, rebuilt from the coordinator alone.
    rebuilt = fed.run_cli("results", str(run_id), "--out", str(fed.tmp / "again"),
                          "--state", str(fed.state))  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    r = json.loads((fed.tmp / "again" / "results.json").read_text())
    assert r["analyses"] == d["analyses"] and r["sites"] == d["sites"]
    assert r["plan_sha256"] == d["plan_sha256"] and r["mlflow_run_id"]


@pytest.mark.slow
def test_coordinator_restart_keeps_finished_run(fed: Federation) -> None:
    _ensure_sites(fed)
    plan = fed.plan("restart", ONE_ROUND_PLAN.format(study="R", min_sites=0, round_timeout=60))
    done = _run(fed, plan, "before-restart", "--no-tracking")
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = int(re.search(r"run (\d+) submitted", done.stderr).group(1))  # type: ignore[union-attr]
    before = json.loads((fed.tmp / "before-restart" / "results.json").read_text())
    assert fed.coordinator is not None
    old = fed.coordinator
    old.stop(signal.SIGTERM)
    assert old.popen.returncode == 0, tail(old.log)
    assert "coordinator stopped (SIGTERM received" in old.text()
    fed.start_coordinator()
    assert fed.control.status(run_id).status == "finished:completed"
    outcome = decode_log(fed.control.log(run_id)).outcome
    assert outcome is not None
    assert outcome.sites == before["sites"]
    # The sites reconnect by themselves (their SuperNodes retry).
    wait_for(lambda: fed.online() == len(fed.bundles), START_TIMEOUT_S,
             "the sites back after the coordinator restart", fed.logs())  # fmt: skip


def _run_with_kill(fed: Federation, plan: Path, victim: int) -> Outcome | Exception:
    """Run ``plan`` in this process; hard-kill site ``victim`` once round 1 has been answered."""
    killed = threading.Event()

    def progress(message: str) -> None:
        if message.startswith("round 1:") and "answered" in message and not killed.is_set():
            killed.set()
            fed.sites[victim].stop(signal.SIGKILL)

    try:
        return run_deployed(
            load_plan(plan), fed.control_address, fed.ca, progress, home=fed.tmp / "cli",
            timeout=200, roster=Roster(fed.state),
        )  # fmt: skip
    except (RunFailed, UserError) as exc:
        return exc
    finally:
        assert killed.is_set(), "\n".join(tail(p) for p in fed.logs())


@pytest.mark.slow
def test_site_lost_mid_run_is_named_missing_and_rejoins_at_once(fed: Federation) -> None:
    _ensure_sites(fed)
    result = _run_with_kill(fed, fed.plan("drop2", PLAN.format(min_sites=2, round_timeout=10)), 2)
    assert isinstance(result, Outcome), f"{result}\n" + "\n".join(tail(p) for p in fed.logs())
    assert [m["id"] for m in result.sites_missing] == [fed.site_ids[2]]
    assert sorted(s["id"] for s in result.sites) == sorted(fed.site_ids[:2])
    assert "cox" in result.analyses
    # Killed hard, the site still counts as online at the coordinator (up to 60 s); restarted,
    # it ends that connection with its own key and is back in seconds, in one line.
    started = time.monotonic()
    proc = fed.start_site(2)
    fed.wait_sites([2], timeout=45)
    text = proc.text()
    assert time.monotonic() - started < 30, text[-3000:]
    assert "Exit Code: 305" not in text, text[-3000:]


@pytest.mark.slow
def test_site_lost_below_min_sites_fails_naming_it(fed: Federation) -> None:
    _ensure_sites(fed)
    result = _run_with_kill(fed, fed.plan("drop3", PLAN.format(min_sites=3, round_timeout=10)), 1)
    assert isinstance(result, RunFailed), result
    assert fed.site_ids[1] in str(result) and "needs 3" in str(result)


DIES_MID_REPLY = """\
# Loaded by every Python process of one test site: its SuperNode registers its first reply at
# the coordinator, then dies before sending the reply's data (as a SIGKILL there would).
import os
import sys

if sys.orig_argv[1:3] == ["-m", "federation.deployment.supernode"]:
    import flwr.supernode.start_client_internal as loop

    def _die(*args, **kwargs):
        os._exit(137)

    loop.push_object_contents_from_iterable = _die
"""


@pytest.mark.slow
def test_site_that_stops_while_sending_costs_one_round_not_the_others(fed: Federation) -> None:
    """A reply registered without its data (the site stopped in between) is that site's
    failure, named; the other sites' replies in the same round are kept, and the wait for the
    missing data ends with the round (Flower waits up to 500 tries: CI lost the whole round)."""
    _ensure_sites(fed)
    fed.sites.pop(2).stop()
    hook = fed.tmp / "dies-mid-reply"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(DIES_MID_REPLY)
    dying = fed.start_site(2, extra_env={"PYTHONPATH": f"{hook}:{fed.env['PYTHONPATH']}"})
    try:
        fed.wait_sites([0, 1, 2])
        started = time.monotonic()
        result = run_deployed(
            load_plan(fed.plan("dies", PLAN.format(min_sites=2, round_timeout=10))),
            fed.control_address, fed.ca, lambda _: None, home=fed.tmp / "cli", timeout=200,
            roster=Roster(fed.state),
        )  # fmt: skip
        took = time.monotonic() - started
    finally:
        fed.sites.pop(2, None)
        dying.stop()
    logs = "\n".join(tail(p) for p in [*fed.logs(), dying.log])
    assert [m["id"] for m in result.sites_missing] == [fed.site_ids[2]], logs
    assert "did not arrive whole" in json.dumps(result.sites_missing), result.sites_missing
    assert sorted(s["id"] for s in result.sites) == sorted(fed.site_ids[:2])
    assert took < 40, f"{took:.0f} s\n{logs}"  # one 10 s round lost, not Flower's ~55 s wait


@pytest.mark.slow
def test_unenrolled_keyless_and_plaintext_nodes_are_refused(fed: Federation) -> None:
    stranger = create_site_keys(fed.tmp / "stranger")[0]
    unenrolled = fed.start_site(0, key=stranger, retry_s=0, home=fed.tmp / "stranger-home")
    supernode = str(Path(sys.executable).parent / "flower-supernode")
    bundle = f"bundle='{fed.bundles[0]}'"
    keyless = fed.spawn("keyless", [supernode, "--superlink", fed.address, "--root-certificates",
                        str(fed.ca), "--node-config", bundle, "--port", str(free_port()),
                        "--max-retries", "2"])  # fmt: skip
    plain = fed.spawn("plain", [supernode, "--insecure", "--superlink", fed.address,
                      "--node-config", bundle, "--port", str(free_port()),
                      "--max-retries", "2"])  # fmt: skip
    fed.extra += [keyless, plain]
    procs = [unenrolled, keyless, plain]
    wait_for(lambda: not any(p.alive() for p in procs), 60, "refused nodes to exit",
             [p.log for p in procs])  # fmt: skip
    for proc in procs:
        assert proc.popen.returncode != 0, tail(proc.log)
    text = unenrolled.text()
    assert "not enrolled" in text and text.count("Exit Code: 305") == 0, tail(unenrolled.log)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{fed.address}/", timeout=5)  # noqa: S310


def _listening(pids: set[int]) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) that processes in ``pids`` listen on."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = str(Path(fd).readlink())
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                found.append(cols[1])
    return found


LOOPBACK = ("0100007F:", "00000000000000000000000001000000:")


@pytest.mark.slow
def test_sites_listen_on_loopback_only(fed: Federation) -> None:
    _ensure_sites(fed)
    site = fed.sites[0]
    addresses = _listening(site.tree())
    assert addresses, tail(site.log)
    assert all(a.startswith(LOOPBACK) for a in addresses), addresses


@pytest.mark.slow
def test_a_site_reaches_no_control_api(fed: Federation) -> None:
    """From a site's side (the public port, the CA certificate and a site key), submitting a
    run and enrolling a key are refused; the SuperLink itself listens on 127.0.0.1 only."""
    _ensure_sites(fed)
    assert fed.coordinator is not None
    superlink = [p for p in fed.coordinator.tree() if "flower-superlink" in _cmdline(p)]
    assert superlink and all(a.startswith(LOOPBACK) for a in _listening(set(superlink)))
    plan = fed.plan("intruder", ONE_ROUND_PLAN.format(study="X", min_sites=0, round_timeout=30))
    env = {**fed.env, "TRIALFED_STATE": str(fed.tmp / "no-state")}  # no roster on a site
    run = fed.run_cli("run", str(plan), "--coordinator", fed.address, "--ca", str(fed.ca),
                      "--out", str(fed.tmp / "intruder"), "--no-tracking", env=env)  # fmt: skip
    assert run.returncode == 1 and "403" in run.stderr, run.stderr[-2000:]
    assert "the Control API listens on 127.0.0.1" in run.stderr
    site_side = Control(fed.address, fed.ca, home=fed.tmp / "site-cli")
    newcomer = create_site_keys(fed.tmp / "newcomer")[1]
    with pytest.raises(RunFailed, match="403"):
        site_side.register(newcomer)
    before = {n["node-id"] for n in fed.control.nodes()}
    request = urllib.request.Request(  # noqa: S310
        f"https://{fed.address}/v1/control/start-run", data=b"", method="POST"
    )
    import ssl

    context = ssl.create_default_context(cafile=str(fed.ca))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10, context=context)  # noqa: S310
    refused.value.close()
    assert refused.value.code == 403
    assert {n["node-id"] for n in fed.control.nodes()} == before


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _submit(fed: Federation, app: Path, plan: Path) -> Outcome | Exception:
    control = fed.control
    text = load_plan(plan).text
    overrides = {"plan-toml": text, "expected-sites": 3, "round-timeout": 30.0, "min-sites": 0}
    run_id = control.start(app, overrides, fed.tmp)
    try:
        return _conclude(control, run_id, _wait(control, run_id, lambda _m: None,
                                               time.monotonic() + 180, 180))  # fmt: skip
    except (RunFailed, UserError) as exc:
        return exc


@pytest.mark.slow
def test_tampered_app_bundle_is_refused_unless_approved(fed: Federation) -> None:
    _ensure_sites(fed)
    app = app_dir(fed.tmp / "tampered")
    handler = app / "federation" / "client_app.py"
    handler.write_text(handler.read_text() + "\n# a coordinator's modified site handler\n")
    plan = fed.plan("tamper", ONE_ROUND_PLAN.format(study="T", min_sites=0, round_timeout=30))
    audit = fed.bundles[0] / ".trialfed" / "audit.jsonl"
    entries = len(audit.read_text().splitlines()) if audit.exists() else 0
    refused = _submit(fed, app, plan)
    assert isinstance(refused, UserError), refused
    assert "refuses the run" in str(refused) and "federation/client_app.py" in str(refused)
    digest = re.search(r"sha256 ([0-9a-f]{64})", str(refused)).group(1)  # type: ignore[union-attr]
    log = audit.read_text().splitlines()
    assert len(log) > entries and json.loads(log[-1])["outcome"] == "refused"
    # Each site approves this bundle by hash: it is answered, by the sites' installed code.
    originals = {b: (b / "site.toml").read_text() for b in fed.bundles}
    try:
        for bundle, text in originals.items():
            (bundle / "site.toml").write_text(
                text.replace("[site]", f'[policy]\napproved_apps = ["{digest}"]\n\n[site]', 1)
                if "[policy]" not in text
                else text.replace("[policy]", f'[policy]\napproved_apps = ["{digest}"]', 1)
            )
        answered = _submit(fed, app, plan)
        assert isinstance(answered, Outcome), answered
        assert sorted(s["id"] for s in answered.sites) == sorted(fed.site_ids)
    finally:
        for bundle, text in originals.items():
            (bundle / "site.toml").write_text(text)


@pytest.mark.slow
def test_revoked_site_stops_with_one_clear_line(fed: Federation) -> None:
    _ensure_sites(fed)
    victim = fed.sites[2]
    revoke = fed.run_cli("coordinator", "revoke", fed.site_ids[2], "--state", str(fed.state))
    assert revoke.returncode == 0, revoke.stderr
    try:
        _revoked_site_says_so(fed, victim)
    finally:
        # Rejoining is a new key pair, enrolled (docs/deployment.md): the federation is whole
        # again for the tests that follow, whatever the checks above found
        victim.stop()
        fed.keys[2] = create_site_keys(fed.tmp / "key2-rejoined")[0]
        done = fed.enroll(2)
        assert done.returncode == 0, done.stderr
        fed.start_site(2)
        fed.wait_sites([0, 1, 2])


def _revoked_site_says_so(fed: Federation, victim: Proc) -> None:
    try:
        victim.popen.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(tail(victim.log)) from None
    text = victim.text()
    assert victim.popen.returncode == 3, text[-3000:]
    assert "Traceback" not in text and "401 Unauthorized" not in text, text[-3000:]
    assert text.count("was revoked") == 1
    assert not alive(victim.seen - {victim.popen.pid})
    listed = fed.run_cli("coordinator", "sites", "--state", str(fed.state))
    assert fed.site_ids[2] not in listed.stdout and "2 enrolled" in listed.stdout
    # Restarted with the revoked key, the site says so at once instead of retrying.
    again = fed.start_site(2, key=fed.keys[2], retry_s=60)
    again.popen.wait(timeout=60)
    assert again.popen.returncode == 3 and "was revoked" in again.text(), tail(again.log)


def test_a_run_expects_the_roster_unless_the_plan_names_its_sites(tmp_path: Path) -> None:
    from analysis.plan import parse_plan
    from federation.deployment.control import expected_sites

    plan = parse_plan(ONE_ROUND_PLAN.format(study="E", min_sites=0, round_timeout=30), "plan")
    roster = Roster(tmp_path)
    with pytest.raises(UserError, match="no site is enrolled"):
        expected_sites(plan, roster)
    for i, site in enumerate(["KR01", "JP01"]):
        roster.add(site, site[:2], create_site_keys(tmp_path / site)[1].read_text(), 100 + i)
    expected = expected_sites(plan, roster)
    assert expected.site_ids == ["JP01", "KR01"]
    assert expected.overrides() == {
        "expected-site-ids": "JP01,KR01",
        "roster-nodes": "100=KR01,101=JP01",
    }
    assert expected_sites(plan, None).overrides() == {"expected-site-ids": "", "roster-nodes": ""}
    if hasattr(plan, "sites"):  # the plan's own [study] sites list, where the plan model has it
        named = parse_plan(
            ONE_ROUND_PLAN.format(study="E", min_sites=0, round_timeout=30).replace(
                'title = "deployment test, one round"',
                'title = "deployment test, one round"\nsites = ["JP01", "XX99"]',
            ),
            "plan",
        )
        with pytest.raises(UserError, match="XX99, not on the coordinator's roster"):
            expected_sites(named, roster)


TRAIN_PLAN = """
[study]
id = "DEPLOY-TRAIN"

[run]
round_timeout = 60

[[analysis]]
name = "risk"
kind = "train"
param = "COVID"
model = "cox-linear"
features = ["AGE", "SEX", "TRT01P"]
strategy = "fedavg"
rounds = 2
lr = 0.5
seed = 1
test_fraction = 0.25
"""


@pytest.mark.slow
def test_a_train_analysis_deployed_equals_the_simulation(fed: Federation) -> None:
    """Flower's strategy over the deployed sites (their own installed code answering) trains
    the model the simulation engine trains, bit for bit."""
    _ensure_sites(fed)
    plan = fed.plan("train", TRAIN_PLAN)
    dep = _run(fed, plan, "train-dep", "--no-tracking")
    logs = "\n".join(tail(p) for p in fed.logs())
    assert dep.returncode == 0, f"{dep.stderr[-4000:]}\n{logs}"
    sim = fed.run_cli("run", str(plan), "--sites", *map(str, fed.bundles),
                      "--out", str(fed.tmp / "train-sim"), "--no-tracking")  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-4000:]
    d = json.loads((fed.tmp / "train-dep" / "results.json").read_text())["analyses"]["risk"]
    s = json.loads((fed.tmp / "train-sim" / "results.json").read_text())["analyses"]["risk"]
    assert sorted(d["sites"]) == sorted(fed.site_ids)
    assert d["state"] == s["state"] and len(d["history"]) == 2
    assert d["final"]["combined"] == s["final"]["combined"]
