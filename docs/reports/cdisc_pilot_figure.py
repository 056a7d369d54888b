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

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from experiments.plots import write_plots
    from experiments.presentation import locale_for
    from tests.cdisc import pilot_km_results

    with tempfile.TemporaryDirectory() as tmp:
        results = pilot_km_results(ROOT / "tests" / "data" / "cdiscpilot01", Path(tmp))
        for lang in ("en", "ja", "ko"):
            paths = write_plots(results, Path(tmp) / lang, locale_for(results, lang))["ttde"]
            suffix = "" if lang == "en" else f"-{lang}"
            for path in paths[:1]:  # the PNG (the SVG stays out of the docs: size)
                target = ROOT / "docs" / "reports" / f"cdisc-pilot-km{suffix}{path.suffix}"
                shutil.copyfile(path, target)
                print(target.relative_to(ROOT))


if __name__ == "__main__":
    main()
