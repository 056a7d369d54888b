"""A federation on 127.0.0.1 for the deployment benchmarks: a coordinator and sites started as
``trialfed`` processes, the way docs/deployment.md starts them, each in its own session with its
log file; :meth:`LoopbackFederation.stop` stops every process seen, by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.measure import ENV, ROOT
from federation.deployment.pki import create_certificates, create_site_keys
from federation.deployment.processes import free_port

START_TIMEOUT_S = 120.0


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not within {timeout:g} s")


@dataclass
class LoopbackFederation:
    """A coordinator and sites as ``trialfed`` processes (see the module docstring)."""

    base: Path
    bundles: list[Path]
    extra_env: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)
    starts: int = 0

    def __post_init__(self) -> None:
        self.certs = create_certificates(["127.0.0.1"], self.base / "certs")
        self.keys = [create_site_keys(self.base / f"key{i}")[0] for i in range(len(self.bundles))]
        self.ids = [tomllib.loads((b / "site.toml").read_text())["site"] for b in self.bundles]
        self.port, self.control_port = free_port(), free_port()
        self.state = self.base / "state"
        self.env = {
            **os.environ, **ENV, "TRIALFED_HOME": str(self.base / "home"),
            "TRIALFED_STATE": str(self.state), "PYTHONPATH": str(ROOT),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            **self.extra_env,
        }  # fmt: skip
        self.env.pop("FLWR_HOME", None)
        (self.base / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def control(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    def log(self, name: str) -> Path:
        return self.base / "logs" / f"{name}.log"

    def cli(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.starts += 1
        with self.log(name).open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "experiments.cli", *args], cwd=ROOT, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start(self) -> float:
        """Start the coordinator, enrol and start every site; returns the seconds it took."""
        started = time.perf_counter()
        self.cli("coordinator", "coordinator", "start", "--certs", str(self.base / "certs"),
                 "--host", "127.0.0.1", "--port", str(self.port),
                 "--control-port", str(self.control_port), "--state", str(self.state))  # fmt: skip
        log = self.log("coordinator")
        wait(lambda: "Control API (runs" in log.read_text(), START_TIMEOUT_S, "the coordinator")
        for key, site in zip(self.keys, self.ids, strict=True):
            done = subprocess.run(
                [sys.executable, "-m", "experiments.cli", "coordinator", "enroll",
                 str(key.with_name("site.pub")), "--site", site["id"], "--country",
                 site["country"], "--state", str(self.state)],
                env=self.env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"enrolling {site['id']}: {done.stderr[-2000:]}")
        for i in range(len(self.bundles)):
            self.start_site(i)
        for i in range(len(self.bundles)):
            self.wait_connected(i)
        return time.perf_counter() - started

    def site_name(self, i: int) -> str:
        return str(self.ids[i]["id"])

    def start_site(self, i: int) -> None:
        self.cli(self.site_name(i), "site", "start", str(self.bundles[i]), "--coordinator",
                 f"127.0.0.1:{self.port}", "--ca", str(self.certs.ca_cert),
                 "--key", str(self.keys[i]))  # fmt: skip

    def connected_count(self, i: int) -> int:
        """How many times site ``i`` has connected (its log is kept across restarts)."""
        return self.log(self.site_name(i)).read_text(errors="replace").count(" connected to ")

    def wait_connected(self, i: int, after: int = 0) -> None:
        wait(lambda: self.connected_count(i) > after, START_TIMEOUT_S,
              f"site {self.site_name(i)} connected")  # fmt: skip

    def restart_site(self, i: int) -> None:
        """SIGTERM the site's ``trialfed`` process, wait for it, start it again at once."""
        proc = self.procs[self.site_name(i)]
        self.remember()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        self.start_site(i)

    def remember(self) -> None:
        for proc in self.procs.values():
            self.seen.update(p.pid for p in tree(proc.pid))

    def long_lived(self) -> dict[str, psutil.Process]:
        """Every process of every tree now, by a readable name (transient ones included)."""
        found = {}
        for name, proc in self.procs.items():
            for p in tree(proc.pid):
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(p.cmdline())
                    kind = next(
                        (k for k in ("flower-superlink", "flower-superexec", "flower-supernode",
                                     "deployment.supernode", "site_runner", "flwr-serverapp",
                                     "nginx: master", "nginx: worker") if k in cmd),
                        "trialfed",
                    )  # fmt: skip
                    found[f"{name}/{kind}/{p.pid}"] = p
        return found

    def stop(self) -> None:
        """SIGTERM every ``trialfed`` process, then kill whatever is left, by PID."""
        self.remember()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        left = []
        for pid in self.seen:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                process.kill()
                left.append(process)
        psutil.wait_procs(left, timeout=15)
