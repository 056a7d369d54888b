"""Real, shipped survival data sets written as trialfed site bundles, and pooled oracles.

lifelines ships NCCTG lung (split by its real institution code ``inst``), GBSG2 and leukemia;
the CDISC pilot is vendored in tests/data. Each becomes one ADaM-shaped bundle per site so that a
federated run can be compared with lifelines/statsmodels fitted on the pooled rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.cdisc import write_bundle

PARAM = "OS"


def bundles_from_frame(
    frame: pd.DataFrame,
    out_dir: Path,
    *,
    site: str,
    time: str,
    event: str,
    arm: str,
    country: dict[str, str] | None = None,
    fmt: str = "csv",
) -> list[Path]:
    """Write one bundle per value of ``site``; ``event`` is 1 for an event, 0 for censored.

    Every other column of ``frame`` goes to ADSL (upper-cased); AGE and SEX are required by the
    ADaM contract, so the frame must have them.
    """
    frame = frame.reset_index(drop=True).copy()
    frame.columns = [c.upper() for c in frame.columns]
    site, time, event, arm = site.upper(), time.upper(), event.upper(), arm.upper()
    frame["USUBJID"] = [f"S-{i:05d}" for i in range(len(frame))]
    folders = []
    for site_value, rows in frame.groupby(site, sort=True):
        site_id = f"S{site_value}"
        adsl = rows.drop(columns=[time, event]).copy()
        adsl.insert(0, "STUDYID", "ORACLE")
        adsl["SITEID"] = str(site_value)
        adsl["TRT01P"] = rows[arm].astype(str)
        adtte = pd.DataFrame(
            {
                "USUBJID": rows["USUBJID"],
                "PARAMCD": PARAM,
                "PARAM": "Overall survival",
                "AVAL": rows[time].astype(float),
                "CNSR": 1 - rows[event].astype(int),
            }
        )
        land = (country or {}).get(str(site_value), "US")
        folders.append(
            write_bundle(out_dir / site_id, adsl, adtte, fmt=fmt, site_id=site_id, country=land)
        )
    return folders


def lung() -> pd.DataFrame:
    """NCCTG lung, complete cases of the modelled columns, split later by ``inst``."""
    from lifelines.datasets import load_lung

    df = load_lung().dropna(subset=["inst", "ph.ecog", "age"]).copy()
    df["inst"] = df["inst"].astype(int)
    df["event"] = df["status"].astype(int)  # lifelines' copy: 1 = dead, 0 = censored
    df["SEX"] = np.where(df["sex"] == 1, "M", "F")
    df["PHECOG"] = df["ph.ecog"].astype(float)
    df["AGE"] = df["age"].astype(float)
    df["ARM"] = "Observation"
    return df[["inst", "time", "event", "AGE", "SEX", "PHECOG", "ARM"]]


def gbsg2(sites: int = 4) -> pd.DataFrame:
    """GBSG2 breast cancer, split into ``sites`` contiguous chunks; horTh is the arm."""
    from lifelines.datasets import load_gbsg2

    df = load_gbsg2().copy()
    df["site"] = np.arange(len(df)) * sites // len(df) + 1
    df["SEX"] = "F"
    df["AGE"] = df["age"].astype(float)
    df["ARM"] = df["horTh"].astype(str)
    df["MENOSTAT"] = df["menostat"].astype(str)
    df["TSIZE"] = df["tsize"].astype(float)
    df["PNODES"] = df["pnodes"].astype(float)
    return df[["site", "time", "cens", "AGE", "SEX", "ARM", "MENOSTAT", "TSIZE", "PNODES"]]


def leukemia(sites: int = 3) -> pd.DataFrame:
    """Leukemia remission times (ties), split into ``sites`` interleaved sites; Rx is the arm."""
    from lifelines.datasets import load_leukemia

    df = load_leukemia().copy()
    df["site"] = np.arange(len(df)) % sites + 1
    df["SEX"] = np.where(df["sex"] == 1, "M", "F")
    df["AGE"] = 50.0
    df["ARM"] = np.where(df["Rx"] == 1, "Control", "Treated")
    df["LOGWBC"] = df["logWBC"].astype(float)
    return df[["site", "t", "status", "AGE", "SEX", "ARM", "LOGWBC"]]


def toy(sizes: list[int], seed: int) -> pd.DataFrame:
    """Random small trial rows: ``sizes[i]`` subjects at site i + 1, arms A/B, integer times."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    return pd.DataFrame(
        {
            "site": np.repeat(np.arange(1, len(sizes) + 1), sizes),
            "time": rng.integers(1, 60, n).astype(float),
            "event": rng.integers(0, 2, n),
            "AGE": rng.integers(20, 80, n).astype(float),
            "SEX": rng.choice(["F", "M"], n),
            "ARM": rng.choice(["A", "B"], n),
        }
    )


def dummies(frame: pd.DataFrame, column: str, reference: str) -> pd.DataFrame:
    """Indicator columns named formulaic-style, ``COL[T.level]``, reference left out."""
    out = pd.DataFrame(index=frame.index)
    for level in sorted(set(frame[column].astype(str)) - {reference}):
        out[f"{column}[T.{level}]"] = (frame[column].astype(str) == level).astype(float)
    return out
