"""Read the number-at-risk table of the published CDISC pilot KM figure out of its PDF.

Source: R Consortium R Submissions Working Group, Pilot 1 (the CDISC pilot study re-analysed in
R and submitted to FDA), ``output/tlf-kmplot.pdf`` in github.com/RConsortium/submissions-pilot1
(commit cbc154b52020122a6982d60ee0d06b7a8d1c1600 of that file; GPL-3 repository, so the PDF is
not copied here). It reproduces CDISC pilot CSR Figure 14-1, "Time to first dermatologic event
by treatment group" (safety population, TRT01A), with a risk table at 0, 20, ..., 200 days.

Usage: ``python docs/reports/published_at_risk.py tlf-kmplot.pdf`` prints the text runs of the
page by position; the risk table is the block of rows labelled with the three arms. The values
were copied into tests/test_cdisc_km_figure.py (PUBLISHED) and docs/reports.md.
"""

from __future__ import annotations

import re
import sys
import zlib
from pathlib import Path


def text_runs(pdf: Path) -> list[tuple[float, float, str]]:
    """(y, x, text) of every text-showing operator in the PDF's Flate content streams."""
    data = pdf.read_bytes()
    runs = []
    for stream in re.findall(rb"stream\r?\n(.*?)endstream", data, re.S):
        try:
            content = zlib.decompress(stream.rstrip(b"\r\n")).decode("latin-1")
        except zlib.error:
            continue  # an image or colour profile, not a content stream
        for match in re.finditer(r"([\d.]+) ([\d.]+) Tm (\[.*?\]|\(.*?\)) ?TJ?", content):
            x, y, shown = match.groups()
            runs.append((float(y), float(x), "".join(re.findall(r"\((.*?)\)", shown))))
    return runs


def main(path: str) -> None:
    for y, x, text in sorted(text_runs(Path(path)), key=lambda r: (-r[0], r[1])):
        print(f"{y:8.2f} {x:8.2f}  {text}")


if __name__ == "__main__":
    main(sys.argv[1])
