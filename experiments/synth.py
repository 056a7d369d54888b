"""Synthetic Japan-Korea randomised trials written as per-site ADaM bundles.

The generator simulates a multinational 1:1 randomised trial whose true treatment effect is known,
so that federated estimates can be checked against it:

- sites: half Japanese (``JP01``, ...), half Korean (``KR01``, ...), of differing sizes;
- randomisation: 1:1, stratified by site, permuted blocks of 4, staggered entry;
- event times: Weibull proportional hazards with a treatment effect, a log-linear age effect, a sex
  effect, a country baseline multiplier and a site frailty (a hazard multiplier per site);
- censoring: random dropout (exponential) and administrative censoring at the data cut-off;
- ``AVAL`` in whole days (ceiling of the continuous time), so that ties occur as in real data.

The vaccine design has one endpoint, ``COVID``. The drug design has ``OS`` (death) and ``PFS``
(progression or death): progression and death are latent Weibull times with one shape and the same
covariate effects, so the minimum is again proportional-hazards, with
``HR_PFS = (HR_death + c * HR_prog) / (1 + c)``, ``c`` the ratio of the baseline progression
hazard to the baseline death hazard.
With site strata, a Cox model on arm, ``AGE`` and ``SEX`` is correctly specified for every endpoint.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import UserError
from analysis.iso3166 import ALPHA2_TO_ALPHA3
from experiments import synth_local
from sites.encoding import DEFAULT_ENCODING
from sites.terminology import TERMINOLOGY_FILE

DESIGNS = ("vaccine", "drug")
FORMATS = ("xpt", "csv", "parquet")
SAS_EPOCH = date(1960, 1, 1)
JP_SITES = (
    "Osaka University Hospital",
    "The University of Tokyo Hospital",
    "Kyoto University Hospital",
    "Nagoya University Hospital",
    "Kyushu University Hospital",
    "Hokkaido University Hospital",
    "Tohoku University Hospital",
    "Keio University Hospital",
    "Kobe University Hospital",
    "Okayama University Hospital",
)
KR_SITES = (
    "Seoul National University Hospital",
    "Samsung Medical Center",
    "Asan Medical Center",
    "Severance Hospital",
    "Seoul St. Mary's Hospital",
    "Korea University Anam Hospital",
    "Pusan National University Hospital",
    "Kyungpook National University Hospital",
    "Chonnam National University Hospital",
    "Chungnam National University Hospital",
)
MAX_SITES = len(JP_SITES) + len(KR_SITES)

# Design constants. Hazards are for the reference subject: placebo, female, age `age_ref`, Japan,
# site frailty 1. `cum_ref` is that subject's cumulative incidence at `t_ref` days.
_DESIGN: dict[str, dict[str, Any]] = {
    "vaccine": dict(
        studyid="DEMO-VAX",
        treatment="Vaccine",
        age=(18, 85, 47.0, 16.0),
        p_male=0.5,
        age_groups=("18-64", ">=65"),
        age_ref=45.0,
        b_age=0.01,
        b_male=0.15,
        country=dict(JP=1.0, KR=1.35),
        frailty_sd=0.3,
        shape=1.0,
        cum_ref=0.055,
        t_ref=180.0,
        first_day=date(2025, 3, 3),
        site_lag=28,
        enrol_days=90,
        min_fu=180,
        dropout=0.08,
        trt_lag=0,
        cut_desc="END OF STUDY",
    ),
    "drug": dict(
        studyid="DEMO-DRUG",
        treatment="Drug",
        age=(40, 85, 63.0, 9.0),
        p_male=0.6,
        age_groups=("40-64", ">=65"),
        age_ref=60.0,
        b_age=0.02,
        b_male=0.2,
        country=dict(JP=1.0, KR=1.2),
        frailty_sd=0.25,
        shape=1.3,
        cum_ref=0.5,
        t_ref=450.0,
        first_day=date(2024, 6, 3),
        site_lag=90,
        enrol_days=540,
        min_fu=365,
        dropout=0.05,
        trt_lag=3,
        prog_ratio=2.0,
        prog_hr_factor=0.8,
        cut_desc="DATA CUT-OFF",
    ),
}
_PARAM = {
    "COVID": ("Time to first confirmed COVID-19 infection (days)", 1),
    "PFS": ("Progression-free survival (days)", 1),
    "OS": ("Overall survival (days)", 2),
}
LABELS = {
    "STUDYID": "Study Identifier",
    "USUBJID": "Unique Subject Identifier",
    "SUBJID": "Subject Identifier for the Study",
    "SITEID": "Study Site Identifier",
    "COUNTRY": "Country",
    "AGE": "Age",
    "AGEU": "Age Units",
    "AGEGR1": "Pooled Age Group 1",
    "SEX": "Sex",
    "RACE": "Race",
    "ARM": "Description of Planned Arm",
    "TRT01P": "Planned Treatment for Period 01",
    "TRT01PN": "Planned Treatment for Period 01 (N)",
    "TRT01A": "Actual Treatment for Period 01",
    "TRT01AN": "Actual Treatment for Period 01 (N)",
    "RANDDT": "Date of Randomization",
    "TRTSDT": "Date of First Exposure to Treatment",
    "ITTFL": "Intent-To-Treat Population Flag",
    "SAFFL": "Safety Population Flag",
    "PARAMCD": "Parameter Code",
    "PARAM": "Parameter",
    "PARAMN": "Parameter (N)",
    "STARTDT": "Time to Event Origin Date for Subject",
    "ADT": "Analysis Date",
    "AVAL": "Analysis Value",
    "CNSR": "Censor",
    "EVNTDESC": "Event or Censoring Description",
}
_DATES = ("RANDDT", "TRTSDT", "STARTDT", "ADT")


@dataclass(frozen=True)
class SiteInfo:
    """One synthetic site: id (``JP01``), hospital name, ISO country code and subject count."""

    id: str
    name: str
    country: str
    n: int


@dataclass
class SyntheticTrial:
    """A generated trial: per-site ADSL and ADTTE frames, site metadata and the true parameters.

    Attributes
    ----------
    design : {'vaccine', 'drug'}
    seed : int
    sites : list of SiteInfo
        In site order: Japanese sites first, then Korean ones.
    adsl, adtte : dict of str to DataFrame
        Keyed by site id; ADSL has one row per subject, ADTTE one row per subject and endpoint.
    truth : dict
        The generating parameters and realised counts, as written to ``truth.json``.
    """

    design: str
    seed: int
    sites: list[SiteInfo]
    adsl: dict[str, pd.DataFrame] = field(default_factory=dict)
    adtte: dict[str, pd.DataFrame] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)


def _check_int(name: str, value: object, low: int, high: int, note: str = "") -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not low <= value <= high
    ):
        raise UserError(f"{name} must be an integer in [{low}, {high}]{note}; got {value!r}")
    return int(value)


def _check_args(design: str, subjects: int, sites: int, seed: int, effect: float) -> None:
    if design not in DESIGNS:
        raise UserError(f"design must be one of {set(DESIGNS)}; got {design!r}")
    sites = _check_int("sites", sites, 2, MAX_SITES)
    _check_int("subjects", subjects, 20 * sites, 1_000_000, f" (20 per site, {sites} sites)")
    _check_int("seed", seed, 0, 2**63 - 1)
    name, low, high = ("ve", -1.0, 0.99) if design == "vaccine" else ("hr", 0.1, 10.0)
    if not (isinstance(effect, int | float) and low <= effect <= high):
        raise UserError(f"{name} must be a number in [{low}, {high}]; got {effect!r}")


def _site_sizes(rng: np.random.Generator, subjects: int, sites: int) -> np.ndarray:
    """Deterministic unequal sizes: half uniform, half Dirichlet(4) shares; each >= 10 subjects."""
    weights = 0.5 / sites + 0.5 * rng.dirichlet(np.full(sites, 4.0))
    raw = weights * subjects
    n = np.floor(raw).astype(np.int64)
    n[np.argsort(n - raw, kind="stable")[: subjects - int(n.sum())]] += 1  # largest remainders
    return n


def _weibull(rng: np.random.Generator, lp: np.ndarray, scale: float, shape: float) -> np.ndarray:
    """Event times with cumulative hazard ``(t / scale) ** shape * exp(lp)``."""
    return scale * (rng.standard_exponential(lp.size) * np.exp(-lp)) ** (1.0 / shape)


def _simulate_site(
    rng: np.random.Generator,
    cfg: dict[str, Any],
    info: SiteInfo,
    effects: dict[str, dict[str, float]],
    start: int,
    cutoff: int,
    frailty: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ADSL and ADTTE of one site; ``start`` and ``cutoff`` are SAS dates."""
    n, (lo, hi, mean, sd), shape = info.n, cfg["age"], cfg["shape"]
    blocks = np.concatenate([rng.permutation([0, 0, 1, 1]) for _ in range(-(-n // 4))])
    arm = blocks[:n].astype(np.int64)
    randdt = start + np.sort(rng.integers(0, cfg["enrol_days"] + 1, n))
    age = np.clip(np.rint(rng.normal(mean, sd, n)), lo, hi).astype(np.int64)
    male = rng.random(n) < cfg["p_male"]
    base = (
        cfg["b_age"] * (age - cfg["age_ref"])
        + cfg["b_male"] * male
        + math.log(cfg["country"][info.country] * frailty)
    )
    admin = (cutoff - randdt).astype(np.float64)
    dropout = rng.exponential(365.25 / -math.log1p(-cfg["dropout"]), n)
    subjid = [f"{info.id}-{j + 1:04d}" for j in range(n)]
    usubjid = [f"{cfg['studyid']}-{s}" for s in subjid]
    trt = np.array(("Placebo", cfg["treatment"]), dtype=object)[arm]
    adsl = pd.DataFrame(
        {
            "STUDYID": cfg["studyid"],
            "USUBJID": usubjid,
            "SUBJID": subjid,
            "SITEID": info.id,
            "COUNTRY": ALPHA2_TO_ALPHA3[info.country],  # ADaM: ISO 3166 alpha-3
            "AGE": age,
            "AGEU": "YEARS",
            "AGEGR1": np.where(age < 65, cfg["age_groups"][0], cfg["age_groups"][1]),
            "SEX": np.where(male, "M", "F"),
            "RACE": "ASIAN",
            "ARM": trt,
            "TRT01P": trt,
            "TRT01PN": arm,
            "TRT01A": trt,
            "TRT01AN": arm,
            "RANDDT": randdt,
            "TRTSDT": randdt + rng.integers(0, cfg["trt_lag"] + 1, n),
            "ITTFL": "Y",
            "SAFFL": "Y",
        }
    )
    if "COVID" in effects:
        e = effects["COVID"]
        t_event = _weibull(rng, base + arm * math.log(e["hr"]), e["scale"], shape)
        ends = {"COVID": (t_event, np.full(n, "CONFIRMED COVID-19 INFECTION", dtype=object))}
    else:
        os_ = effects["OS"]
        t_death = _weibull(rng, base + arm * math.log(os_["hr"]), os_["scale"], shape)
        prog_scale = os_["scale"] * cfg["prog_ratio"] ** (-1 / shape)
        t_prog = _weibull(rng, base + arm * math.log(os_["hr_prog"]), prog_scale, shape)
        ends = {
            "PFS": (
                np.minimum(t_prog, t_death),
                np.where(t_prog < t_death, "DISEASE PROGRESSION", "DEATH").astype(object),
            ),
            "OS": (t_death, np.full(n, "DEATH", dtype=object)),
        }
    rows = []
    for paramcd, (t_event, event_desc) in ends.items():
        t = np.minimum(np.minimum(t_event, dropout), admin)
        cnsr = (t_event > t).astype(np.int64)
        desc = np.where(dropout < admin, "LOST TO FOLLOW-UP", cfg["cut_desc"]).astype(object)
        desc[cnsr == 0] = event_desc[cnsr == 0]
        aval = np.ceil(t).astype(np.int64)
        rows.append(
            pd.DataFrame(
                {
                    "STUDYID": cfg["studyid"],
                    "USUBJID": usubjid,
                    "SITEID": info.id,
                    "PARAMCD": paramcd,
                    "PARAM": _PARAM[paramcd][0],
                    "PARAMN": _PARAM[paramcd][1],
                    "STARTDT": randdt,
                    "ADT": randdt + aval,
                    "AVAL": aval,
                    "CNSR": cnsr,
                    "EVNTDESC": desc,
                }
            )
        )
    return adsl, pd.concat(rows, ignore_index=True)


def generate_trial(
    design: str = "vaccine",
    subjects: int = 3000,
    sites: int = 6,
    seed: int = 20261128,
    *,
    ve: float = 0.70,
    hr: float = 0.70,
) -> SyntheticTrial:
    """Simulate a 1:1 randomised Japan-Korea trial (pure: no I/O).

    Parameters
    ----------
    design : {'vaccine', 'drug'}
        ``vaccine``: endpoint ``COVID``, arms Placebo/Vaccine, adults 18-85. ``drug``: endpoints
        ``PFS`` and ``OS``, arms Placebo/Drug, ages 40-85.
    subjects : int
        Total subjects, at least ``20 * sites``.
    sites : int
        Number of sites in [2, 20]; ``ceil(sites / 2)`` Japanese, the rest Korean.
    seed : int
        Seed of the numpy Generator; the same seed gives the same trial.
    ve : float
        True vaccine efficacy ``1 - HR`` of the vaccine design (default 0.70, HR 0.30).
    hr : float
        True hazard ratio Drug vs Placebo for ``OS`` in the drug design (default 0.70).

    Returns
    -------
    SyntheticTrial
    """
    _check_args(design, subjects, sites, seed, ve if design == "vaccine" else hr)
    cfg = _DESIGN[design]
    rng = np.random.default_rng(seed)
    n_jp = math.ceil(sites / 2)
    ids = [f"JP{i + 1:02d}" for i in range(n_jp)] + [f"KR{i + 1:02d}" for i in range(sites - n_jp)]
    names = list(JP_SITES[:n_jp]) + list(KR_SITES[: sites - n_jp])
    sizes = _site_sizes(rng, subjects, sites)
    frailty = np.exp(cfg["frailty_sd"] * rng.standard_normal(sites))
    site_lag = rng.integers(0, cfg["site_lag"] + 1, sites)
    infos = [SiteInfo(i, nm, i[:2], int(k)) for i, nm, k in zip(ids, names, sizes, strict=True)]

    shape = cfg["shape"]
    scale = cfg["t_ref"] / (-math.log1p(-cfg["cum_ref"])) ** (1.0 / shape)
    if design == "vaccine":
        effects = {"COVID": {"hr": 1.0 - ve, "scale": scale}}
    else:
        c, hr_prog = cfg["prog_ratio"], hr * cfg["prog_hr_factor"]
        effects = {
            "PFS": {"hr": (hr + c * hr_prog) / (1 + c), "scale": scale * (1 + c) ** (-1 / shape)},
            "OS": {"hr": hr, "scale": scale, "hr_prog": hr_prog},
        }
    first = (cfg["first_day"] - SAS_EPOCH).days
    cutoff = first + cfg["site_lag"] + cfg["enrol_days"] + cfg["min_fu"]
    arms = ("Placebo", cfg["treatment"])
    trial = SyntheticTrial(design, seed, infos)
    events = {p: dict.fromkeys(arms, 0) for p in effects}
    for k, info in enumerate(infos):
        start = first + int(site_lag[k])
        adsl, adtte = _simulate_site(rng, cfg, info, effects, start, cutoff, frailty[k])
        trial.adsl[info.id], trial.adtte[info.id] = adsl, adtte
        for paramcd, counts in events.items():
            rows = adtte[(adtte["PARAMCD"] == paramcd) & (adtte["CNSR"] == 0)]
            arm = rows[["USUBJID"]].merge(adsl[["USUBJID", "TRT01P"]], on="USUBJID")["TRT01P"]
            for a in arms:
                counts[a] += int((arm == a).sum())
    trial.truth = {
        "design": design,
        "seed": seed,
        "studyid": cfg["studyid"],
        "subjects": subjects,
        "arms": {"reference": arms[0], "treatment": arms[1], "variable": "TRT01P"},
        "endpoints": {
            p: {
                "param": _PARAM[p][0],
                "hr": e["hr"],
                "log_hr": math.log(e["hr"]),
                **({"ve": 1.0 - e["hr"]} if design == "vaccine" else {}),
                "weibull_shape": shape,
                "weibull_scale_days": e["scale"],
            }
            for p, e in effects.items()
        },
        "covariates": {
            "AGE": {"log_hr_per_year": cfg["b_age"], "reference_age": cfg["age_ref"]},
            "SEX": {"level": "M", "reference": "F", "log_hr": cfg["b_male"]},
        },
        "country_multipliers": cfg["country"],
        "site_frailty": {s.id: float(f) for s, f in zip(infos, frailty, strict=True)},
        "sites": [{"id": s.id, "name": s.name, "country": s.country, "n": s.n} for s in infos],
        "site_n": {s.id: s.n for s in infos},
        "censoring": {
            "dropout_per_year": cfg["dropout"],
            "cutoff_sasdate": cutoff,
            "cutoff_date": date.fromordinal(SAS_EPOCH.toordinal() + cutoff).isoformat(),
            "min_followup_days": cfg["min_fu"],
        },
        "events": events,
        "model": "Weibull PH; log-hazard = arm*log_hr + b_age*(AGE-ref) + b_sex*(SEX=='M') "
        "+ log(country multiplier) + log(site frailty); AVAL = ceil(days); CNSR 1 = censored"
        + (
            ""
            if design == "vaccine"
            else f"; PFS = min(progression, death), progression hazard {cfg['prog_ratio']:g} x "
            f"death hazard with HR {effects['OS']['hr_prog']:.4g}, same covariate effects"
        ),
    }
    return trial


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _site_toml(info: SiteInfo, min_cell_count: int, encoding: str = DEFAULT_ENCODING) -> str:
    analyses = ", ".join(_toml_str(a) for a in ("summary", "km", "logrank", "cox", "ve", "train"))
    declared = f"encoding = {_toml_str(encoding)}\n" if encoding != DEFAULT_ENCODING else ""
    return (
        "# Synthetic site bundle written by `trialfed synth`.\n"
        f"[site]\nid = {_toml_str(info.id)}\nname = {_toml_str(info.name)}\n"
        f"country = {_toml_str(info.country)}\n{declared}\n"
        '# What leaves this site (docs/design.md, "Site trust").\n'
        f"[policy]\nmin_cell_count = {min_cell_count}\nallowed_analyses = [{analyses}]\n"
        'publish_site_estimates = true\napproved_plans = "any"\n'
    )


def _write_frame(
    df: pd.DataFrame, path: Path, fmt: str, table: str, encoding: str, site: str
) -> None:
    xpt_options: dict[str, Any] = {
        "table_name": table,
        "column_labels": {c: LABELS[c] for c in df.columns},
        "variable_format": {c: "DATE9." for c in _DATES if c in df.columns},
    }
    if fmt == "csv":
        synth_local.write_csv(df, path, encoding, site)
    elif fmt == "parquet":
        df.to_parquet(path, index=False)
    elif encoding != DEFAULT_ENCODING:
        synth_local.write_xpt(df, path, encoding, site, **xpt_options)
    else:
        import pyreadstat

        pyreadstat.write_xport(df, path, file_format_version=5, **xpt_options)


def write_trial(
    trial: SyntheticTrial,
    out_dir: str | Path,
    fmt: str = "xpt",
    min_cell_count: int = 5,
    encodings: Mapping[str, str] | None = None,
    local_terms: bool = False,
) -> list[Path]:
    """Write ``OUT/sites/<site_id>/{site.toml, adsl.<fmt>, adtte.<fmt>}`` and ``OUT/truth.json``.

    Each ``site.toml`` has the policy ``min_cell_count`` (default 5, the sites' default; 0 turns
    the disclosure rules off, for answers equal to the pooled rows), publishes the sites' own
    estimates and answers any plan.

    Dataset files of other formats left in a site folder by an earlier run are removed, so that
    each bundle holds exactly one ``adsl.*`` and one ``adtte.*``.

    Parameters
    ----------
    trial : SyntheticTrial
    out_dir : str or Path
    fmt : {'xpt', 'csv', 'parquet'}
    encodings : mapping of str to str, optional
        Site id, country code or ``"*"`` -> the encoding of that site's CSV or XPT text
        (:func:`experiments.synth_local.parse_encodings`), declared in its ``site.toml``.
        Default: UTF-8 everywhere. Parquet text is always UTF-8.
    local_terms : bool
        Write SEX and RACE as Japanese and Korean sites write them (``男``, ``아시아인``), with a
        ``terminology.toml`` mapping them to the CDISC levels.

    Returns
    -------
    list of Path
        The files written, ``truth.json`` last.

    Raises
    ------
    UserError
        For an unknown ``fmt``, or when ``OUT/sites`` holds a site folder not in this trial.
    """
    if fmt not in FORMATS:
        raise UserError(f"fmt must be one of {set(FORMATS)}; got {fmt!r}")
    encodings = dict(encodings or {})
    if fmt == "parquet" and set(encodings.values()) - {DEFAULT_ENCODING}:
        raise UserError("encodings apply to csv and xpt; Parquet text is always UTF-8")
    out = Path(out_dir)
    ids = {s.id for s in trial.sites}
    if (out / "sites").is_dir():
        stale = sorted(p.name for p in (out / "sites").iterdir() if p.name not in ids)
        if stale:
            raise UserError(
                f"{out / 'sites'} holds folders not in this {len(ids)}-site trial: "
                f"{', '.join(stale)}; remove them or choose another --out"
            )
    written: list[Path] = []
    for info in trial.sites:
        folder = out / "sites" / info.id
        folder.mkdir(parents=True, exist_ok=True)
        for old in (folder / f"{d}.{f}" for d in ("adsl", "adtte") for f in FORMATS if f != fmt):
            old.unlink(missing_ok=True)
        encoding = synth_local.site_encoding(encodings, info.id, info.country)
        site_toml = _site_toml(info, min_cell_count, encoding)
        (folder / "site.toml").write_text(site_toml, encoding="utf-8")
        written.append(folder / "site.toml")
        terms = folder / TERMINOLOGY_FILE
        terms.unlink(missing_ok=True)
        mapping = synth_local.terminology_toml(info.country) if local_terms else None
        if mapping is not None:
            terms.write_text(mapping, encoding="utf-8")
            written.append(terms)
        for table, frames in (("ADSL", trial.adsl), ("ADTTE", trial.adtte)):
            path = folder / f"{table.lower()}.{fmt}"
            frame = frames[info.id]
            frame = synth_local.localise(frame, info.country) if local_terms else frame
            _write_frame(frame, path, fmt, table, encoding, info.id)
            written.append(path)
    truth = out / "truth.json"
    truth.write_text(json.dumps(trial.truth, indent=2) + "\n", encoding="utf-8")
    written.append(truth)
    return written


def main_synth(args: argparse.Namespace) -> int:
    """``trialfed synth``: generate a trial, write its bundles and print a short summary."""
    trial = generate_trial(args.design, args.subjects, args.sites, args.seed)
    fmt = getattr(args, "format", "xpt")
    encodings = synth_local.parse_encodings(getattr(args, "encoding", None) or [])
    local_terms = bool(getattr(args, "local_terms", False))
    k = getattr(args, "min_cell_count", 5)
    paths = write_trial(trial, args.out, fmt, k, encodings, local_terms)
    countries = sorted({s.country for s in trial.sites})
    per_country = ", ".join(f"{c} {sum(s.country == c for s in trial.sites)}" for c in countries)
    print(
        f"{trial.truth['studyid']}: {len(trial.sites)} sites ({per_country}), "
        f"{trial.truth['subjects']} subjects, format {fmt}, bundles in {Path(args.out) / 'sites'}"
    )
    for paramcd, counts in trial.truth["events"].items():
        arms = ", ".join(f"{arm} {k}" for arm, k in counts.items())
        print(f"  {paramcd} events: {arms} (true HR {trial.truth['endpoints'][paramcd]['hr']:.3g})")
    if encodings or local_terms:
        text = ", ".join(f"{k}: {v}" for k, v in sorted(encodings.items())) or "UTF-8"
        terms = "; local SEX/RACE terms with terminology.toml" if local_terms else ""
        print(f"  text: {text}{terms}")
    print(f"  truth: {paths[-1]}")
    return 0
