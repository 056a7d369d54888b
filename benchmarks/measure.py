"""Whole-process measurements: wall time, peak memory of the process tree, output tail."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MPLBACKEND": "Agg",
}


@dataclass
class Measured:
    """One whole-process measurement."""

    returncode: int
    wall_s: float
    peak_tree_rss_mb: float  # peak of the summed RSS of the process and all its descendants
    children_maxrss_mb: float  # ru_maxrss of the largest waited-for child
    timed_out: bool
    tail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "returncode": self.returncode,
            "wall_s": round(self.wall_s, 3),
            "peak_tree_rss_mb": round(self.peak_tree_rss_mb, 1),
            "children_maxrss_mb": round(self.children_maxrss_mb, 1),
            "timed_out": self.timed_out,
        }


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def measure(
    cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Measured:
    """Run ``cmd`` as a subprocess; wall time, peak memory of its process tree, output tail.

    ``cwd`` comes first on a ``python -m`` child's ``sys.path``: it selects the source tree.
    """
    full_env = {**os.environ, **ENV, **(env or {})}
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
        )
        watcher = psutil.Process(proc.pid)
        peak = 0
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _tree_rss(watcher))
            if time.perf_counter() - start > timeout and not timed_out:
                for child in watcher.children(recursive=True):
                    child.kill()
                proc.kill()
                timed_out = True
            time.sleep(0.1)
        wall = time.perf_counter() - start
        returncode = os.waitstatus_to_exitcode(status)
        proc.returncode = returncode
        maxrss = usage.ru_maxrss / 1024.0
        log.seek(0)
        tail = log.read()[-3000:]
    return Measured(returncode, wall, peak / 2**20, maxrss, timed_out, tail)
