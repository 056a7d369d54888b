"""Deployment on loopback: real ``trialfed`` coordinator and site processes on 127.0.0.1.

A coordinator (``trialfed coordinator start``: SuperLink behind nginx, TLS, SuperNode
authentication) and the sites (``trialfed site start``: SuperNode + site runner, each enrolled
on the roster) run as separate process trees, started the way docs/deployment.md starts them.

1. Round time (3 sites): ``trialfed run --coordinator`` of the standard efficacy plan, measured
   as a whole process; per round, the slowest site's handling of its message (read from the
   site runners' log lines: task input, answer, reply) and the rest, which is Flower's polling
   (an idle SuperNode fetches every 3 s, ``Grid.send_and_receive`` looks for replies every 3 s).
   What each message cost before the site runner, a fresh ``flwr-clientapp`` process (start,
   imports, bundle load from the Parquet cache), is measured as a whole process too; the
   round times before it are :data:`BASELINE` (measured at the commit named there). What each
   site sends is read off the kernel's TCP counters (``ss -ti``) of its SuperNode's connections.
2. Soak (5 sites): :data:`SOAK_RUNS` consecutive one-round plans, the first site restarted
   (SIGTERM, started again at once) during every tenth run; every run must complete or fail
   naming the restarted site. Process and open-file counts of every tree before and after, and
   the memory (RSS) of every long-lived process over the runs.

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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.data import write_sites
from benchmarks.measure import ENV, ROOT, measure
from benchmarks.plans import EFFICACY_PLAN, write_plan
from federation.deployment.pki import create_certificates, create_site_keys
from federation.deployment.processes import free_port

SITES = 3
SOAK_SITES = 5
SOAK_RUNS = 50
RESTART_EVERY = 10
START_TIMEOUT_S = 120.0
SAMPLE_S = 0.25
BASELINE = {
    "commit": "ae0c726",
    "design": "flower-supernode --isolation subprocess: a new flwr-clientapp process per message",
    "rounds": 3,
    "round_s": [6.747, 7.132, 7.007],
    "protocol_s": 28.1,
}
"""The round times of this benchmark before the site runner (benchmarks/results/deployment.json
at that commit, same plan, 3 x 300 subjects, same machine)."""
SOAK_PLAN = """# Soak: one round (summary + Kaplan-Meier), repeated.
[study]
id = "BENCH-SOAK"
title = "trialfed benchmark: soak"

[run]
min_sites = 0
round_timeout = 30.0

[[analysis]]
name = "table1"
kind = "summary"
by = "TRT01P"

[[analysis]]
name = "km"
kind = "km"
param = "OS"
by = "TRT01P"
"""
_SOCKET = re.compile(r"pid=(\d+)")
_COUNTER = re.compile(r"\b(bytes_acked|bytes_received):(\d+)")
_ANSWERED = re.compile(
    r"run (\d+): message answered in ([\d.]+) s \(input ([\d.]+), answer ([\d.]+), "
    r"reply ([\d.]+)\)"
)


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


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _wait(check: Any, timeout: float, what: str) -> None:
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
        _wait(lambda: "Control API (runs" in log.read_text(), START_TIMEOUT_S, "the coordinator")
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
        _wait(lambda: self.connected_count(i) > after, START_TIMEOUT_S,
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
            self.seen.update(p.pid for p in _tree(proc.pid))

    def long_lived(self) -> dict[str, psutil.Process]:
        """Every process of every tree now, by a readable name (transient ones included)."""
        found = {}
        for name, proc in self.procs.items():
            for p in _tree(proc.pid):
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(p.cmdline())
                    kind = next(
                        (k for k in ("flower-superlink", "flower-superexec", "flower-supernode",
                                     "site_runner", "flwr-serverapp", "nginx: master",
                                     "nginx: worker") if k in cmd),
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


def _answers(fed: LoopbackFederation, run_id: int) -> dict[str, list[dict[str, float]]]:
    """Per site, the runner's handling of each message of run ``run_id``, in order."""
    found: dict[str, list[dict[str, float]]] = {}
    for i in range(len(fed.bundles)):
        name = fed.site_name(i)
        for match in _ANSWERED.finditer(fed.log(name).read_text(errors="replace")):
            if int(match.group(1)) == run_id:
                total, got, work, reply = (float(match.group(k)) for k in range(2, 6))
                found.setdefault(name, []).append(
                    {"total": total, "input": got, "answer": work, "reply": reply}
                )
    return found


