"""Fast generator of large synthetic site bundles for the benchmarks.

Each bundle is one folder with ``site.toml``, ``adsl.<fmt>`` and ``adtte.<fmt>`` (see
docs/design.md). ADSL has the required STUDYID, USUBJID, SITEID, TRT01P, AGE, SEX plus ten numeric
covariates ``X01`` ... ``X10``; ADTTE has one endpoint, ``OS``, with proportional-hazards event
times in whole days (so that ties occur) and administrative censoring.

Covariates are written with four decimals and ages as integers, so the CSV text round-trips to the
same float64 in every reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

COVARIATES = tuple(f"X{j:02d}" for j in range(1, 11))
"""The ten numeric covariates of the Cox benchmark."""
TRUE_BETA = np.linspace(-0.5, 0.5, len(COVARIATES))
STUDY = "BENCH"
PARAMCD = "OS"
FORMATS = ("csv", "parquet")


def site_ids(n_sites: int) -> list[str]:
    """Site ids ``S0001`` ..., half in Japan and half in Korea (alternating)."""
    return [f"S{i + 1:04d}" for i in range(n_sites)]


def _country(index: int) -> str:
    return "JP" if index % 2 == 0 else "KR"


def site_frames(
    site: str, n: int, rng: np.random.Generator, site_effect: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ADSL and ADTTE of one site with ``n`` subjects.

    Parameters
    ----------
    site : str
        Site id (also SITEID).
    n : int
        Subjects.
    rng : numpy.random.Generator
    site_effect : float
        Log baseline-hazard multiplier of the site.

    Returns
    -------
    adsl, adtte : pandas.DataFrame
    """
    x = np.round(rng.standard_normal((n, len(COVARIATES))), 4)
    arm = rng.integers(0, 2, n)
    age = rng.integers(20, 80, n)
    sex = np.where(rng.integers(0, 2, n) == 1, "M", "F")
    ids = np.char.add(f"{STUDY}-{site}-", np.char.zfill(np.arange(1, n + 1).astype(str), 7))
    adsl = pd.DataFrame(
        {
            "STUDYID": STUDY,
            "USUBJID": ids,
            "SITEID": site,
            "TRT01P": np.where(arm == 1, "Vaccine", "Placebo"),
            "AGE": age,
            "SEX": sex,
        }
    )
    for j, name in enumerate(COVARIATES):
        adsl[name] = x[:, j]
    log_hazard = np.log(0.004) + site_effect + x @ TRUE_BETA - 0.7 * arm
    event_time = rng.exponential(1.0, n) / np.exp(log_hazard)
    dropout = rng.exponential(1500.0, n)
    cutoff = 365.0
    observed = np.minimum(np.minimum(event_time, dropout), cutoff)
    aval = np.maximum(np.ceil(observed), 1.0)
    cnsr = (event_time > np.minimum(dropout, cutoff)).astype(np.int64)
    adtte = pd.DataFrame(
        {
            "STUDYID": STUDY,
            "USUBJID": ids,
            "PARAMCD": PARAMCD,
            "PARAM": "Overall survival",
            "AVAL": aval.astype(np.int64),
            "CNSR": cnsr,
        }
    )
    return adsl, adtte


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "csv":
        frame.to_csv(path, index=False, float_format="%.4f")
    else:
        frame.to_parquet(path, index=False)


def write_sites(
    out: str | Path, n_total: int, n_sites: int, fmt: str = "csv", seed: int = 2026
) -> list[Path]:
    """Write ``n_sites`` bundles with ``n_total`` subjects in all under ``out``.

    Parameters
    ----------
    out : str or Path
        Output folder; bundles go to ``out/<site id>/``. An existing complete set with the same
        parameters (``out/manifest.json``) is reused.
    n_total, n_sites : int
        Subjects in all (split as evenly as possible) and number of sites.
    fmt : {"csv", "parquet"}
    seed : int

    Returns
    -------
    list of Path
        The bundle folders, in site order.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {set(FORMATS)}; got {fmt!r}")
    root = Path(out)
    manifest = {"n_total": n_total, "n_sites": n_sites, "fmt": fmt, "seed": seed, "version": 2}
    ids = site_ids(n_sites)
    folders = [root / s for s in ids]
    stamp = root / "manifest.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == manifest:
        return folders
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = np.full(n_sites, n_total // n_sites)
    sizes[: n_total % n_sites] += 1
    effects = rng.normal(0.0, 0.3, n_sites)
    for i, (site, folder) in enumerate(zip(ids, folders, strict=True)):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("ad*.*"):
            old.unlink()
        (folder / "site.toml").write_text(
            f'[site]\nid = "{site}"\nname = "Benchmark site {site}"\n'
            f'country = "{_country(i)}"\n\n[policy]\n'
            # exact answers (compared with pooled lifelines): the disclosure rules off
            "min_cell_count = 0\npublish_site_estimates = true\n",
            encoding="utf-8",
        )
        adsl, adtte = site_frames(site, int(sizes[i]), rng, float(effects[i]))
        _write(adsl, folder / f"adsl.{fmt}", fmt)
        _write(adtte, folder / f"adtte.{fmt}", fmt)
    stamp.write_text(json.dumps(manifest), encoding="utf-8")
    return folders
