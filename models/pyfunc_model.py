"""The MLflow pyfunc wrapper of a trained trialfed model (loaded by ``mlflow.pyfunc.load_model``).

The logged model holds two artifacts: ``model.json`` (model kind, layer widths, the
:class:`~models.features.FeatureEncoder` and the weight names) and ``weights.npz``. It takes a
DataFrame of the plan's raw feature columns, encodes and scales them with the encoder, and returns
one risk score per row (higher = earlier event): the log-hazard ratio of the Cox models, the
log-odds of the logistic model. Only ``models`` is needed to load it (logged as ``code_paths``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from models.features import FeatureEncoder
from models.nets import build_model
from models.task import predict, set_parameters

SPEC_ARTIFACT = "model_spec"
WEIGHTS_ARTIFACT = "weights"


def write_artifacts(
    folder: Path,
    kind: str,
    hidden: list[int],
    encoder: FeatureEncoder,
    state: dict[str, np.ndarray],
) -> dict[str, str]:
    """Write ``model.json`` and ``weights.npz`` into ``folder``; the artifacts mapping."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "kind": kind,
        "hidden": list(hidden),
        "encoder": encoder.to_dict(),
        "weights": list(state),
        "output": "risk score (higher = earlier event)",
    }
    spec_path, weights_path = folder / "model.json", folder / "weights.npz"
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in state.items()}
    np.savez(weights_path, **arrays)
    return {SPEC_ARTIFACT: str(spec_path), WEIGHTS_ARTIFACT: str(weights_path)}


class RiskModel(PythonModel):
    """Raw feature columns in, one risk score per row out."""

    def load_context(self, context: Any) -> None:
        """Rebuild the torch model and the encoder from the artifacts."""
        spec = json.loads(Path(context.artifacts[SPEC_ARTIFACT]).read_text(encoding="utf-8"))
        self.encoder = FeatureEncoder.from_dict(spec["encoder"])
        self.model = build_model(spec["kind"], len(self.encoder.columns), spec["hidden"])
        with np.load(context.artifacts[WEIGHTS_ARTIFACT]) as weights:
            set_parameters(self.model, [weights[k] for k in spec["weights"]])

    # a DataFrame hint: MLflow infers no schema from it (the signature is logged explicitly, see
    # experiments.model_logging) and does not warn
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
        """Risk scores of the rows of ``model_input`` (a DataFrame of the raw features)."""
        return predict(self.model, self.encoder.encode(model_input))
