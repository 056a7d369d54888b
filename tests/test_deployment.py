"""A real deployment on 127.0.0.1: one SuperLink and three SuperNodes, TLS and site authentication.

The slow tests share one federation (module fixture) and run in file order: a plan run through
``trialfed run --coordinator`` equals the simulation of the same plan; a coordinator restart keeps
the finished run; a site killed mid-run is named as missing (min_sites=2) or fails the run
(min_sites=3); unenrolled, keyless and plaintext nodes are refused; sites open no port.
Every process is started in its own session and stopped by PID in the fixture's teardown; every
wait has a timeout, and failures show the tail of the process logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.errors import UserError
from experiments.plan import load_plan
from federation.deployment import processes as deploy_procs
from federation.deployment.control import Control, run_deployed
from federation.deployment.pki import create_certificates, create_site_keys, server_names
from federation.deployment.processes import QUIET_ENV, free_port, parse_address
from federation.protocol import Outcome, RunFailed
from federation.runlog import decode_log, encode_outcome

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 240.0

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


# --- fast tests: certificates, keys, the outcome codec ----------------------------------------


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


# --- the federation ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (read from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} missing)"
    return f"--- {path.name} ---\n" + "\n".join(
        path.read_text(errors="replace").splitlines()[-lines:]
    )


@dataclass
class Proc:
    """A process tree started by a test, in its own session, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace: float = 10.0) -> None:
        """Stop the whole tree: the process group, then any descendant left, by PID."""
        pids = [self.popen.pid, *_children(self.popen.pid)]
        for target in (sig, signal.SIGKILL):
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, target)
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    continue
            break
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=grace)
        for pid in pids[1:]:  # helpers Flower detaches into their own sessions
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _wait_for(check: Callable[[], bool], timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:g} s\n" + "\n".join(_tail(p) for p in logs))


@dataclass
class Federation:
    tmp: Path
    env: dict[str, str]
    ca: Path
    certs: Path
    port: int
    bundles: list[Path]
    keys: list[Path]
    control: Control
    site_ids: list[str]
    coordinator: Proc | None = None
    sites: dict[int, Proc] = field(default_factory=dict)
    extra: list[Proc] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        self.starts += 1
        log = self.tmp / "logs" / f"{name}-{self.starts}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args,
                cwd=self.tmp,
                env=env or self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return Proc(name, popen, log)

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "experiments.cli", *args]

    def start_coordinator(self) -> None:
        self.coordinator = self.spawn(
            "coordinator",
            self.cli(
                "coordinator", "start", "--certs", str(self.certs),
                "--host", "127.0.0.1", "--port", str(self.port),
            ),
        )  # fmt: skip
        proc = self.coordinator
        _wait_for(
            lambda: "Uvicorn running" in proc.log.read_text(errors="replace") or not proc.alive(),
            START_TIMEOUT_S,
            "the SuperLink listening",
            [proc.log],
        )
        assert proc.alive(), _tail(proc.log)

    def start_site(self, i: int, key: Path | None = None, retry_s: float = 90.0) -> Proc:
        env = {**self.env, "TRIALFED_ACTIVATION_RETRY_S": str(retry_s)}
        proc = self.spawn(
            f"site{i}",
            self.cli(
                "site", "start", str(self.bundles[i]), "--coordinator", self.address,
                "--ca", str(self.ca), "--key", str(key or self.keys[i]),
            ),
            env,
        )  # fmt: skip
        if key is None:
            self.sites[i] = proc
        else:
            self.extra.append(proc)
        return proc

    def online(self) -> int:
        try:
            return sum(1 for n in self.control.nodes() if n.get("status") == "online")
        except RunFailed:
            return -1

    def activated(self, i: int) -> bool:
        """Whether site ``i``'s current SuperNode got its node id (activation accepted)."""
        proc = self.sites[i]
        return proc.alive() and "SuperNode ID" in proc.log.read_text(errors="replace")

    def logs(self) -> list[Path]:
        procs = [self.coordinator, *self.sites.values(), *self.extra]
        return [p.log for p in procs if p is not None]

    def plan(self, name: str, min_sites: int, round_timeout: float) -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text(PLAN.format(min_sites=min_sites, round_timeout=round_timeout))
        return path

    def stop_all(self) -> None:
        for proc in [*self.extra, *self.sites.values(), self.coordinator]:
            if proc is not None:
                proc.stop()