def _breakdown(round_s: list[float], answers: dict[str, list[dict[str, float]]]) -> list[Any]:
    rows = []
    for r, seconds in enumerate(round_s):
        handled = [msgs[r] for msgs in answers.values() if r < len(msgs)]
        slowest = max(handled, key=lambda m: m["total"]) if handled else {}
        rows.append(
            {
                "round": r + 1,
                "round_s": round(seconds, 3),
                "slowest_site_s": round(slowest.get("total", 0.0), 3),
                "site_input_s": round(slowest.get("input", 0.0), 3),
                "site_answer_s": round(slowest.get("answer", 0.0), 3),
                "site_reply_s": round(slowest.get("reply", 0.0), 3),
                "polling_and_transport_s": round(seconds - slowest.get("total", 0.0), 3),
            }
        )
    return rows


FRESH_PROCESS = """
import sys, time
from pathlib import Path
t0 = time.perf_counter()
import flwr.supernode.runtime.run_clientapp  # what flwr-clientapp imports
t1 = time.perf_counter()
from federation import client_app  # the ClientApp the bundle ships
t2 = time.perf_counter()
from sites.cache import load_cached
load_cached(Path(sys.argv[1]), sys.argv[2])
t3 = time.perf_counter()
print(f"FRESH {t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f}")
"""


def fresh_process_cost(bundle: Path, cache: Path, timeout: float) -> dict[str, Any]:
    """What every message cost before the site runner: a new process, its imports, the load of
    the bundle from its Parquet cache (the site's own cache, warmed by the runner)."""
    cmd = [sys.executable, "-c", FRESH_PROCESS, str(bundle), str(cache)]
    m = measure(cmd, timeout)
    match = re.search(r"FRESH ([\d.]+) ([\d.]+) ([\d.]+)", m.tail)
    doc: dict[str, Any] = {"wall_s": m.wall_s, "peak_rss_mb": m.peak_tree_rss_mb}
    if match:
        names = ("import_flwr_s", "import_app_s", "load_bundle_s")
        doc.update({k: float(v) for k, v in zip(names, match.groups(), strict=True)})
    return doc


def bench_rounds(work: Path, subjects_per_site: int, timeout: float) -> dict[str, Any]:
    """Start 3 sites, measure one ``trialfed run --coordinator`` of the efficacy plan."""
    base = work / "deployment"
    shutil.rmtree(base, ignore_errors=True)  # keys and state of an earlier run
    bundles = write_sites(base / "data", SITES * subjects_per_site, SITES, "csv")
    plan = write_plan(EFFICACY_PLAN, base / "plans" / "efficacy.toml")
    fed = LoopbackFederation(base, bundles)
    try:
        setup_s = fed.start()
        sampler = _Sampler(fed.port)
        out = base / "out"
        cmd = [sys.executable, "-m", "experiments.cli", "run", str(plan), "--coordinator",
               fed.control, "--out", str(out), "--no-tracking"]  # fmt: skip
        env = {k: fed.env[k] for k in ("TRIALFED_HOME", "TRIALFED_STATE", "PYTHONPATH")}
        m = measure(cmd, timeout, env=env)
        sampler.stop()
        doc: dict[str, Any] = {"sites": SITES, "subjects_per_site": subjects_per_site,
                               "setup_s": round(setup_s, 1), **m.as_dict()}  # fmt: skip
        results = out / "results.json"
        if m.returncode == 0 and results.is_file():
            res = json.loads(results.read_text())
            doc["rounds"], doc["protocol_s"] = res["rounds"], res["seconds"]
            doc["round_s"] = res.get("round_seconds", [])
            doc["round_time_s"] = round(sum(doc["round_s"]), 2)
            doc["ve"] = res["analyses"]["ve"]["ve"]
            submitted = re.search(r"run (\d+) submitted", m.tail)
            if submitted:
                doc["breakdown"] = _breakdown(doc["round_s"], _answers(fed, int(submitted[1])))
        else:
            doc["error_tail"] = m.tail
        doc["per_site"] = [
            {"site": fed.site_name(i), **sampler.sent_by(
                {p.pid for p in _tree(fed.procs[fed.site_name(i)].pid)})}
            for i in range(SITES)
        ]  # fmt: skip
        cache = base / "home" / f"site-{fed.site_name(0)}" / "bundle-cache"
        doc["fresh_clientapp_process"] = fresh_process_cost(bundles[0], cache, timeout)
        doc["before"] = BASELINE
        return doc
    finally:
        fed.stop()


