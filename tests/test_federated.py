"""The whole protocol over site bundles equals lifelines/statsmodels on the pooled rows.

Every request and reply goes through the Flower message codec (``federation.codec``) and the site
query handler reads real bundle files; only the engine is replaced by an in-process transport.
``tests/test_simulation.py`` runs the same protocol in the Flower simulation engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import survdiff

from analysis.plan import parse_plan
from experiments.launch import build_results
from federation.inprocess import InProcessTransport
from federation.protocol import run_plan
from tests import datasets
from tests.cdisc import read_pilot, split_cdisc_pilot

COX_TOL = 1e-6


def federated(plan_text: str, bundles: list[Path], **transport: Any) -> dict[str, Any]:
    """Run a plan over the bundles; return the results.json document."""
    plan = parse_plan(plan_text)
    outcome = run_plan(plan, InProcessTransport(bundles, **transport))
    return build_results(plan, outcome, "in-process", outcome.seconds)


def plan(*analyses: str, run: str = "") -> str:
    return '[study]\nid = "T"\n' + run + "".join(analyses)


def km_oracle(frame: pd.DataFrame, time: str, event: str, by: str) -> dict[str, KaplanMeierFitter]:
    return {
        str(level): KaplanMeierFitter().fit(rows[time], rows[event])
        for level, rows in frame.groupby(by)
    }


def assert_km(result: dict[str, Any], oracle: dict[str, KaplanMeierFitter]) -> None:
    assert set(result["groups"]) == set(oracle)
    for level, kmf in oracle.items():
        got = result["groups"][level]
        np.testing.assert_array_equal(got["time"], kmf.survival_function_.index.to_numpy())
        np.testing.assert_allclose(got["survival"], kmf.survival_function_.iloc[:, 0], atol=1e-12)
        ci = kmf.confidence_interval_.to_numpy()
        lower = np.array(got["ci_lower"], dtype=float)
        upper = np.array(got["ci_upper"], dtype=float)
        np.testing.assert_allclose(lower, ci[:, 0], atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(upper, ci[:, 1], atol=1e-12, equal_nan=True)
        np.testing.assert_array_equal(got["at_risk"], kmf.event_table["at_risk"].to_numpy())


def cox_oracle(
    frame: pd.DataFrame, time: str, event: str, terms: list[str], strata: list[str], ties: str
) -> tuple[np.ndarray, np.ndarray]:
    """lifelines for Efron, statsmodels PHReg for Breslow (lifelines has no Breslow)."""
    if ties == "efron":
        fit = CoxPHFitter().fit(
            frame[[time, event, *terms, *strata]],
            time,
            event,
            strata=strata or None,
            fit_options={"precision": 1e-13, "r_precision": 0.0, "max_steps": 200},
        )
        return fit.params_[terms].to_numpy(), fit.standard_errors_[terms].to_numpy()
    groups = frame[strata].astype(str).agg("|".join, axis=1).to_numpy() if strata else None
    res = PHReg(
        frame[time].to_numpy(float),
        frame[terms].to_numpy(float),
        status=frame[event].to_numpy(int),
        strata=groups,
        ties="breslow",
    ).fit(method="newton", maxiter=200, tol=1e-14)
    return np.asarray(res.params), np.asarray(res.bse)


def assert_cox(result: dict[str, Any], terms: list[str], coef: Any, se: Any) -> None:
    assert result["converged"], result.get("message")
    assert list(result["terms"]) == terms
    got_coef = [result["terms"][t]["coef"] for t in terms]
    got_se = [result["terms"][t]["se"] for t in terms]
    np.testing.assert_allclose(got_coef, coef, rtol=0, atol=COX_TOL)
    np.testing.assert_allclose(got_se, se, rtol=0, atol=COX_TOL)


# ---------------------------------------------------------------- CDISC pilot by SITEID


@pytest.fixture(scope="module")
def pilot(cdisc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Any]:
    bundles = split_cdisc_pilot(cdisc_dir, tmp_path_factory.mktemp("pilot"))
    adsl, adtte = read_pilot(cdisc_dir)
    rows = adtte[adtte["PARAMCD"] == "TTDE"].merge(
        adsl[["USUBJID", "AGE", "SEX", "TRT01P", "SITEID"]], on="USUBJID", suffixes=("_t", "")
    )
    rows["E"] = (rows["CNSR"].round() == 0).astype(int)
    return bundles, rows


PILOT_PLAN = plan(
    '[[analysis]]\nname = "km"\nkind = "km"\nparam = "TTDE"\nby = "TRT01P"\n',
    '[[analysis]]\nname = "lr"\nkind = "logrank"\nparam = "TTDE"\nby = "TRT01P"\n',
    '[[analysis]]\nname = "lrs"\nkind = "logrank"\nparam = "TTDE"\nby = "TRT01P"\n'
    'strata = ["SITE"]\n',
    '[[analysis]]\nname = "cox_site"\nkind = "cox"\nparam = "TTDE"\n'
    'covariates = ["TRT01P", "AGE", "SEX"]\nreference = { TRT01P = "Placebo", SEX = "F" }\n'
    'strata = ["SITE"]\n',
    '[[analysis]]\nname = "cox_pooled_breslow"\nkind = "cox"\nparam = "TTDE"\n'
    'covariates = ["TRT01P", "AGE", "SEX"]\nreference = { TRT01P = "Placebo", SEX = "F" }\n'
    'ties = "breslow"\n',
    '[[analysis]]\nname = "t1"\nkind = "summary"\nby = "TRT01P"\n',
)


def test_cdisc_pilot_by_site_equals_pooled(pilot: tuple[list[Path], pd.DataFrame]) -> None:
    bundles, rows = pilot
    assert len(bundles) == 17
    results = federated(PILOT_PLAN, bundles)
    analyses = results["analyses"]
    assert_km(analyses["km"], km_oracle(rows, "AVAL", "E", "TRT01P"))

    lr = multivariate_logrank_test(rows["AVAL"], rows["TRT01P"], rows["E"])
    assert analyses["lr"]["statistic"] == pytest.approx(lr.test_statistic, abs=1e-9)
    assert analyses["lr"]["df"] == 2
    stat, p = survdiff(rows["AVAL"], rows["E"], rows["TRT01P"], strata=rows["SITEID"])
    assert analyses["lrs"]["statistic"] == pytest.approx(stat, abs=1e-9)
    assert analyses["lrs"]["p"] == pytest.approx(p, abs=1e-9)

    design = pd.concat(
        [
            rows[["AVAL", "E", "AGE", "SITEID"]],
            datasets.dummies(rows, "TRT01P", "Placebo"),
            datasets.dummies(rows, "SEX", "F"),
        ],
        axis=1,
    )
    terms = [
        "TRT01P[T.Xanomeline High Dose]",
        "TRT01P[T.Xanomeline Low Dose]",
        "AGE",
        "SEX[T.M]",
    ]
    for name, strata, ties in [
        ("cox_site", ["SITEID"], "efron"),
        ("cox_pooled_breslow", [], "breslow"),
    ]:
        coef, se = cox_oracle(design, "AVAL", "E", terms, strata, ties)
        assert_cox(analyses[name], terms, coef, se)
        assert analyses[name]["n"] == 254 and analyses[name]["events"] == 152

    table1 = analyses["t1"]
    assert table1["groups"]["Placebo"]["n"] == 86
    assert table1["overall"]["age_mean"] == pytest.approx(rows["AGE"].mean(), abs=1e-12)
    assert table1["overall"]["age_sd"] == pytest.approx(rows["AGE"].std(ddof=1), abs=1e-12)
    assert table1["groups"]["Xanomeline Low Dose"]["events"]["TTDE"] == 62
    assert results["rounds"] <= 5
    assert sorted(s["id"] for s in results["sites"]) == sorted(s["id"] for s in results["sites"])


# ---------------------------------------------------------------- lifelines' real data sets


def test_lung_by_institution_all_baselines_and_ties(tmp_path: Path) -> None:
    frame = datasets.lung()
    bundles = datasets.bundles_from_frame(
        frame, tmp_path, site="inst", time="time", event="event", arm="ARM"
    )
    assert len(bundles) == frame["inst"].nunique()
    text = plan(
        *[
            f'[[analysis]]\nname = "c_{s or "pooled"}_{t}"\nkind = "cox"\nparam = "OS"\n'
            f'covariates = ["AGE", "SEX", "PHECOG"]\nreference = {{ SEX = "F" }}\n'
            f'strata = [{s and repr(s).replace(chr(39), chr(34))}]\nties = "{t}"\n'
            for s in ("", "SITE")
            for t in ("efron", "breslow")
        ],
        '[[analysis]]\nname = "km"\nkind = "km"\nparam = "OS"\nby = "SEX"\n',
    )
    analyses = federated(text, bundles)["analyses"]
    design = pd.concat([frame, datasets.dummies(frame, "SEX", "F")], axis=1)
    terms = ["AGE", "SEX[T.M]", "PHECOG"]
    for strata in ([], ["inst"]):
        for ties in ("efron", "breslow"):
            coef, se = cox_oracle(design, "time", "event", terms, strata, ties)
            name = f"c_{'SITE' if strata else 'pooled'}_{ties}"
            assert_cox(analyses[name], terms, coef, se)
            assert analyses[name]["ties"] == ties
    assert_km(analyses["km"], km_oracle(frame, "time", "event", "SEX"))


def test_gbsg2_categorical_and_cross_site_strata(tmp_path: Path) -> None:
    frame = datasets.gbsg2()
    bundles = datasets.bundles_from_frame(
        frame, tmp_path, site="site", time="time", event="cens", arm="ARM", fmt="parquet"
    )
    text = plan(
        '[[analysis]]\nname = "c"\nkind = "cox"\nparam = "OS"\n'
        'covariates = ["TRT01P", "AGE", "TSIZE", "PNODES"]\nreference = { TRT01P = "no" }\n'
        'strata = ["MENOSTAT"]\n',
        '[[analysis]]\nname = "lr"\nkind = "logrank"\nparam = "OS"\nby = "TRT01P"\n'
        'strata = ["MENOSTAT"]\n',
    )
    analyses = federated(text, bundles)["analyses"]
    design = pd.concat([frame, datasets.dummies(frame, "ARM", "no")], axis=1)
    design = design.rename(columns={"ARM[T.yes]": "TRT01P[T.yes]"})
    terms = ["TRT01P[T.yes]", "AGE", "TSIZE", "PNODES"]
    coef, se = cox_oracle(design, "time", "cens", terms, ["MENOSTAT"], "efron")
    assert_cox(analyses["c"], terms, coef, se)
    assert analyses["c"]["rounds"] <= 4
    stat, _ = survdiff(frame["time"], frame["cens"], frame["ARM"], strata=frame["MENOSTAT"])
    assert analyses["lr"]["statistic"] == pytest.approx(stat, abs=1e-9)


def test_leukemia_ties_breslow_and_efron(tmp_path: Path) -> None:
    frame = datasets.leukemia()
    bundles = datasets.bundles_from_frame(
        frame, tmp_path, site="site", time="t", event="status", arm="ARM"
    )
    text = plan(
        *[
            f'[[analysis]]\nname = "c_{t}"\nkind = "cox"\nparam = "OS"\n'
            f'covariates = ["TRT01P", "LOGWBC"]\nreference = {{ TRT01P = "Control" }}\n'
            f'strata = ["SITE"]\nties = "{t}"\n'
            for t in ("efron", "breslow")
        ]
    )
    analyses = federated(text, bundles)["analyses"]
    design = pd.concat([frame, datasets.dummies(frame, "ARM", "Control")], axis=1)
    design = design.rename(columns={"ARM[T.Treated]": "TRT01P[T.Treated]"})
    terms = ["TRT01P[T.Treated]", "LOGWBC"]
    for ties in ("efron", "breslow"):
        coef, se = cox_oracle(design, "t", "status", terms, ["site"], ties)
        assert_cox(analyses[f"c_{ties}"], terms, coef, se)


# ---------------------------------------------------------------- vaccine efficacy


def test_vaccine_efficacy_by_country_and_interaction(tmp_path: Path) -> None:
    from experiments.synth import generate_trial, write_trial

    trial = generate_trial("vaccine", subjects=1200, sites=4, seed=7)
    paths = write_trial(trial, tmp_path, fmt="csv", min_cell_count=0)
    bundles = sorted(p for p in (tmp_path / "sites").iterdir())
    assert paths
    private = bundles[-1] / "site.toml"  # this site does not publish its own estimate
    text = private.read_text()
    private.write_text(text.replace("estimates = true", "estimates = false"))
    text = plan(
        '[[analysis]]\nname = "ve"\nkind = "ve"\nparam = "COVID"\n'
        'reference = { TRT01P = "Placebo" }\ncovariates = ["AGE"]\nstrata = ["SITE"]\n'
    )
    ve = federated(text, bundles)["analyses"]["ve"]
    rows = pd.concat(
        [
            trial.adtte[s.id]
            .merge(trial.adsl[s.id][["USUBJID", "AGE", "TRT01P"]], on="USUBJID")
            .assign(SITE=s.id, COUNTRY=s.country)
            for s in trial.sites
        ]
    )
    rows = rows[rows["PARAMCD"] == "COVID"]
    rows["E"] = 1 - rows["CNSR"].astype(int)
    rows["VAX"] = (rows["TRT01P"] == "Vaccine").astype(float)
    rows["VAX_KR"] = rows["VAX"] * (rows["COUNTRY"] == "KR")

    def fit(frame: pd.DataFrame, terms: list[str]) -> CoxPHFitter:
        return CoxPHFitter().fit(
            frame[["AVAL", "E", "SITE", *terms]],
            "AVAL",
            "E",
            strata=["SITE"],
            fit_options={"precision": 1e-13, "r_precision": 0.0},
        )

    overall = fit(rows, ["VAX", "AGE"])
    hr = np.exp(overall.params_["VAX"])
    assert ve["hr"] == pytest.approx(hr, abs=1e-6)
    assert ve["ve"] == pytest.approx(1 - hr, abs=1e-6)
    upper_hr = np.exp(overall.confidence_intervals_.loc["VAX"].iloc[1])
    assert ve["lower"] == pytest.approx(1 - upper_hr, abs=1e-6)
    for country in ("JP", "KR"):
        sub = fit(rows[rows["COUNTRY"] == country], ["VAX", "AGE"])
        assert ve["by_country"][country]["hr"] == pytest.approx(
            np.exp(sub.params_["VAX"]), abs=1e-6
        )
    shown = {s.id for s in trial.sites[:-1]}
    assert set(ve["by_site"]) == shown
    for site_id in shown:
        own = fit(rows[rows["SITE"] == site_id], ["VAX", "AGE"])
        assert ve["by_site"][site_id]["hr"] == pytest.approx(np.exp(own.params_["VAX"]), rel=1e-6)
    interaction = fit(rows, ["VAX", "VAX_KR", "AGE"])
    assert ve["interaction_p"] == pytest.approx(interaction.summary.loc["VAX_KR", "p"], abs=1e-6)


# ---------------------------------------------------------------- edge cases


def _toy_sites(tmp_path: Path, sizes: list[int], seed: int = 3) -> tuple[list[Path], pd.DataFrame]:
    frame = datasets.toy(sizes, seed)
    bundles = datasets.bundles_from_frame(
        frame, tmp_path, site="site", time="time", event="event", arm="ARM"
    )
    return bundles, frame


COX_AB = (
    '[[analysis]]\nname = "c"\nkind = "cox"\nparam = "OS"\ncovariates = ["TRT01P", "AGE"]\n'
    'reference = { TRT01P = "A" }\nstrata = []\n'
)


def test_one_site_equals_local_fit(tmp_path: Path) -> None:
    bundles, frame = _toy_sites(tmp_path, [80])
    got = federated(plan(COX_AB), bundles)["analyses"]["c"]
    design = pd.concat([frame, datasets.dummies(frame, "ARM", "A")], axis=1)
    design = design.rename(columns={"ARM[T.B]": "TRT01P[T.B]"})
    coef, se = cox_oracle(design, "time", "event", ["TRT01P[T.B]", "AGE"], [], "efron")
    assert_cox(got, ["TRT01P[T.B]", "AGE"], coef, se)


def test_sites_of_size_one_and_a_site_without_events(tmp_path: Path) -> None:
    bundles, frame = _toy_sites(tmp_path, [60, 1, 1, 40])
    # site 4 has no events at all
    frame.loc[frame["site"] == 4, "event"] = 0
    bundles = datasets.bundles_from_frame(
        frame, tmp_path / "b", site="site", time="time", event="event", arm="ARM"
    )
    results = federated(
        plan(COX_AB, '[[analysis]]\nname = "km"\nkind = "km"\nparam = "OS"\nby = "TRT01P"\n'),
        bundles,
    )
    design = pd.concat([frame, datasets.dummies(frame, "ARM", "A")], axis=1)
    design = design.rename(columns={"ARM[T.B]": "TRT01P[T.B]"})
    coef, se = cox_oracle(design, "time", "event", ["TRT01P[T.B]", "AGE"], [], "efron")
    assert_cox(results["analyses"]["c"], ["TRT01P[T.B]", "AGE"], coef, se)
    assert_km(results["analyses"]["km"], km_oracle(frame, "time", "event", "ARM"))
    assert len(results["sites"]) == 4


def test_all_censored_arm_and_separation_are_reported_not_crashed(tmp_path: Path) -> None:
    bundles, frame = _toy_sites(tmp_path, [50, 50])
    frame.loc[frame["ARM"] == "B", "event"] = 0  # arm B: no events -> HR -> 0, no finite MLE
    bundles = datasets.bundles_from_frame(
        frame, tmp_path / "b", site="site", time="time", event="event", arm="ARM"
    )
    results = federated(
        plan(COX_AB, '[[analysis]]\nname = "km"\nkind = "km"\nparam = "OS"\nby = "TRT01P"\n'),
        bundles,
    )
    cox = results["analyses"]["c"]
    assert cox["converged"] is False
    assert "TRT01P[T.B]" in cox["message"]
    assert results["rounds"] <= 20
    km_b = results["analyses"]["km"]["groups"]["B"]
    assert set(km_b["survival"]) == {1.0}
    assert km_b["median"] is None


def test_a_site_dropping_out(tmp_path: Path) -> None:
    bundles, frame = _toy_sites(tmp_path, [40, 40, 40])
    text = plan(COX_AB, run="[run]\nmin_sites = 2\n")
    results = federated(text, bundles, drop={2: 2})
    assert [s["id"] for s in results["sites_missing"]] == ["S3"]
    assert "round 2" in results["sites_missing"][0]["reason"]
    kept = frame[frame["site"] != 3]
    design = pd.concat([kept, datasets.dummies(kept, "ARM", "A")], axis=1)
    design = design.rename(columns={"ARM[T.B]": "TRT01P[T.B]"})
    coef, se = cox_oracle(design, "time", "event", ["TRT01P[T.B]", "AGE"], [], "efron")
    assert_cox(results["analyses"]["c"], ["TRT01P[T.B]", "AGE"], coef, se)


def test_a_dropout_below_min_sites_fails_naming_the_site(tmp_path: Path) -> None:
    from federation.protocol import RunFailed

    bundles, _ = _toy_sites(tmp_path, [40, 40, 40])
    with pytest.raises(RunFailed, match=r"only 2 of 3 sites .* missing: S2 \(round 2: no reply"):
        federated(plan(COX_AB), bundles, drop={1: 2})
    # A site silent from the start never said who it is: the coordinator names its node.
    with pytest.raises(RunFailed, match=r"missing: node 1 \(round 1: no reply"):
        federated(plan(COX_AB), bundles, drop={1: 1})
    # With a roster (a deployment), it is named by the site id it enrolled as, once.
    roster = {0: "S1", 1: "S2", 2: "S3"}
    with pytest.raises(RunFailed, match=r"missing: S2 \(round 1: no reply[^;]*$"):
        run_plan(
            parse_plan(plan(COX_AB)), InProcessTransport(bundles, drop={1: 1}),
            expected_sites=list(roster.values()), node_sites=roster,
        )  # fmt: skip


def test_a_wrong_plan_is_refused_by_the_site_before_any_aggregate(tmp_path: Path) -> None:
    from analysis.errors import UserError

    bundles, _ = _toy_sites(tmp_path, [30, 30])
    bad = COX_AB.replace('"AGE"', '"WEIGHT"')
    with pytest.raises(UserError, match=r"^analysis 'c': site S1: variable 'WEIGHT' .*not in adsl"):
        federated(plan(bad), bundles)
    with pytest.raises(UserError, match="PARAMCD 'PFS'"):
        federated(plan(COX_AB.replace('"OS"', '"PFS"')), bundles)
