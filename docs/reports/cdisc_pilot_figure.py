"""Draw the CDISC pilot Kaplan-Meier figure the way ``trialfed run`` draws it, for docs/reports.md.

The pilot ADaM (tests/data/cdiscpilot01) is split into its 17 investigator sites, the KM analysis
of time to first dermatologic event by actual treatment (TRT01A, as published Figure 14-1) runs
through the federated protocol in process, and the figure is written to
``docs/reports/cdisc-pilot-km.png`` (and ``-ja``, ``-ko``). Run from the repository root:
``.venv/bin/python docs/reports/cdisc_pilot_figure.py``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PLAN = """
[study]
id = "CDISCPILOT01"
title = "CDISC pilot: time to first dermatologic event"

[[analysis]]
name = "ttde"
kind = "km"
param = "TTDE"
by = "TRT01A"
"""


def pilot_results(work: Path) -> dict[str, Any]:
    """The federated KM of the pilot, with the endpoint label the ADTTE gives (``PARAM``; AVAL
    is in days per the pilot's define.xml)."""
    sys.path.insert(0, str(ROOT))
    from analysis.plan import parse_plan
    from experiments.launch import build_results
    from federation.inprocess import InProcessTransport
    from federation.protocol import run_plan
    from tests.cdisc import read_pilot, split_cdisc_pilot

    source = ROOT / "tests" / "data" / "cdiscpilot01"
    bundles = split_cdisc_pilot(source, work / "sites")
    plan = parse_plan(PLAN)
    results = build_results(plan, run_plan(plan, InProcessTransport(bundles)), "in-process", 0.0)
    label = str(read_pilot(source)[1]["PARAM"].iloc[0])
    results["params"] = {"TTDE": {"label": label, "unit": "days"}}
    return results


def main() -> None:
    from experiments.plots import write_plots
    from experiments.presentation import locale_for

    with tempfile.TemporaryDirectory() as tmp:
        results = pilot_results(Path(tmp))
        for lang in ("en", "ja", "ko"):
            paths = write_plots(results, Path(tmp) / lang, locale_for(results, lang))["ttde"]
            suffix = "" if lang == "en" else f"-{lang}"
            for path in paths:
                target = ROOT / "docs" / "reports" / f"cdisc-pilot-km{suffix}{path.suffix}"
                shutil.copyfile(path, target)
                print(target.relative_to(ROOT))


if __name__ == "__main__":
    main()
