"""A ``train`` analysis in the Flower simulation engine, as ``trialfed run`` runs it: the survival
protocol first, then Flower's strategy over the same sites; the model lands in MLflow, loads in a
fresh process with ``mlflow.pyfunc`` and scores raw columns; the same seed gives the same model
bit for bit; each site audited every training request; a site whose policy does not allow
training refuses it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.synth import generate_trial, write_trial
from sites.node import default_audit_log
from tests.test_simulation import _trialfed

pytestmark = pytest.mark.slow

PLAN = """
[study]
id = "TRAIN"

[[analysis]]
name = "km"
kind = "km"
param = "OS"
by = "TRT01P"

[[analysis]]
name = "risk"
kind = "train"
param = "OS"
model = "cox-linear"
features = ["AGE", "SEX", "TRT01P"]
strategy = "fedavg"
rounds = 4
lr = 0.5
seed = 3
test_fraction = 0.25
"""

SCORE = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
frame = pd.DataFrame({"AGE": [40, 75], "SEX": ["F", "M"], "TRT01P": ["Placebo", "Drug"]})
print(json.dumps([float(x) for x in model.predict(frame)]))
"""


def _run(tmp_path: Path, bundles: list[Path], out: str) -> dict:
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    done = _trialfed(
        ["run", str(plan), "--sites", *map(str, bundles), "--out", str(tmp_path / out)], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / out / "results.json").read_text())


def test_a_train_analysis_runs_logs_a_model_and_is_reproducible(tmp_path: Path) -> None:
    write_trial(generate_trial("drug", subjects=600, sites=3, seed=4), tmp_path / "t", "csv")
    bundles = sorted((tmp_path / "t" / "sites").iterdir())
    first = _run(tmp_path, bundles, "a")
    risk = first["analyses"]["risk"]
    assert risk["kind"] == "train" and len(risk["history"]) == 4
    assert sorted(risk["sites"]) == [b.name for b in bundles]
    again = _run(tmp_path, bundles, "b")["analyses"]["risk"]
    assert again["state"] == risk["state"]  # the same seed, the same model, bit for bit
    # the reviewer's view: the model from MLflow scores a DataFrame of raw columns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    scored = subprocess.run(
        [sys.executable, "-c", SCORE, uri, risk["model_uri"]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=True,
    )
    scores = json.loads(scored.stdout.strip().splitlines()[-1])
    coefficients = risk["coefficients"]
    # higher risk for the older man on placebo when age and male sex raise the hazard
    assert (scores[0] < scores[1]) == (coefficients["AGE"] + coefficients.get("SEX=M", 0) > 0)
    # every training request is in each site's audit log, with what left
    entries = [json.loads(x) for x in default_audit_log(bundles[0]).read_text().splitlines()]
    trained = [e for e in entries if e.get("asked") and "train" in e["asked"][0]]
    assert trained and all(e["outcome"] == "answered" and e["released"] for e in trained)


def test_a_site_that_does_not_allow_training_refuses_it(tmp_path: Path) -> None:
    write_trial(generate_trial("drug", subjects=600, sites=3, seed=4), tmp_path / "t", "csv")
    bundles = sorted((tmp_path / "t" / "sites").iterdir())
    policy = bundles[0] / "site.toml"
    policy.write_text(re.sub(r', "train"\]', "]", policy.read_text()))
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    done = _trialfed(
        ["run", str(plan), "--sites", *map(str, bundles), "--out", str(tmp_path / "o")], tmp_path
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"site {bundles[0].name} refuses analysis 'risk'" in done.stderr
    assert "allowed_analyses" in done.stderr and "Traceback" not in done.stderr
