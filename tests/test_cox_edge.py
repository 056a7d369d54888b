"""Cox edge cases: odd sites, separation, user errors, additivity, the design and the iteration."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_lung

from analysis.cox import (
    CoxDerivatives,
    CoxNewton,
    CoxSpec,
    LocalFit,
    build_design,
    combined_center,
    derivatives_from_moments,
    fit_federated,
    format_value,
    global_levels,
    inverse_variance_start,
    local_event_times,
    local_fit,
    local_levels,
    merge_event_times,
    moments_from_payload,
    moments_to_payload,
    risk_set_moments,
    stratified_derivatives,
    sum_derivatives,
    sum_moments,
    term_names,
)
from analysis.data import SurvivalData
from analysis.errors import UserError
from tests.test_cox import TOL, assert_matches, lifelines_fit, to_parts


def trial(seed: int, n_sites: int = 3, n: int = 80) -> pd.DataFrame:
    """A small two-arm trial over sites with ties (integer days) and a numeric covariate."""
    rng = np.random.default_rng(seed)
    rows = n_sites * n
    trt = rng.integers(0, 2, rows)
    age = rng.normal(60, 10, rows)
    site = np.repeat(np.arange(n_sites), n)
    hazard = 0.01 * np.exp(-0.5 * trt + 0.03 * (age - 60) + 0.3 * site)
    t = np.ceil(rng.exponential(1 / hazard))
    c = np.ceil(rng.uniform(20, 200, rows))
    return pd.DataFrame(
        {
            "time": np.minimum(t, c),
            "event": (t <= c).astype(int),
            "arm": np.where(trt == 1, "Vaccine", "Placebo"),
            "arm[T.Vaccine]": trt.astype(float),
            "age": age,
            "site": site,
        }
    )


TERMS = ["arm[T.Vaccine]", "age"]


def check_pooled_and_stratified(df: pd.DataFrame) -> None:
    parts = to_parts(df, "time", "event", "site", ["age"], ["arm"])
    for strata, oracle_strata in (((), []), (("SITE",), ["site"])):
        result = fit_federated(parts, ["arm", "age"], {"arm": "Placebo"}, strata)
        cph = lifelines_fit(df, "time", "event", TERMS, oracle_strata)
        assert_matches(result, TERMS, cph.params_, cph.standard_errors_, cph.log_likelihood_)


def test_sites_of_size_one() -> None:
    df = trial(1)
    df.loc[:5, "site"] = 100 + np.arange(6)  # six single-row sites
    check_pooled_and_stratified(df)


def test_site_without_events_and_arm_without_events() -> None:
    df = trial(2)
    df.loc[df["site"] == 0, "event"] = 0  # site 0: no events at all
    df.loc[(df["site"] == 1) & (df["arm"] == "Vaccine"), "event"] = 0  # all-censored arm
    check_pooled_and_stratified(df)
    parts = to_parts(df, "time", "event", "site", ["age"], ["arm"])
    spec = CoxSpec(("arm", "age"), {"arm": ("Placebo", "Vaccine")})
    empty = local_fit(parts[0], spec)
    assert empty.events == 0 and not np.any(empty.information) and not np.any(empty.beta)
    separated = local_fit(parts[1], spec)  # arm coefficient runs off to -inf locally
    assert not np.any(separated.information)


def test_missing_covariates_are_dropped_complete_case() -> None:
    df = load_lung().dropna(subset=["inst"])
    parts = to_parts(df, "time", "status", "inst", ["age", "ph.ecog"])
    result = fit_federated(parts, ["age", "ph.ecog"], strata=["SITE"])
    complete = df.dropna(subset=["ph.ecog"])
    cph = lifelines_fit(complete, "time", "status", ["age", "ph.ecog"], ["inst"])
    assert_matches(
        result, ["age", "ph.ecog"], cph.params_, cph.standard_errors_, cph.log_likelihood_
    )
    assert result.n == len(complete)


@pytest.mark.parametrize("strata", [(), ("SITE",)])
def test_perfect_separation_stops_with_message(strata: tuple[str, ...]) -> None:
    df = trial(3)
    # every event of a late == 1 row moves to t = 1, and late == 1 rows are all gone by t = 41
    # when the late == 0 events start: monotone likelihood in `late`, its coefficient -> +inf
    df["late"] = (df["time"] <= 40).astype(float)
    df.loc[(df["late"] == 1) & (df["event"] == 1), "time"] = 1.0
    parts = to_parts(df, "time", "event", "site", ["age", "late"])
    result = fit_federated(parts, ["age", "late"], strata=strata, max_rounds=20)
    assert not result.converged
    assert "'late'" in result.message
    assert result.rounds <= 20
    assert abs(result.coef[1]) > 5


def test_stratum_variable_as_covariate_is_not_identifiable() -> None:
    df = trial(4)
    df["region"] = np.where(df["site"] == 0, "EU", "AS")
    parts = to_parts(df, "time", "event", "site", ["age"], ["arm", "region"])
    result = fit_federated(parts, ["arm", "region"], strata=["region"])
    assert not result.converged and "'region[T.EU]'" in result.message


def test_user_errors_name_parameter_allowed_and_value() -> None:
    parts = to_parts(trial(5), "time", "event", "site", ["age"], ["arm"])
    with pytest.raises(UserError, match=r"covariates must be among .*'age'.*got 'agee'"):
        fit_federated(parts, ["agee"])
    with pytest.raises(UserError, match=r"reference\['arm'\] must be one of .*got 'Drug'"):
        fit_federated(parts, ["arm"], {"arm": "Drug"})
    with pytest.raises(UserError, match=r"reference keys must be in \{'arm'\}; got 'age'"):
        fit_federated(parts, ["arm", "age"], {"age": "60"})
    with pytest.raises(UserError, match=r"ties must be one of .*got 'exact'"):
        fit_federated(parts, ["arm"], ties="exact")  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"strata must be among .*got 'SEX'"):
        fit_federated(parts, ["arm"], strata=["SEX"])


def test_levels_design_and_interaction_names() -> None:
    a = SurvivalData(
        np.array([1.0, 2.0, 3.0]),
        np.array([True, False, True]),
        {
            "TRT01P": np.array(["Vaccine", "Placebo", "Vaccine"], dtype=object),
            "COUNTRY": np.array(["JP", "JP", "JP"], dtype=object),
            "AGE": np.array([50.0, 60.0, 70.0]),
        },
    )
    b = SurvivalData(
        np.array([4.0]),
        np.array([True]),
        {
            "TRT01P": np.array(["Placebo"], dtype=object),
            "COUNTRY": np.array(["KR"], dtype=object),
            "AGE": np.array([40.0]),
        },
    )
    local = [local_levels(s, ["TRT01P", "COUNTRY", "AGE"]) for s in (a, b)]
    assert local[0] == {"TRT01P": ("Placebo", "Vaccine"), "COUNTRY": ("JP",)}
    levels = global_levels(local, {"COUNTRY": "KR"})
    assert levels == {"TRT01P": ("Placebo", "Vaccine"), "COUNTRY": ("KR", "JP")}
    spec = CoxSpec(("TRT01P", "AGE"), levels, (("TRT01P", "COUNTRY"),), ("COUNTRY",))
    x, terms = build_design(b, spec)
    assert terms == ("TRT01P[T.Vaccine]", "AGE", "TRT01P[T.Vaccine]:COUNTRY[T.JP]")
    np.testing.assert_array_equal(x, [[0.0, 40.0, 0.0]])
    x, _ = build_design(a, spec)
    np.testing.assert_array_equal(x[:, 2], [1.0, 0.0, 1.0])
    assert local_event_times(a, spec) == {("JP",): pytest.approx(np.array([1.0, 3.0]))}
    assert format_value(2.0) == "2" and format_value(0.5) == "0.5" and format_value("x") == "x"
    with pytest.raises(UserError, match="not among the global levels"):
        build_design(a, CoxSpec(("TRT01P",), {"TRT01P": ("Placebo",)}))


def test_site_aggregates_add_up_to_pooled_rows() -> None:
    df = trial(6)
    parts = to_parts(df, "time", "event", "site", ["age"], ["arm"])
    pooled = SurvivalData.concatenate(parts)
    rng = np.random.default_rng(0)
    for ties in ("efron", "breslow"):
        spec = CoxSpec(("arm", "age"), {"arm": ("Placebo", "Vaccine")}, ties=ties)
        beta = rng.normal(0, 0.2, 2)
        grids = merge_event_times([local_event_times(p, spec) for p in parts])
        center = np.array([0.5, 60.0])
        moments = [risk_set_moments(p, spec, beta, center, grids) for p in parts]
        fed = derivatives_from_moments(sum(moments[1:], moments[0]), ties)
        direct = stratified_derivatives(pooled, spec, beta)
        assert fed.loglik == pytest.approx(direct.loglik, abs=1e-9)
        np.testing.assert_allclose(fed.gradient, direct.gradient, atol=1e-8)
        np.testing.assert_allclose(fed.information, direct.information, atol=1e-7)
        site_spec = CoxSpec(spec.covariates, spec.levels, strata=("SITE",), ties=spec.ties)
        derivs = [stratified_derivatives(p, site_spec, beta) for p in parts]
        total = sum(derivs[1:], derivs[0])
        whole = stratified_derivatives(pooled, site_spec, beta)
        assert total.loglik == pytest.approx(whole.loglik, abs=1e-9)
        np.testing.assert_allclose(total.information, whole.information, atol=1e-7)
        assert (total.n, total.events) == (pooled.n, pooled.n_events)


def _derivs(loglik: float, grad: list[float], info: list[list[float]]) -> CoxDerivatives:
    return CoxDerivatives(loglik, np.array(grad), np.array(info), 10, 5)


def test_newton_halves_a_step_that_lowers_the_loglik() -> None:
    newton = CoxNewton(["x"], np.array([0.0]), max_rounds=10)
    newton.update(_derivs(-10.0, [2.0], [[1.0]]))
    assert newton.beta == pytest.approx([2.0])
    newton.update(_derivs(-12.0, [-5.0], [[1.0]]))  # worse: go halfway back
    assert newton.beta == pytest.approx([1.0]) and not newton.done
    newton.update(_derivs(-9.0, [0.0], [[1.0]]))
    assert newton.done and newton.converged
    res = newton.result()
    assert res.coef == pytest.approx([1.0]) and res.se == pytest.approx([1.0])
    assert [h[0] for h in res.history] == [2, 3, 4] and res.rounds == 4


def test_newton_stops_on_non_finite_and_on_round_limit() -> None:
    newton = CoxNewton(["x"], np.array([0.0]))
    newton.update(_derivs(float("nan"), [0.0], [[1.0]]))
    assert newton.done and not newton.converged and "non-finite" in newton.message
    limited = CoxNewton(["x", "y"], np.zeros(2), max_rounds=2)
    limited.update(_derivs(-1.0, [0.5, 0.0], [[1.0, 0.0], [0.0, 1.0]]))
    assert limited.done and not limited.converged and "max_rounds=2" in limited.message
    with pytest.raises(RuntimeError):
        limited.update(_derivs(-1.0, [0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]]))
    out = limited.result().to_dict()
    assert out["converged"] is False and out["terms"]["x"]["coef"] == 0.0
    assert TOL > 0


def test_payload_round_trips_and_term_names() -> None:
    parts = to_parts(trial(7), "time", "event", "site", ["age"], ["arm"])
    levels = global_levels([local_levels(p, ["arm", "age"]) for p in parts], {"arm": "Placebo"})
    spec = CoxSpec(("arm", "age"), levels, (("arm", "age"),), ("SITE",))
    assert term_names(spec) == build_design(parts[0], spec)[1]

    def as_lists(d: dict[str, Any]) -> dict[str, Any]:  # what a JSON transport would hand back
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in d.items()}

    fits = [local_fit(p, spec) for p in parts]
    back = [LocalFit.from_payload({**as_lists(asdict(f)), "levels": {}}) for f in fits]
    terms = term_names(spec)
    np.testing.assert_array_equal(
        inverse_variance_start(back, terms), inverse_variance_start(fits, terms)
    )
    beta = np.array([-0.3, 0.02, 0.001])
    derivs = [stratified_derivatives(p, spec, beta) for p in parts]
    total = sum_derivatives([CoxDerivatives.from_payload(as_lists(asdict(d))) for d in derivs])
    assert total.loglik == sum(d.loglik for d in derivs)
    shared = CoxSpec(spec.covariates, spec.levels, spec.interactions)
    grids = merge_event_times([local_event_times(p, shared) for p in parts])
    center = combined_center(fits, terms)
    moments = [risk_set_moments(p, shared, beta, center, grids) for p in parts]
    sent = [moments_from_payload(as_lists(moments_to_payload(m))) for m in moments]
    a = derivatives_from_moments(sum_moments(sent), "efron")
    b = derivatives_from_moments(sum_moments(moments), "efron")
    assert a.loglik == b.loglik
    np.testing.assert_array_equal(a.information, b.information)