FAKE_SUPERNODE = """
import sys
from pathlib import Path
attempts = Path(sys.argv[1])
n = int(attempts.read_text()) + 1 if attempts.exists() else 1
attempts.write_text(str(n))
if n <= int(sys.argv[2]):
    print("Exit Code: 305", flush=True)
    print(sys.argv[3], flush=True)
    sys.exit(1)  # Flower 1.42 exits with 1 for every error
print("SuperNode ID: 7", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("refusals", "text", "retry_s", "code", "attempts"),
    [
        (2, "[code: 2004] Failed to activate SuperNode.", 60.0, 0, 3),  # refused, then accepted
        (1, "some other failure", 60.0, 1, 1),  # not a refusal: no retry
        (5, "[code: 2004] Failed to activate SuperNode.", 0.0, 1, 1),  # out of retry time
    ],
    ids=["retried", "other-error", "gives-up"],
)
def test_site_retries_only_a_refused_activation(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    refusals: int,
    text: str,
    retry_s: float,
    code: int,
    attempts: int,
) -> None:
    monkeypatch.setattr(deploy_procs, "ACTIVATION_PAUSE_S", 0.05)
    counter = tmp_path / "attempts"
    command = [sys.executable, "-c", FAKE_SUPERNODE, str(counter), str(refusals), text]
    assert deploy_procs.run_site(command, dict(os.environ), retry_s=retry_s) == code
    assert int(counter.read_text()) == attempts
    err = capfd.readouterr().err
    assert text in err  # the SuperNode's own output still reaches the terminal
    assert ("the coordinator refused this site" in err) == (retry_s == 0.0)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("deploy")
    env = {
        **os.environ,
        **QUIET_ENV,
        "TRIALFED_HOME": str(tmp / "home"),
        "PYTHONPATH": str(REPO),
        # Flower's processes start `flower-superexec` by name: the venv need not be activated
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
    }
    env.pop("FLWR_HOME", None)
    synth = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "synth", "--out", str(tmp / "synth"),
         "--subjects", "600", "--sites", "3", "--format", "csv"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    bundles = sorted(p for p in (tmp / "synth" / "sites").iterdir() if p.is_dir())
    assert len(bundles) == 3
    site_ids = [tomllib.loads((b / "site.toml").read_text())["site"]["id"] for b in bundles]
    files = create_certificates(["127.0.0.1"], tmp / "certs")
    keys = [create_site_keys(tmp / f"key{i}")[0] for i in range(3)]
    port = free_port()
    control = Control(f"127.0.0.1:{port}", files.ca_cert, home=tmp / "cli")
    federation = Federation(
        tmp, env, files.ca_cert, tmp / "certs", port, bundles, keys, control, site_ids
    )
    try:
        federation.start_coordinator()
        for key in keys:
            federation.control.register(key.with_name("site.pub"))
        for i in range(3):
            federation.start_site(i)
        _wait_for(lambda: federation.online() == 3, START_TIMEOUT_S, "3 sites online",
                  federation.logs())  # fmt: skip
        yield federation
    finally:
        federation.stop_all()


def _run_cli(fed: Federation, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fed.cli(*args), cwd=fed.tmp, env=fed.env, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip


def _values(x: Any) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in x], dtype=float)


@pytest.mark.slow
def test_deployed_run_equals_simulation(fed: Federation) -> None:
    plan = fed.plan("full", min_sites=0, round_timeout=60)
    dep = _run_cli(fed, "run", str(plan), "--coordinator", fed.address, "--ca", str(fed.ca),
                   "--out", str(fed.tmp / "dep"), "--no-tracking")  # fmt: skip
    logs = "\n".join(_tail(p) for p in fed.logs())
    assert dep.returncode == 0, f"{dep.stderr[-4000:]}\n{logs}"
    sim = _run_cli(fed, "run", str(plan), "--sites", *map(str, fed.bundles),
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
    match = re.search(r"run (\d+) submitted", dep.stderr)
    assert match, dep.stderr[-2000:]
    fed.state["run_id"] = int(match.group(1))
    fed.state["cox"] = d["analyses"]["cox"]["terms"]


@pytest.mark.slow
def test_coordinator_restart_keeps_finished_run(fed: Federation) -> None:
    if "run_id" not in fed.state:
        pytest.skip("needs the finished run of test_deployed_run_equals_simulation")
    assert fed.coordinator is not None
    fed.coordinator.stop(signal.SIGTERM)
    fed.start_coordinator()
    run_id = fed.state["run_id"]
    assert fed.control.status(run_id).status == "finished:completed"
    outcome = decode_log(fed.control.log(run_id)).outcome
    assert outcome is not None
    for term, row in fed.state["cox"].items():
        assert outcome.analyses["cox"]["terms"][term]["coef"] == row["coef"]
    # The sites reconnect by themselves (SuperNodes retry; trialfed retries a refused activation).
    _wait_for(
        lambda: fed.online() == 3 and all(fed.activated(i) for i in range(3)),
        START_TIMEOUT_S,
        "3 sites back after the coordinator restart",
        fed.logs(),
    )


def _run_with_kill(fed: Federation, plan: Path, victim: int) -> Outcome | Exception:
    """Run ``plan`` in this process; hard-kill site ``victim`` once round 1 has been answered."""
    killed = threading.Event()

    def progress(message: str) -> None:
        if message.startswith("round 1:") and "answered" in message and not killed.is_set():
            killed.set()
            fed.sites[victim].stop(signal.SIGKILL)

    try:
        return run_deployed(
            load_plan(plan), fed.address, fed.ca, progress, home=fed.tmp / "cli", timeout=200
        )
    except (RunFailed, UserError) as exc:
        return exc
    finally:
        assert killed.is_set(), "\n".join(_tail(p) for p in fed.logs())


@pytest.mark.slow
def test_site_lost_mid_run_is_named_missing(fed: Federation) -> None:
    _wait_for(lambda: fed.online() == 3, START_TIMEOUT_S, "3 sites online", fed.logs())
    result = _run_with_kill(fed, fed.plan("drop2", min_sites=2, round_timeout=30), victim=2)
    assert isinstance(result, Outcome), f"{result}\n" + "\n".join(_tail(p) for p in fed.logs())
    assert [m["id"] for m in result.sites_missing] == [fed.site_ids[2]]
    assert sorted(s["id"] for s in result.sites) == sorted(fed.site_ids[:2])
    assert "cox" in result.analyses
    fed.start_site(2)  # the restarted site rejoins (after Flower forgets the killed one)


@pytest.mark.slow
def test_site_lost_below_min_sites_fails_naming_it(fed: Federation) -> None:
    _wait_for(lambda: fed.activated(2) and fed.online() == 3, START_TIMEOUT_S,
              "the restarted site rejoined", fed.logs())  # fmt: skip
    result = _run_with_kill(fed, fed.plan("drop3", min_sites=3, round_timeout=30), victim=1)
    assert isinstance(result, RunFailed), result
    assert fed.site_ids[1] in str(result) and "needs 3" in str(result)


@pytest.mark.slow
def test_unenrolled_keyless_and_plaintext_nodes_are_refused(fed: Federation) -> None:
    stranger = create_site_keys(fed.tmp / "stranger")[0]
    unenrolled = fed.start_site(0, key=stranger, retry_s=0)
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
    _wait_for(lambda: not any(p.alive() for p in procs), 60, "refused nodes to exit",
              [p.log for p in procs])  # fmt: skip
    for proc in procs:
        assert proc.popen.returncode != 0, _tail(proc.log)
    text = unenrolled.log.read_text(errors="replace")
    assert "refused" in text or "Failed to activate" in text, _tail(unenrolled.log)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{fed.address}/", timeout=5)  # noqa: S310


@pytest.mark.slow
def test_sites_listen_on_loopback_only(fed: Federation) -> None:
    def listening(pids: set[int]) -> list[str]:
        inodes: set[str] = set()
        for pid in pids:
            for fd in Path(f"/proc/{pid}/fd").glob("*"):
                try:
                    target = os.readlink(fd)
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

    site = fed.sites[0]
    addresses = listening({site.popen.pid, *_children(site.popen.pid)})
    assert addresses, _tail(site.log)
    loopback = ("0100007F:", "00000000000000000000000001000000:")
    assert all(a.startswith(loopback) for a in addresses), addresses
