"""Deployment on loopback: the standard efficacy plan over real Flower processes on 127.0.0.1.

A coordinator (``trialfed coordinator start``: SuperLink with TLS and SuperNode authentication)
and three sites (``trialfed site start``: SuperNodes, each enrolled by its public key) run as
separate process trees, started the way docs/deployment.md starts them. ``trialfed run
--coordinator`` is measured as a whole process: rounds, wall time, seconds per round. What each
site sends is
read off the kernel's TCP counters (``ss -ti``: ``bytes_acked`` and ``bytes_received`` of the
SuperNode's connections to the coordinator's port), sampled through the run, so TLS, gRPC
framing and Flower's polling are included: the bytes that leave the hospital.
Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.data import write_sites
from benchmarks.measure import ENV, ROOT, measure
from benchmarks.plans import EFFICACY_PLAN, write_plan
from federation.deployment.control import Control
from federation.deployment.pki import create_certificates, create_site_keys
from federation.deployment.processes import free_port, wait_for_port

SITES = 3
START_TIMEOUT_S = 120.0
SAMPLE_S = 0.25
_SOCKET = re.compile(r"pid=(\d+)")
_COUNTER = re.compile(r"\b(bytes_acked|bytes_received):(\d+)")


def _connections(port: int) -> dict[tuple[int, str], dict[str, int]]:
    """Established TCP connections to ``port``: (pid, local address) -> kernel byte counters."""
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout  # fmt: skip
    found: dict[tuple[int, str], dict[str, int]] = {}
    lines = out.splitlines()
    for head, info in zip(lines[::2], lines[1::2], strict=False):
        pids = _SOCKET.findall(head)
        fields = head.split()
        if not pids or len(fields) < 3:
            continue
        counters = {k: int(v) for k, v in _COUNTER.findall(info)}
        for pid in pids:
            found[(int(pid), fields[2])] = counters
    return found


class _Sampler:
    """Keeps the last counters of every connection seen while it runs (closed ones included)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.first = _connections(port)
        self.last = dict(self.first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.last.update(_connections(self.port))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.last.update(_connections(self.port))

    def sent_by(self, pids: set[int]) -> dict[str, int]:
        """Bytes sent and received over the run by connections of processes in ``pids``."""
        total = {"bytes_sent": 0, "bytes_received": 0}
        for key, counters in self.last.items():
            if key[0] not in pids:
                continue
            base = self.first.get(key, {})
            for ours, kernel in (
                ("bytes_sent", "bytes_acked"),
                ("bytes_received", "bytes_received"),
            ):
                total[ours] += counters.get(kernel, 0) - base.get(kernel, 0)
        return total


def _tree(pid: int) -> set[int]:
    try:
        return {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return {pid}


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop each process group, then every descendant left, by PID."""
    trees = [_tree(p.pid) for p in procs]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    left = []
    for pid in set().union(*trees) if trees else set():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            process.kill()
            left.append(process)
    psutil.wait_procs(left, timeout=15)


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not within {timeout:g} s")


def bench_deployment(work: Path, subjects_per_site: int, timeout: float) -> dict[str, Any]:
    """Start the federation, measure one ``trialfed run --coordinator``, stop everything."""
    base = work / "deployment"
    shutil.rmtree(base, ignore_errors=True)  # keys and state of an earlier run
    bundles = write_sites(base / "data", SITES * subjects_per_site, SITES, "csv")
    plan = write_plan(EFFICACY_PLAN, base / "plans" / "efficacy.toml")
    certs = create_certificates(["127.0.0.1"], base / "certs")
    keys = [create_site_keys(base / f"key{i}")[0] for i in range(SITES)]
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ, **ENV, "TRIALFED_HOME": str(base / "home"), "PYTHONPATH": str(ROOT),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }  # fmt: skip
    env.pop("FLWR_HOME", None)
    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "experiments.cli", *args], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        procs.append(proc)
        return proc

    try:
        started = time.perf_counter()
        spawn("coordinator", "coordinator", "start", "--certs", str(base / "certs"),
              "--host", "127.0.0.1", "--port", str(port))  # fmt: skip
        if not wait_for_port("127.0.0.1", port, START_TIMEOUT_S):
            raise RuntimeError("the coordinator did not listen")
        control = Control(address, certs.ca_cert, home=base / "cli")
        _wait(lambda: _registered(control, keys[0]), START_TIMEOUT_S, "the first enrolment")
        for key in keys[1:]:
            control.register(key.with_name("site.pub"))
        sites = [
            spawn(f"site{i}", "site", "start", str(bundle), "--coordinator", address,
                  "--ca", str(certs.ca_cert), "--key", str(keys[i]))
            for i, bundle in enumerate(bundles)
        ]  # fmt: skip
        _wait(lambda: _online(control) == SITES, START_TIMEOUT_S, f"{SITES} sites online")
        setup_s = time.perf_counter() - started
        sampler = _Sampler(port)
        out = base / "out"
        cmd = [sys.executable, "-m", "experiments.cli", "run", str(plan), "--coordinator",
               address, "--ca", str(certs.ca_cert), "--out", str(out), "--no-tracking"]  # fmt: skip
        m = measure(cmd, timeout, env={k: env[k] for k in ("TRIALFED_HOME", "PYTHONPATH")})
        sampler.stop()
        doc: dict[str, Any] = {"sites": SITES, "subjects_per_site": subjects_per_site,
                               "setup_s": round(setup_s, 1), **m.as_dict()}  # fmt: skip
        results = out / "results.json"
        if m.returncode == 0 and results.is_file():
            res = json.loads(results.read_text())
            doc["rounds"], doc["protocol_s"] = res["rounds"], res["seconds"]
            doc["round_s"] = res.get("round_seconds", [])
            doc["ve"] = res["analyses"]["ve"]["ve"]
        else:
            doc["error_tail"] = m.tail
        doc["per_site"] = [
            {"site": bundle.name, **sampler.sent_by(_tree(proc.pid))}
            for bundle, proc in zip(bundles, sites, strict=True)
        ]
        return doc
    finally:
        _stop(procs)


def _registered(control: Control, key: Path) -> bool:
    try:
        control.register(key.with_name("site.pub"))
    except Exception:  # noqa: BLE001 - the Control API is not up yet: try again
        return False
    return True


def _online(control: Control) -> int:
    try:
        return sum(1 for n in control.nodes() if n.get("status") == "online")
    except Exception:  # noqa: BLE001 - not reachable yet
        return -1
