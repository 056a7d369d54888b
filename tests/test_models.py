"""torch models and task code against independent fits on the same rows: statsmodels' Breslow
Cox (tied times) and lifelines' Cox (no ties, where Efron = Breslow), statsmodels' logit; the
federated feature statistics against the pooled ones; bit-for-bit seed determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from statsmodels.discrete.discrete_model import Logit
from statsmodels.duration.hazard_regression import PHReg

from models.features import combine_aggregates, feature_aggregates
from models.losses import cox_nll, risk_sets
from models.nets import build_model
from models.task import get_parameters, set_parameters, site_data, train_local

COLUMNS = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]


def _rossi() -> tuple[pd.DataFrame, np.ndarray]:
    df = load_rossi()
    x = df[COLUMNS].to_numpy(float)
    return df, (x - x.mean(0)) / x.std(0, ddof=1)


def test_cox_nll_is_the_breslow_partial_likelihood() -> None:
    df, x = _rossi()
    beta = np.linspace(-0.3, 0.3, len(COLUMNS))
    score = torch.as_tensor(x @ beta)
    ours = float(cox_nll(score, risk_sets(df.week, df.arrest == 1)))
    model = PHReg(df.week, x, status=df.arrest, ties="breslow")
    assert ours == pytest.approx(-model.loglike(beta) / len(df), rel=1e-12)


def test_linear_cox_full_batch_matches_statsmodels_breslow() -> None:
    """Rossi (432 rows, tied weeks): 300 full-batch gradient steps reach the Newton answer."""
    df, x = _rossi()
    reference = PHReg(df.week, x, status=df.arrest, ties="breslow").fit().params
    model = build_model("cox-linear", x.shape[1])
    train_local(model, site_data("cox-linear", x, df.week, df.arrest == 1), 300, 1.0, seed=0)
    np.testing.assert_allclose(get_parameters(model)[0].ravel(), reference, rtol=0, atol=1e-8)


def test_linear_cox_matches_lifelines_without_ties() -> None:
    df, x = _rossi()
    # distinct times (deterministic offsets < 1 week): Efron's and Breslow's likelihoods agree
    df = df.assign(week=df.week + np.arange(len(df)) / (2.0 * len(df)))
    frame = pd.DataFrame(x, columns=COLUMNS).assign(week=df.week, arrest=df.arrest)
    fitter = CoxPHFitter().fit(frame, "week", "arrest", fit_options={"precision": 1e-12})
    model = build_model("cox-linear", x.shape[1])
    train_local(model, site_data("cox-linear", x, df.week, df.arrest == 1), 400, 1.0, seed=0)
    np.testing.assert_allclose(
        get_parameters(model)[0].ravel(), fitter.params_[COLUMNS].to_numpy(), rtol=0, atol=1e-7
    )


def test_logistic_landmark_matches_statsmodels() -> None:
    df, x = _rossi()
    landmark = 26.0
    event = df.arrest.to_numpy() == 1
    known = (df.week.to_numpy() > landmark) | event
    y = (event & (df.week.to_numpy() <= landmark))[known].astype(float)
    design = np.column_stack([np.ones(int(known.sum())), x[known]])
    reference = Logit(y, design).fit(disp=0, tol=1e-12).params
    model = build_model("logistic", x.shape[1])
    data = site_data("logistic", x, df.week, event, landmark=landmark)
    assert data.n == int(known.sum())  # subjects censored before the landmark are left out
    train_local(model, data, 200, 0.5, seed=0, optimizer="adam")
    train_local(model, data, 3000, 4.0, seed=0)
    weight, bias = get_parameters(model)
    np.testing.assert_allclose(np.r_[bias, weight.ravel()], reference, rtol=0, atol=1e-6)


def test_seed_determinism_bit_for_bit() -> None:
    df, x = _rossi()
    data = site_data("deepsurv", x, df.week, df.arrest == 1)

    def run(seed: int) -> list[np.ndarray]:
        model = build_model("deepsurv", x.shape[1], (16, 8), seed=seed)
        train_local(model, data, 3, 0.01, seed=seed, optimizer="adam", batch_size=64)
        return get_parameters(model)

    first, again, other = run(11), run(11), run(12)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again, strict=True))
    assert any(a.tobytes() != b.tobytes() for a, b in zip(first, other, strict=True))


def test_set_parameters_round_trip_and_shape_check() -> None:
    model = build_model("deepsurv", 4, (3,), seed=1)
    arrays = get_parameters(model)
    other = build_model("deepsurv", 4, (3,), seed=2)
    set_parameters(other, arrays)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, get_parameters(other), strict=True))
    with pytest.raises(ValueError, match="expected 3 arrays"):
        set_parameters(other, arrays[:2])


def test_feature_statistics_pool_exactly_and_suppress_small_levels() -> None:
    rng = np.random.default_rng(0)
    age = rng.normal(60, 9, 300).round()
    arm = rng.choice(np.array(["A", "B", "C"], dtype=object), 300, p=[0.49, 0.49, 0.02])
    arm[5] = "D"  # one subject with level D, at site 0
    sites = [slice(0, 100), slice(100, 130), slice(130, 300)]
    parts = [feature_aggregates({"AGE": age[s], "ARM": arm[s]}, ["AGE", "ARM"], 3) for s in sites]
    encoder = combine_aggregates(parts, ["AGE", "ARM"])
    mean, sd = encoder.numeric["AGE"]
    assert mean == pytest.approx(age.mean(), rel=1e-14)
    assert sd == pytest.approx(age.std(ddof=1), rel=1e-12)
    assert parts[0]["levels"]["ARM"].get("D") is None  # 1 subject < k = 3: not reported
    assert parts[0]["suppressed"]["ARM"] >= 1
    assert encoder.levels["ARM"][:2] == ("A", "B")
    assert "D" not in encoder.levels["ARM"]
    x = encoder.encode({"AGE": age, "ARM": arm})
    np.testing.assert_allclose(x[:, 0], (age - age.mean()) / age.std(ddof=1), atol=1e-12)
    reference = int(np.flatnonzero(arm == "A")[0])
    np.testing.assert_array_equal(x[5, 1:], x[reference, 1:])  # unreported level = reference
    b = arm == "B"
    share = b.mean()
    sd = np.sqrt(share * (1 - share) * len(arm) / (len(arm) - 1))
    np.testing.assert_allclose(x[:, 1], (b - share) / sd, atol=1e-12)  # standardised indicator
