"""Log a federated training run to MLflow: metrics per round and the model as a pyfunc.

:func:`log_trained_model` logs the final model with :class:`models.pyfunc_model.RiskModel`, a
signature and a synthetic input example (means, SDs and levels of the encoder, never a patient
row), ``code_paths`` = the ``models`` package so that it loads in a fresh process, and tags naming
the plan hash and the sites that trained it. :func:`log_training_metrics` logs the combined and
per-site metrics with ``step = round`` and the privacy spent.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import models
from federation.training_outcome import TrainingOutcome
from models.pyfunc_model import RiskModel, write_artifacts

PLAN_TAG = "trialfed.plan_sha256"
SITES_TAG = "trialfed.sites"


@dataclass(frozen=True)
class LoggedModel:
    """Where the model went: ``mlflow.pyfunc.load_model(model_uri)`` loads it."""

    model_uri: str
    model_id: str
    run_id: str


def input_example(outcome: TrainingOutcome, rows: int = 5) -> pd.DataFrame:
    """Synthetic raw feature rows from the encoder's statistics (no patient row)."""
    return pd.DataFrame(outcome.encoder.example(rows))


def _requirements() -> list[str]:
    import mlflow
    import torch

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]


def signature(outcome: TrainingOutcome) -> Any:
    """Input: one column per feature; categorical ones strings, numeric ones of any numeric
    type (MLflow refuses int64 for a double column, and ADSL ages are integers: the encoder
    converts). Output: one double per row."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

    inputs: list[ColSpec | TensorSpec] = [
        ColSpec(AnyType(), name) if name in outcome.encoder.numeric else ColSpec("string", name)
        for name in outcome.encoder.features
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double")]))


def _log(outcome: TrainingOutcome, plan_sha256: str, name: str) -> Any:
    import mlflow

    example = input_example(outcome)
    tags = {PLAN_TAG: plan_sha256, SITES_TAG: ",".join(outcome.sites)}
    with tempfile.TemporaryDirectory(prefix="trialfed-model-") as folder:
        artifacts = write_artifacts(
            Path(folder),
            outcome.spec.model,
            list(outcome.spec.hidden),
            outcome.encoder,
            outcome.state,
        )
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=RiskModel(),
            artifacts=artifacts,
            code_paths=[str(Path(models.__file__).parent)],
            signature=signature(outcome),
            input_example=example,
            pip_requirements=_requirements(),
            tags=tags,
            params={"model": outcome.spec.model, "strategy": outcome.spec.strategy},
        )
    mlflow.set_tags(tags)
    return info


def log_trained_model(
    outcome: TrainingOutcome, plan_sha256: str, run_id: str | None = None, name: str = "model"
) -> LoggedModel:
    """Log the trained model into the active run, run ``run_id``, or a new run."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        info = _log(outcome, plan_sha256, name)
        return LoggedModel(info.model_uri, str(info.model_id), active.info.run_id)
    with mlflow.start_run(run_id=run_id) as run:
        info = _log(outcome, plan_sha256, name)
        return LoggedModel(info.model_uri, str(info.model_id), run.info.run_id)


def log_training_metrics(client: Any, run_id: str, outcome: TrainingOutcome, prefix: str) -> None:
    """Metrics ``{prefix}.{key}`` with ``step = round``; epsilon and delta when DP was on."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    rows = [Metric(f"{prefix}.{k}", v, now, step) for k, v, step in outcome.metric_series()]
    if outcome.privacy is not None:
        rows += [
            Metric(f"{prefix}.dp_epsilon", outcome.privacy.epsilon, now, outcome.spec.rounds),
            Metric(f"{prefix}.dp_delta", outcome.privacy.delta, now, outcome.spec.rounds),
        ]
    for start in range(0, len(rows), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=rows[start : start + 1000])


def log_section(
    section: Mapping[str, Any], name: str, run_id: str, plan_sha256: str, uri: str | None
) -> dict[str, Any]:
    """Log the model of a ``train`` results section into run ``run_id``; the fields for the
    section: ``model_uri`` (``mlflow.pyfunc.load_model(model_uri)`` scores a DataFrame of the
    plan's raw feature columns) and ``model_id``."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    logged = log_trained_model(TrainingOutcome.from_dict(section), plan_sha256, run_id, name)
    return {"model_uri": logged.model_uri, "model_id": logged.model_id}
