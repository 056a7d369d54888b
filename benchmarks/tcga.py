"""Fed-TCGA-BRCA (FLamby) as six trialfed site bundles.

``python -m benchmarks.tcga OUT [--data DIR]`` writes ``OUT/R0`` ... ``OUT/R5``, one bundle per
FLamby region (0 Northeast, 1 South, 2 West, 3 Midwest, 4 Europe, 5 Canada), from
``brca.csv`` and FLamby's ``train_test_split.csv`` (``fold2`` = ``train_k`` / ``test_k``, k the
region). The 8 patients of region "Other" are not in the split and are dropped.

ADSL: ``USUBJID`` = the TCGA barcode (``pid``), ``SITEID`` = ``R<k>``, ``TRT01P`` constant
(``"Not applicable"``: no treatment arms), ``AGE`` = ``age_at_index``, ``SEX`` empty (not in the
data), the 38 binary clinical features under upper-case names (:func:`adsl_name`), and
``TESTFL`` = ``"Y"`` for FLamby's test patients. ADTTE: ``OS`` for every patient (``AVAL = T``
days, ``CNSR = 1 - E``) and ``OSTRAIN``, the same rows for the training patients only (so that an
analysis without a test flag, e.g. the Newton Cox of the survival engine, fits on the training
split).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pandas as pd

REGIONS = ("Northeast", "South", "West", "Midwest", "Europe", "Canada")
COUNTRIES = ("US", "US", "US", "US", "DE", "CA")
"""ISO codes for site.toml (Europe: its largest country in centers.csv, Germany)."""
PUBLISHED: dict[str, Any] = {
    "n": (311, 196, 206, 162, 162, 51),
    "events": (59, 39, 22, 19, 9, 3),
    "train": 866,
    "test": 222,
}
"""FLamby's published sizes (shared/data/README.md), checked by :func:`load`."""
STUDY = "TCGA-BRCA"
POLICY = '[policy]\nmin_cell_count = 0\nallowed_analyses = ["summary", "km", "cox", "train"]\n'


def adsl_name(column: str) -> str:
    """ADSL-style name: ``race_black or african american`` -> ``RACE_BLACK_OR_AFRICAN_AMERICAN``."""
    if column == "age_at_index":
        return "AGE"
    return re.sub(r"[^A-Za-z0-9]+", "_", column).strip("_").upper()


def load(data: Path) -> pd.DataFrame:
    """brca.csv joined to FLamby's split: columns ``region`` (0-5) and ``test`` (bool) added.

    Raises
    ------
    ValueError
        When the per-region counts or events differ from FLamby's published ones.
    """
    brca = pd.read_csv(data / "brca.csv")
    split = pd.read_csv(data / "train_test_split.csv")
    frame = brca.merge(split, on="pid", how="inner")  # drops region "Other" (not in the split)
    frame["region"] = frame["fold2"].str.split("_").str[1].astype(int)
    frame["test"] = frame["fold"] == "test"
    counts = frame.groupby("region").size().tolist()
    events = frame.groupby("region")["E"].sum().astype(int).tolist()
    if tuple(counts) != PUBLISHED["n"] or tuple(events) != PUBLISHED["events"]:
        raise ValueError(
            f"Fed-TCGA-BRCA regions: n {counts}, events {events}; expected {PUBLISHED}"
        )
    if int((~frame["test"]).sum()) != PUBLISHED["train"]:
        raise ValueError(f"expected {PUBLISHED['train']} training patients")
    return frame


def features(frame: pd.DataFrame) -> list[str]:
    """The 39 FLamby features, as ADSL names."""
    skip = {"pid", "E", "T", "fold", "fold2", "region", "test"}
    return [adsl_name(c) for c in frame.columns if c not in skip]


def write_bundles(out: Path, data: Path) -> list[Path]:
    """Write the six bundles (CSV) into ``out``; return their folders, region order."""
    frame = load(data)
    raw = [
        c for c in frame.columns if c not in {"pid", "E", "T", "fold", "fold2", "region", "test"}
    ]
    folders = []
    for k, region in enumerate(REGIONS):
        rows = frame[frame["region"] == k].reset_index(drop=True)
        folder = out / f"R{k}"
        folder.mkdir(parents=True, exist_ok=True)
        adsl = pd.DataFrame(
            {
                "STUDYID": STUDY,
                "USUBJID": rows["pid"],
                "SITEID": f"R{k}",
                "TRT01P": "Not applicable",
                "SEX": "",
                "TESTFL": rows["test"].map({True: "Y", False: "N"}),
            }
        )
        for column in raw:
            adsl[adsl_name(column)] = rows[column]
        os_rows = pd.DataFrame(
            {
                "USUBJID": rows["pid"],
                "PARAMCD": "OS",
                "PARAM": "Overall survival (days)",
                "AVAL": rows["T"],
                "CNSR": (1 - rows["E"]).astype(int),
            }
        )
        train_rows = os_rows[~rows["test"]].assign(
            PARAMCD="OSTRAIN", PARAM="Overall survival (days), training patients"
        )
        adsl.to_csv(folder / "adsl.csv", index=False)
        pd.concat([os_rows, train_rows]).to_csv(folder / "adtte.csv", index=False)
        (folder / "site.toml").write_text(
            f'[site]\nid = "R{k}"\nname = "{region}"\ncountry = "{COUNTRIES[k]}"\n\n{POLICY}',
            encoding="utf-8",
        )
        folders.append(folder)
    return folders


def main(argv: list[str] | None = None) -> int:
    """Command line: write the bundles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/tcga_brca"))
    args = parser.parse_args(argv)
    for folder in write_bundles(args.out, args.data):
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
