"""Test helper: split the public CDISC pilot (ADSL, ADTTE) into one site bundle per SITEID.

It reads the pilot with pandas directly (not with :mod:`sites.bundle`), so bundles written here
are an independent input for the loaders. Values are written as read: the XPT zero quirk
(5.397605e-79 for 0) is deliberately left in, for the loaders to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyreadstat

FORMATS = ("xpt", "csv", "parquet")


def read_pilot(src_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ADSL and ADTTE of the pilot as pandas reads them (strings decoded from Latin-1)."""
    adsl = pd.read_sas(Path(src_dir) / "adsl.xpt", format="xport", encoding="latin-1")
    adtte = pd.read_sas(Path(src_dir) / "adtte.xpt", format="xport", encoding="latin-1")
    return adsl, adtte


def write_table(frame: pd.DataFrame, path: Path, table_name: str) -> None:
    """Write ``frame`` to ``path`` in the format its suffix names (.xpt v5, .csv, .parquet)."""
    suffix = path.suffix.lower()
    if suffix == ".xpt":
        pyreadstat.write_xport(frame, str(path), file_format_version=5, table_name=table_name)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(f"unsupported suffix {suffix!r}; use .xpt, .csv or .parquet")


EXACT_POLICY = "min_cell_count = 0\npublish_site_estimates = true\n"
"""The oracle tests compare the federated answer with lifelines on the pooled rows, which is
exact only with the disclosure rules off (k = 0); each site also publishes its own fit."""


def write_site_toml(
    folder: Path, site_id: str, name: str, country: str, policy: str = EXACT_POLICY
) -> Path:
    """Write a minimal ``site.toml`` (``[site]`` id, name, country and ``[policy]``)."""
    path = folder / "site.toml"
    path.write_text(
        f'[site]\nid = "{site_id}"\nname = "{name}"\ncountry = "{country}"\n\n[policy]\n{policy}',
        encoding="utf-8",
    )
    return path


def split_cdisc_pilot(
    src_dir: Path, out_dir: Path, fmt: str = "xpt", sites: Sequence[str] | None = None
) -> list[Path]:
    """Write one bundle per pilot SITEID under ``out_dir`` and return their folders (sorted).

    Parameters
    ----------
    src_dir : Path
        Folder holding the pilot ``adsl.xpt`` and ``adtte.xpt``.
    out_dir : Path
        Output folder; bundle ``site<SITEID>`` gets ``site.toml`` (id ``SITE<SITEID>``,
        country ``US``), ``adsl.<fmt>`` and ``adtte.<fmt>``.
    fmt : {"xpt", "csv", "parquet"}
        File format of the tables.
    sites : sequence of str, optional
        Only these SITEIDs (e.g. ``["701", "702"]``); all 17 by default.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {set(FORMATS)}; got {fmt!r}")
    adsl, adtte = read_pilot(src_dir)
    folders = []
    siteids = sorted(adsl["SITEID"].unique())
    unknown = set(sites or []) - set(siteids)
    if unknown:
        raise ValueError(f"SITEIDs {sorted(unknown)} are not in the pilot; it has {siteids}")
    for siteid in siteids:
        if sites is not None and siteid not in sites:
            continue
        site_adsl = adsl[adsl["SITEID"] == siteid].reset_index(drop=True)
        site_adtte = adtte[adtte["USUBJID"].isin(site_adsl["USUBJID"])].reset_index(drop=True)
        folder = Path(out_dir) / f"site{siteid}"
        folder.mkdir(parents=True, exist_ok=True)
        write_site_toml(folder, f"SITE{siteid}", f"CDISC pilot site {siteid}", "US")
        write_table(site_adsl, folder / f"adsl.{fmt}", "ADSL")
        write_table(site_adtte, folder / f"adtte.{fmt}", "ADTTE")
        folders.append(folder)
    return folders


def toy_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small valid ADSL/ADTTE pair: 12 subjects, arms Placebo and Active (6 each), PARAMCD TTDE.

    ``CNSR`` is ``[0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0]``: 7 events, 5 censored.
    """
    ids = [f"TOY-{i:03d}" for i in range(1, 13)]
    adsl = pd.DataFrame(
        {
            "STUDYID": "TOY01",
            "USUBJID": ids,
            "SITEID": "001",
            "TRT01P": ["Placebo"] * 6 + ["Active"] * 6,
            "AGE": [50.0 + i for i in range(12)],
            "SEX": ["F", "M"] * 6,
        }
    )
    adtte = pd.DataFrame(
        {
            "USUBJID": ids,
            "PARAMCD": "TTDE",
            "PARAM": "Time to first event",
            "AVAL": [10.0 * i for i in range(1, 13)],
            "CNSR": [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0],
        }
    )
    return adsl, adtte


def write_bundle(
    folder: Path,
    adsl: pd.DataFrame,
    adtte: pd.DataFrame,
    fmt: str = "csv",
    site_id: str = "TOY1",
    country: str = "JP",
) -> Path:
    """Write a bundle (``site.toml``, ``adsl.<fmt>``, ``adtte.<fmt>``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_site_toml(folder, site_id, f"Toy site {site_id}", country)
    write_table(adsl, folder / f"adsl.{fmt}", "ADSL")
    write_table(adtte, folder / f"adtte.{fmt}", "ADTTE")
    return folder


PILOT_KM_PLAN = """
[study]
id = "CDISCPILOT01"
title = "CDISC pilot: time to first dermatologic event"

[[analysis]]
name = "ttde"
kind = "km"
param = "TTDE"
by = "TRT01A"
"""
"""Figure 14-1 of the pilot CSR: KM of time to first dermatologic event by actual treatment."""


def pilot_km_results(src_dir: Path, work: Path) -> dict[str, Any]:
    """The pilot split into its 17 sites, :data:`PILOT_KM_PLAN` run through the federated
    protocol in process; the endpoint label is the ADTTE's ``PARAM`` (AVAL is in days per the
    pilot's define.xml)."""
    from analysis.plan import parse_plan
    from experiments.launch import build_results
    from federation.inprocess import InProcessTransport
    from federation.protocol import run_plan

    bundles = split_cdisc_pilot(src_dir, work / "sites")
    plan = parse_plan(PILOT_KM_PLAN)
    results = build_results(plan, run_plan(plan, InProcessTransport(bundles)), "in-process", 0.0)
    label = str(read_pilot(src_dir)[1]["PARAM"].iloc[0])
    results["params"] = {"TTDE": {"label": label, "unit": "days"}}
    return results
