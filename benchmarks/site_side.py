"""Site-side cost of one bundle, as a whole process: ``python -m benchmarks.site_side OUT BUNDLE``.

Measures the cold load (parse + validate) of the bundle, the endpoint join, the design
preparation, the round-1 local fit and the per-round Cox evaluation with the process's peak
memory; then the on-disk cache (first write, then a warm read, when :mod:`sites.cache` exists in
the tree under test) and the peak of answering one Cox message from it.
Runs against whatever ``analysis``/``sites`` packages come first on ``sys.path``, so the
runner can time the code before and after an optimisation side by side.
"""

from __future__ import annotations

import importlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from analysis import cox
from benchmarks.data import COVARIATES, PARAMCD
from sites.bundle import load_bundle


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _peak_mb() -> float:
    """Peak resident memory (MB) of this process since it started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _answer(site: Any, out: dict[str, Any], prefix: str = "") -> None:
    """Endpoint join, design, local fit and Cox rounds on a loaded bundle, timed into ``out``."""
    out[f"{prefix}survival_data_s"], data = _timed(lambda: site.survival_data(PARAMCD))
    spec = cox.CoxSpec(covariates=COVARIATES, strata=("SITE",), ties="efron")
    out[f"{prefix}prepare_s"], design = _timed(lambda: cox.prepare(data, spec))
    out[f"{prefix}local_fit_s"], fit = _timed(lambda: cox.local_fit(design, spec))
    beta = np.asarray(fit.beta, dtype=np.float64)
    rounds = []
    for _ in range(3):
        seconds, _ = _timed(lambda: cox.stratified_derivatives(design, spec, beta))
        rounds.append(seconds)
    out[f"{prefix}cox_round_s"] = statistics.median(rounds)
    out["n"] = int(data.n)


def _message_process(bundle: Path, folder: Path) -> dict[str, Any]:
    """Peak memory and timings of a fresh process answering one Cox message from the cache."""
    with tempfile.TemporaryDirectory(prefix="trialfed-message-") as scratch:
        target = Path(scratch) / "message.json"
        cmd = [sys.executable, "-m", "benchmarks.site_side", "--message", str(folder)]
        subprocess.run([*cmd, str(target), str(bundle)], check=True, timeout=600)
        return dict(json.loads(target.read_text(encoding="utf-8")))


def message(bundle: Path, folder: Path) -> dict[str, Any]:
    """One Cox message answered from the on-disk cache in this (fresh) process."""
    from sites.cache import load_cached

    out: dict[str, Any] = {}
    out["message_load_s"], site = _timed(lambda: load_cached(bundle, str(folder)))
    _answer(site, out, prefix="message_")
    out["message_maxrss_mb"] = _peak_mb()
    return out


def measure(bundle: Path) -> dict[str, Any]:
    """Timings (seconds) and peak memory (MB) of the site-side steps on ``bundle``.

    ``maxrss_mb``: the peak of a cold process (parse + validate, join, design, local fit, Cox
    rounds). ``message_*``: a fresh process that answers one Cox message from the on-disk
    cache, as a deployment ClientApp process does. ``cox_round_unprepared_s`` builds the
    design again inside the round (a second design held for a moment); timed after the peaks.
    """
    out: dict[str, Any] = {}
    out["load_cold_s"], cold = _timed(lambda: load_bundle(bundle))
    _answer(cold, out)
    out["maxrss_mb"] = _peak_mb()
    import sites.bundle

    try:
        cache_module: ModuleType | None = importlib.import_module("sites.cache")
    except ImportError:
        cache_module = None
    # only a cache of the tree under test (an editable install may resolve another tree's)
    if cache_module is not None and (
        Path(str(cache_module.__file__)).parent == Path(sites.bundle.__file__).parent
    ):
        load_cached = cache_module.load_cached
        folder = Path(tempfile.mkdtemp(prefix="trialfed-cache-"))
        try:
            out["load_cache_write_s"], _ = _timed(lambda: load_cached(bundle, str(folder)))
            out["load_cache_hit_s"], hit = _timed(lambda: load_cached(bundle, str(folder)))
            out["cache_hit_equal"] = bool(
                hit.adsl.equals(cold.adsl) and hit.adtte.equals(cold.adtte)
            )
            del hit
            # a fresh process, as in deployment: this one still holds the cold objects' pages
            out.update(_message_process(bundle, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    data = cold.survival_data(PARAMCD)
    spec = cox.CoxSpec(covariates=COVARIATES, strata=("SITE",), ties="efron")
    beta = np.zeros(len(COVARIATES))
    out["cox_round_unprepared_s"], _ = _timed(lambda: cox.stratified_derivatives(data, spec, beta))
    return out


def main(argv: list[str]) -> int:
    """``OUT.json BUNDLE``, or ``--message CACHE_DIR OUT.json BUNDLE``."""
    if argv[0] == "--message":
        folder, target, bundle = argv[1:4]
        result = message(Path(bundle), Path(folder))
    else:
        target, bundle = argv[:2]
        result = measure(Path(bundle))
    Path(target).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
