"""What the disclosure rules (k = 5) cost against the exact pooled answer, measured on the CDISC
pilot split by SITEID (17 sites of 1 to 41 subjects) and on the synthetic 6-site trial.

The exact run (k = 0) equals lifelines on the pooled rows; the k = 5 run names every change and
every refusal, and its numbers are compared with the exact ones. The measured costs are printed
(``pytest -s``) and summarised in docs/design.md ("What the rules cost").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lifelines import CoxPHFitter

from analysis.plan import parse_plan
from experiments.synth import generate_trial, write_trial
from federation.inprocess import InProcessTransport
from federation.protocol import run_plan
from tests.cdisc import read_pilot, split_cdisc_pilot
from tests.secure_helpers import plain

K = 5
PILOT_PLAN = """
[study]
id = "PILOT"
[run]
min_sites = 1          # small sites refuse what would single out their subjects
[[analysis]]
name = "km"
kind = "km"
param = "TTDE"
by = "TRT01P"
times = [30, 60, 90, 120]
[[analysis]]
name = "lr"
kind = "logrank"
param = "TTDE"
by = "TRT01P"
[[analysis]]
name = "cox"
kind = "cox"
param = "TTDE"
covariates = ["TRT01P"]
reference = { TRT01P = "Placebo" }
strata = ["SITE"]
"""


def _with_k(bundles: list[Path], k: int) -> list[Path]:
    for bundle in bundles:
        path = bundle / "site.toml"
        path.write_text(re.sub(r"min_cell_count = \d+", f"min_cell_count = {k}", path.read_text()))
    return bundles


def _run(text: str, bundles: list[Path], k: int) -> Any:
    return run_plan(parse_plan(text), InProcessTransport(_with_k(bundles, k)))


def _survival_at(result: dict[str, Any]) -> dict[str, np.ndarray]:
    return {g: np.asarray(v["at"]["survival"]) for g, v in result["groups"].items()}


def test_cost_on_the_cdisc_pilot(cdisc_dir: Path, tmp_path: Path) -> None:
    bundles = split_cdisc_pilot(cdisc_dir, tmp_path / "sites")
    exact = _run(PILOT_PLAN, bundles, 0)
    coarse = _run(PILOT_PLAN, bundles, K)
    # the exact run is the pooled analysis (independent oracle: lifelines, site-stratified)
    adsl, adtte = read_pilot(cdisc_dir)
    rows = adtte[["USUBJID", "AVAL", "CNSR"]].merge(
        adsl[["USUBJID", "SITEID", "TRT01P"]], on="USUBJID"
    )
    rows["E"] = (rows["CNSR"] < 0.5).astype(int)
    for arm in ("Xanomeline High Dose", "Xanomeline Low Dose"):
        rows[arm] = (rows["TRT01P"] == arm).astype(float)
    fit = CoxPHFitter().fit(
        rows[["AVAL", "E", "SITEID", "Xanomeline High Dose", "Xanomeline Low Dose"]],
        "AVAL",
        "E",
        strata=["SITEID"],
    )
    term = "TRT01P[T.Xanomeline High Dose]"
    assert exact.analyses["cox"]["terms"][term]["coef"] == pytest.approx(
        fit.params_["Xanomeline High Dose"], abs=1e-6
    )
    # k = 5: every site with an arm of fewer than 5 subjects refuses the Cox model (a level of
    # its covariate below k) and leaves that arm out of its event tables; the results say so
    small = rows.groupby(["SITEID", "TRT01P"]).size().unstack(fill_value=0)
    refusing = {f"SITE{s}" for s, r in small.iterrows() if ((r > 0) & (r < K)).any()}
    cox_refusals = {r["site"] for r in coarse.analyses["cox"].get("refusals", [])}
    assert cox_refusals == refusing
    noted = {n["site"] for n in coarse.disclosure if n["analysis"] == "km"}
    km_refusals = {r["site"] for r in coarse.analyses["km"].get("refusals", [])}
    # every site's tables changed (coarsened, a small arm left out) or were refused: said so
    assert noted | km_refusals == {f"SITE{s}" for s in small.index}
    n_exact, n_coarse = exact.analyses["cox"]["n"], coarse.analyses["cox"]["n"]
    assert n_coarse == len(rows) - int(small.loc[[s[4:] for s in refusing]].to_numpy().sum())
    log_hr = {
        name: r.analyses["cox"]["terms"][term]["coef"]
        for name, r in (("exact", exact), ("k5", coarse))
    }
    km_gap = max(
        float(np.max(np.abs(_survival_at(coarse.analyses["km"])[g] - s)))
        for g, s in _survival_at(exact.analyses["km"]).items()
    )
    chi2 = (exact.analyses["lr"]["statistic"], coarse.analyses["lr"]["statistic"])
    print(
        f"\nCDISC pilot, k = {K}: Cox n {n_exact} -> {n_coarse} ({len(refusing)} sites refused), "
        f"log HR high dose {log_hr['exact']:.4f} -> {log_hr['k5']:.4f}; KM max |dS| at plan "
        f"times {km_gap:.4f}; log-rank chi2 {chi2[0]:.2f} -> {chi2[1]:.2f}"
    )
    # tiny sites cost a lot, and the results say where: bounds are the measured values, rounded up
    assert abs(log_hr["k5"] - log_hr["exact"]) < 0.4
    assert km_gap < 0.4  # measured 0.33: 4 placebo events of a 14-subject site move to day 182


def test_cost_on_the_synthetic_trial(tmp_path: Path) -> None:
    plan = Path(__file__).resolve().parents[1] / "experiments" / "plans" / "demo_vaccine.toml"
    text = plain(plan.read_text())  # the demo plan asks for secure aggregation
    trial = generate_trial("vaccine", subjects=3000, sites=6, seed=20261128)
    write_trial(trial, tmp_path, "csv", 0)
    bundles = sorted((tmp_path / "sites").iterdir())
    exact = _run(text, bundles, 0)
    coarse = _run(text, bundles, K)
    assert not coarse.refusals
    # site-stratified Cox and VE need no coarsening: identical to the exact answer
    for name in ("cox", "ve"):
        assert (
            coarse.analyses[name].get("cox", coarse.analyses[name])["terms"]
            == (exact.analyses[name].get("cox", exact.analyses[name])["terms"])
        )
    # the event tables were coarsened at every site, and said so
    assert {n["site"] for n in coarse.disclosure if n["analysis"] == "km"} == {
        b.name for b in bundles
    }
    km_gap = max(
        float(np.max(np.abs(_survival_at(coarse.analyses["km"])[g] - s)))
        for g, s in _survival_at(exact.analyses["km"]).items()
    )
    chi2 = (exact.analyses["logrank"]["statistic"], coarse.analyses["logrank"]["statistic"])
    table1 = coarse.analyses["table1"]
    print(
        f"\nsynthetic trial, k = {K}: VE {exact.analyses['ve']['ve']:.4f} (unchanged); KM max "
        f"|dS| at plan times {km_gap:.4f}; log-rank chi2 {chi2[0]:.2f} -> {chi2[1]:.2f}; "
        f"Table 1 cells withheld: {sum(len(c) for c in table1.get('incomplete', {}).values())}"
    )
    assert km_gap < 0.01
    assert abs(chi2[1] - chi2[0]) / chi2[0] < 0.05
    pooled_n = sum(len(frame) for frame in trial.adsl.values())
    assert table1["overall"]["n"] == pooled_n  # no group at any site is below k
