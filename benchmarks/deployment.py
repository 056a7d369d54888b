"""Deployment on loopback: real ``trialfed`` coordinator and site processes on 127.0.0.1.

A coordinator (``trialfed coordinator start``: SuperLink behind nginx, TLS, SuperNode
authentication) and the sites (``trialfed site start``: SuperNode + site runner, each enrolled
on the roster) run as separate process trees, started the way docs/deployment.md starts them.

1. Round time (3 sites): ``trialfed run --coordinator`` of the standard efficacy plan, measured
   as a whole process; per round, the slowest site's handling of its message (read from the
   site runners' log lines: task input, answer, reply) and the rest, which is polling and
   transport. The same run is measured twice: with prompt polling (the default,
   :mod:`federation.deployment.supernode`) and with Flower's own waits (an idle SuperNode
   fetches every 3 s, pushes a reply at 0.5 s checks, asks again for a missing message object
   after 1 s: ``TRIALFED_STOCK_FLOWER_POLLING=1``), so the ratio is from one run.
   What each message cost before the site runner, a fresh ``flwr-clientapp`` process (start,
   imports, bundle load from the Parquet cache), is measured as a whole process too; the
   round times before it are :data:`BASELINE` (measured at the commit named there). What each
   site sends is read off the kernel's TCP counters (``ss -ti``) of its SuperNode's connections.
2. Soak (5 sites): :mod:`benchmarks.deployment_soak`.

Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from benchmarks.data import write_sites
from benchmarks.deployment_soak import SOAK_RUNS, bench_soak, soak_lines
from benchmarks.loopback import LoopbackFederation, tree
from benchmarks.measure import measure
from benchmarks.plans import EFFICACY_PLAN, write_plan
from federation.deployment.processes import STOCK_POLLING_ENV

SITES = 3
STOCK_KEYS = ("returncode", "rounds", "round_s", "round_time_s", "ve", "breakdown", "error_tail")
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


def _only_run(fed: LoopbackFederation) -> int | None:
    """The run id the sites answered, when they answered exactly one run."""
    runs = {
        int(match.group(1))
        for i in range(len(fed.bundles))
        for match in _ANSWERED.finditer(fed.log(fed.site_name(i)).read_text(errors="replace"))
    }
    return runs.pop() if len(runs) == 1 else None


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


def bench_rounds(
    work: Path, subjects_per_site: int, timeout: float, stock_polling: bool = False
) -> dict[str, Any]:
    """Start 3 sites, measure one ``trialfed run --coordinator`` of the efficacy plan
    (``stock_polling``: with Flower's own waits, :data:`STOCK_POLLING_ENV`)."""
    base = work / ("deployment-stock" if stock_polling else "deployment")
    shutil.rmtree(base, ignore_errors=True)  # keys and state of an earlier run
    bundles = write_sites(base / "data", SITES * subjects_per_site, SITES, "csv")
    plan = write_plan(EFFICACY_PLAN, base / "plans" / "efficacy.toml")
    extra = {STOCK_POLLING_ENV: "1"} if stock_polling else {}
    fed = LoopbackFederation(base, bundles, extra_env=extra)
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
            # the run id, from the run's own output or else the sites' logs (this federation
            # served only this run): the tail of a long output may have lost the first lines
            submitted = re.search(r"run (\d+) submitted", m.tail)
            run_id = int(submitted[1]) if submitted else _only_run(fed)
            if run_id is not None:
                doc["breakdown"] = _breakdown(doc["round_s"], _answers(fed, run_id))
        else:
            doc["error_tail"] = m.tail
        doc["per_site"] = [
            {"site": fed.site_name(i), **sampler.sent_by(
                {p.pid for p in tree(fed.procs[fed.site_name(i)].pid)})}
            for i in range(SITES)
        ]  # fmt: skip
        if not stock_polling:
            cache = base / "home" / f"site-{fed.site_name(0)}" / "bundle-cache"
            doc["fresh_clientapp_process"] = fresh_process_cost(bundles[0], cache, timeout)
            doc["before"] = BASELINE
        return doc
    finally:
        fed.stop()


def bench_deployment(
    work: Path, subjects_per_site: int, timeout: float, soak_runs: int = SOAK_RUNS
) -> dict[str, Any]:
    """Round time on 3 sites, then the soak on 5 (see the module docstring)."""
    doc = bench_rounds(work, subjects_per_site, timeout)
    stock = bench_rounds(work, subjects_per_site, timeout, stock_polling=True)
    doc["stock_polling"] = {k: stock.get(k) for k in STOCK_KEYS}
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
    stock = dep.get("stock_polling") or {}
    if before and dep.get("round_s"):
        lines += [
            f"Round time: {sum(before['round_s']):.1f} s before ({before['design']}, "
            f"{before['commit']}) -> **{dep.get('round_time_s', sum(dep['round_s'])):.1f} s** "
            f"now over {dep.get('rounds')} rounds (a warm site runner; prompt polling).",
        ]
        if stock.get("round_time_s"):
            lines.append(
                f"In this run with Flower's own waits ({STOCK_POLLING_ENV}=1): "
                f"{stock['round_time_s']:.1f} s; prompt polling: "
                f"{dep.get('round_time_s', 0):.1f} s (ratio "
                f"{dep.get('round_time_s', 0) / stock['round_time_s']:.2f})."
            )
        lines += [
            "",
            "| round | round s | slowest site: input / answer / reply s | polling + transport s |",
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
    return [*lines, *soak_lines(dep.get("soak"))]
