"""A real federation on 127.0.0.1 for the deployment tests: coordinators and sites started as
``trialfed`` processes, the way docs/deployment.md starts them.

Every process is started in its own session, its output in a log file; :meth:`Proc.stop` stops
the whole tree (the group, then every descendant seen, by PID). Every wait has a timeout and a
failure shows the tail of the logs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from analysis.errors import UserError
from federation.deployment.control import Control
from federation.deployment.lifecycle import descendants
from federation.deployment.pki import create_certificates, create_site_keys
from federation.deployment.processes import QUIET_ENV, free_port
from federation.deployment.proxy import nginx_executable
from federation.protocol import RunFailed

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 240.0

ONE_ROUND_PLAN = """
[study]
id = "{study}"
title = "deployment test, one round"

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
"""


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} missing)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path.name} ---\n" + "\n".join(text)


def wait_for(check: Callable[[], bool], timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:g} s\n" + "\n".join(tail(p) for p in logs))


def alive(pids: set[int]) -> set[int]:
    """The PIDs in ``pids`` that still run (zombies count as gone)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                found.add(pid)
    return found


@dataclass
class Proc:
    """A ``trialfed`` process tree started by a test, in its own session, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    seen: set[int] = field(default_factory=set)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tree(self) -> set[int]:
        """The process and every descendant now, remembered for :meth:`stop`."""
        now = {self.popen.pid, *descendants(self.popen.pid)}
        self.seen |= now
        return now

    def send(self, sig: signal.Signals) -> None:
        self.tree()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace: float = 20.0) -> None:
        """Stop the whole tree: the process, its group, then any descendant left, by PID."""
        self.tree()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=grace)
        for pid in alive(self.seen - {self.popen.pid}):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Federation:
    """Coordinators and sites of one test module (see the module docstring)."""

    tmp: Path
    env: dict[str, str]
    ca: Path
    certs: Path
    bundles: list[Path]
    keys: list[Path]
    site_ids: list[str]
    state: Path
    port: int = 0
    control_port: int = 0
    coordinator: Proc | None = None
    sites: dict[int, Proc] = field(default_factory=dict)
    extra: list[Proc] = field(default_factory=list)
    starts: int = 0

    @property
    def address(self) -> str:
        """The sites' address (nginx)."""
        return f"127.0.0.1:{self.port}"

    @property
    def control_address(self) -> str:
        """The Control API (SuperLink on 127.0.0.1)."""
        return f"127.0.0.1:{self.control_port}"

    @property
    def control(self) -> Control:
        return Control(self.control_address, self.ca, home=self.state / "cli")

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

    def run_cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cli(*args), cwd=self.tmp, env=env or self.env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip

    def start_coordinator(self) -> Proc:
        if not self.port:
            self.port, self.control_port = free_port(), free_port()
        proc = self.spawn(
            "coordinator",
            self.cli(
                "coordinator", "start", "--certs", str(self.certs), "--host", "127.0.0.1",
                "--port", str(self.port), "--control-port", str(self.control_port),
                "--state", str(self.state),
            ),
        )  # fmt: skip
        wait_for(
            lambda: "Control API (runs, enrolment)" in proc.text() or not proc.alive(),
            START_TIMEOUT_S,
            "the coordinator started",
            [proc.log],
        )
        assert proc.alive(), tail(proc.log)
        self.coordinator = proc
        return proc

    def enroll(self, i: int, key: Path | None = None) -> subprocess.CompletedProcess[str]:
        public = (key or self.keys[i]).with_name("site.pub")
        country = self.site_ids[i][:2]
        return self.run_cli(
            "coordinator", "enroll", str(public), "--site", self.site_ids[i],
            "--country", country, "--state", str(self.state),
        )  # fmt: skip

    def start_site(
        self,
        i: int,
        key: Path | None = None,
        retry_s: float = 90.0,
        home: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Proc:
        env = {**self.env, "TRIALFED_ACTIVATION_RETRY_S": str(retry_s), **(extra_env or {})}
        if home is not None:  # another machine serving the same bundle
            env["TRIALFED_HOME"] = str(home)
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

    def connected(self, i: int) -> bool:
        """Whether site ``i``'s current process has connected (activation accepted)."""
        proc = self.sites.get(i)
        return proc is not None and proc.alive() and " connected to " in proc.text()

    def wait_sites(self, indices: list[int], timeout: float = START_TIMEOUT_S) -> None:
        wait_for(
            lambda: all(self.connected(i) for i in indices) and self.online() >= len(indices),
            timeout,
            f"sites {indices} online",
            self.logs(),
        )

    def logs(self) -> list[Path]:
        procs = [self.coordinator, *self.sites.values(), *self.extra]
        return [p.log for p in procs if p is not None]

    def plan(self, name: str, text: str) -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text(text)
        return path

    def stop_all(self) -> None:
        for proc in [*self.extra, *self.sites.values(), self.coordinator]:
            if proc is not None:
                proc.stop()


def build_federation(tmp: Path, n_sites: int = 3, subjects: int = 600) -> Federation:
    """Bundles, certificates and keys for a federation in ``tmp`` (nothing started yet).

    Skips the calling test when nginx is not installed (the coordinator needs it; CI installs
    it in .ci/run), as the browser tests skip without Chromium.
    """
    try:
        nginx_executable()
    except UserError as exc:
        pytest.skip(str(exc))
    env = {
        **os.environ,
        **QUIET_ENV,
        "TRIALFED_HOME": str(tmp / "home"),
        "TRIALFED_STATE": str(tmp / "state"),
        "XDG_DATA_HOME": str(tmp / "xdg"),
        "PYTHONPATH": str(REPO),
        # Flower's processes start `flower-superexec` by name: the venv need not be activated
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
    }
    env.pop("FLWR_HOME", None)
    synth = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "synth", "--out", str(tmp / "synth"),
         "--subjects", str(subjects), "--sites", str(max(n_sites, 2)), "--format", "csv"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    bundles = sorted(p for p in (tmp / "synth" / "sites").iterdir() if p.is_dir())[:n_sites]
    assert len(bundles) == n_sites  # synth writes at least 2
    site_ids = [tomllib.loads((b / "site.toml").read_text())["site"]["id"] for b in bundles]
    files = create_certificates(["127.0.0.1"], tmp / "certs")
    keys = [create_site_keys(tmp / f"key{i}")[0] for i in range(n_sites)]
    return Federation(
        tmp, env, files.ca_cert, tmp / "certs", bundles, keys, site_ids, tmp / "state"
    )


def start_federation(fed: Federation, sites: list[int] | None = None) -> Federation:
    """Start the coordinator, enrol and start ``sites`` (default all), wait until online."""
    indices = list(range(len(fed.bundles))) if sites is None else sites
    fed.start_coordinator()
    for i in indices:
        done = fed.enroll(i)
        assert done.returncode == 0, done.stderr
    for i in indices:
        fed.start_site(i)
    fed.wait_sites(indices)
    return fed
