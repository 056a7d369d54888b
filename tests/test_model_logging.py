"""The trained model as an MLflow pyfunc: logged with signature, synthetic example and tags,
loaded in a fresh process by ``mlflow.pyfunc.load_model``, scoring raw feature columns exactly
as the in-memory model does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from experiments.model_logging import (
    PLAN_TAG,
    SITES_TAG,
    input_example,
    log_trained_model,
    log_training_metrics,
)
from models.task import predict
from tests.training_helpers import run_local, train_plan, write_bundles

SCORE = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
frame = pd.read_json(sys.argv[2], orient="split")
scores = [mlflow.pyfunc.load_model(uri).predict(frame).tolist() for uri in sys.argv[3:]]
print(json.dumps(scores))
"""


def test_pyfunc_round_trip_on_raw_columns(tmp_path: Path) -> None:
    bundles = write_bundles(tmp_path / "data")
    outcomes = [
        run_local(bundles, train_plan(model=model, rounds=3))[0]
        for model in ("cox-linear", "deepsurv")
    ]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("training-test")
    logged = [log_trained_model(outcome, "abc123") for outcome in outcomes]

    # raw columns as a site has them: integer AGE, text SEX and TRT01P, plus an unused column
    frame = pd.DataFrame(
        {
            "AGE": [45, 62, 80, 71],
            "SEX": ["F", "M", "M", "F"],
            "TRT01P": ["Placebo", "Drug", "Placebo", "Drug"],
            "RACE": ["ASIAN"] * 4,
        }
    )
    expected = [predict(o.model(), o.encoder.encode(frame)) for o in outcomes]
    path = tmp_path / "frame.json"
    path.write_text(frame.to_json(orient="split"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", SCORE, uri, str(path), *(m.model_uri for m in logged)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,  # not the repository: models comes from the logged code_paths
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    for got, want in zip(scores, expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-12)
    assert np.ptp(expected[1]) > 0  # the network's scores depend on the features
    # higher score = earlier event: the linear model's AGE coefficient is positive (older, riskier)
    outcome = outcomes[0]
    assert outcome.coefficients()["AGE"] > 0  # type: ignore[index]

    client = mlflow.MlflowClient(uri)
    model_entity = client.get_logged_model(logged[0].model_id)
    assert model_entity.tags[PLAN_TAG] == "abc123"
    assert model_entity.tags[SITES_TAG] == ",".join(outcome.sites)
    loaded = mlflow.pyfunc.load_model(logged[0].model_uri)
    assert loaded.metadata.signature is not None
    names = [c.name for c in loaded.metadata.signature.inputs]
    assert names == ["AGE", "SEX", "TRT01P"]
    # the input example is synthetic: its ages are the pooled mean +/- SDs, not a subject's
    example = input_example(outcome)
    mean, sd = outcome.encoder.numeric["AGE"]
    assert example["AGE"].tolist() == [round(mean + sd * (k - 2) / 2, 3) for k in range(5)]
    # metrics per round, step = round
    log_training_metrics(client, logged[0].run_id, outcome, "risk")
    history = client.get_metric_history(logged[0].run_id, "risk.harrell_c")
    assert [m.step for m in history] == [1, 2, 3]
    assert history[-1].value == outcome.final["combined"]["harrell_c"]
    site = outcome.sites[0]
    assert len(client.get_metric_history(logged[0].run_id, f"risk.site.{site}.test_loss")) == 3
    mlflow.set_tracking_uri("")