def _snapshot(fed: LoopbackFederation) -> dict[str, dict[str, float]]:
    """RSS (MB) and open files of every process of every tree now."""
    found = {}
    for name, proc in fed.long_lived().items():
        with contextlib.suppress(psutil.Error):
            found[name] = {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds()}
    return found


def _counts(snap: dict[str, dict[str, float]]) -> dict[str, int]:
    steady = {k: v for k, v in snap.items() if "flwr-serverapp" not in k}
    return {"processes": len(steady), "open_files": int(sum(v["fds"] for v in steady.values()))}


def bench_soak(work: Path, runs: int, timeout: float) -> dict[str, Any]:
    """:data:`SOAK_RUNS` one-round plans over 5 sites, a site restarted every tenth run."""
    from analysis.plan import parse_plan
    from federation.deployment.control import run_deployed
    from federation.deployment.roster import Roster

    base = work / "soak"
    shutil.rmtree(base, ignore_errors=True)
    bundles = write_sites(base / "data", SOAK_SITES * 200, SOAK_SITES, "csv")
    fed = LoopbackFederation(base, bundles)
    plan = parse_plan(SOAK_PLAN, "soak plan")
    outcomes: list[dict[str, Any]] = []
    memory: dict[str, list[float]] = {}
    try:
        fed.start()
        before: dict[str, int] = {}
        for n in range(1, runs + 1):
            restart: threading.Timer | None = None
            entry: dict[str, Any] = {"run": n, "restarted": None}
            if n % RESTART_EVERY == 0:  # the site restarts while the run is under way
                connected = fed.connected_count(0)
                entry["restarted"] = fed.site_name(0)
                restart = threading.Timer(0.5, fed.restart_site, args=(0,))
                restart.start()
            started = time.perf_counter()
            try:
                outcome = run_deployed(plan, fed.control, fed.certs.ca_cert, home=base / "cli",
                                       timeout=timeout, roster=Roster(fed.state))  # fmt: skip
                entry.update(result="completed", sites=len(outcome.sites),
                             missing=[m["id"] for m in outcome.sites_missing])  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - each failure is recorded and judged below
                entry.update(result="failed", error=f"{type(exc).__name__}: {exc}"[:600])
            entry["seconds"] = round(time.perf_counter() - started, 2)
            if restart is not None:
                restart.join()
                fed.wait_connected(0, after=connected)
            outcomes.append(entry)
            snap = _snapshot(fed)
            if n == 1:
                before = _counts(snap)
            for name, values in snap.items():
                if "flwr-serverapp" not in name:
                    memory.setdefault(name, []).append(round(values["rss_mb"], 1))
        after = _counts(_snapshot(fed))
    finally:
        fed.stop()
    return _soak_doc(outcomes, before, after, memory, runs)


def _soak_doc(
    outcomes: list[dict[str, Any]],
    before: dict[str, int],
    after: dict[str, int],
    memory: dict[str, list[float]],
    runs: int,
) -> dict[str, Any]:
    clean = [
        o for o in outcomes
        if o["result"] == "completed"
        or (o["restarted"] is not None and o["restarted"] in o.get("error", ""))
    ]  # fmt: skip
    through = {k: v for k, v in memory.items() if len(v) == runs}  # never restarted
    return {
        "sites": SOAK_SITES,
        "runs": runs,
        "completed": sum(1 for o in outcomes if o["result"] == "completed"),
        "failed_naming_the_site": sum(
            1 for o in outcomes if o["result"] == "failed" and o in clean
        ),
        "unclean": [o for o in outcomes if o not in clean],
        "seconds_per_run": sorted(o["seconds"] for o in outcomes)[len(outcomes) // 2],
        "before": before,
        "after": after,
        "rss_mb": {
            k: {"first": v[0], "max": max(v), "last": v[-1], "growth": round(v[-1] - v[0], 1)}
            for k, v in sorted(through.items())
        },
        "runs_detail": outcomes,
    }


def bench_deployment(
    work: Path, subjects_per_site: int, timeout: float, soak_runs: int = SOAK_RUNS
) -> dict[str, Any]:
    """Round time on 3 sites, then the soak on 5 (see the module docstring)."""
    doc = bench_rounds(work, subjects_per_site, timeout)
    if soak_runs:
        try:
            doc["soak"] = bench_soak(work, soak_runs, min(timeout, 180.0))
        except Exception as exc:  # noqa: BLE001 - recorded; the round figures still count
            doc["soak"] = {"error": f"{type(exc).__name__}: {exc}"}
    return doc


def summary_lines(dep: dict[str, Any]) -> list[str]:
    """The round-time breakdown and the soak figures as Markdown (benchmarks/summary.py)."""
    lines: list[str] = []
    before = dep.get("before")
    if before and dep.get("round_s"):
        lines += [
            f"Round time: {sum(before['round_s']):.1f} s before ({before['design']}, "
            f"{before['commit']}) -> **{dep.get('round_time_s', sum(dep['round_s'])):.1f} s** "
            f"now over {dep.get('rounds')} rounds (site runner: one warm process per site).",
            "",
            "| round | round s | slowest site: input / answer / reply s | Flower polling + "
            "transport s |",
            "|---|---|---|---|",
        ]
        for row in dep.get("breakdown", []):
            lines.append(
                f"| {row['round']} | {row['round_s']:.2f} | {row['site_input_s']:.2f} / "
                f"{row['site_answer_s']:.2f} / {row['site_reply_s']:.2f} | "
                f"{row['polling_and_transport_s']:.2f} |"
            )
        fresh = dep.get("fresh_clientapp_process", {})
        if fresh:
            lines += [
                "",
                f"Avoided per message (a fresh `flwr-clientapp` process, measured): "
                f"{fresh.get('wall_s', 0):.2f} s wall, of which import flwr "
                f"{fresh.get('import_flwr_s', 0):.2f} s, import the app "
                f"{fresh.get('import_app_s', 0):.2f} s, load the bundle "
                f"{fresh.get('load_bundle_s', 0):.2f} s; peak "
                f"{fresh.get('peak_rss_mb', 0):.0f} MB.",
            ]
        lines.append("")
    soak = dep.get("soak")
    if soak and "error" not in soak:
        growth = [v["growth"] for v in soak["rss_mb"].values()]
        lines += [
            f"Soak: {soak['runs']} runs on {soak['sites']} sites, a site restarted during every "
            f"{RESTART_EVERY}th run: {soak['completed']} completed, "
            f"{soak['failed_naming_the_site']} failed naming the restarted site, "
            f"{len(soak['unclean'])} otherwise; median {soak['seconds_per_run']} s per run. "
            f"Processes {soak['before']['processes']} -> {soak['after']['processes']}, open "
            f"files {soak['before']['open_files']} -> {soak['after']['open_files']}; RSS growth "
            f"of the long-lived processes over the runs: max {max(growth, default=0):+.1f} MB.",
            "",
            "| process | RSS first MB | max | last |",
            "|---|---|---|---|",
        ]
        for name, v in soak["rss_mb"].items():
            lines.append(f"| {name.rsplit('/', 1)[0]} | {v['first']} | {v['max']} | {v['last']} |")
        lines.append("")
    elif soak:
        lines += [f"Soak failed: {soak['error']}", ""]
    return lines
