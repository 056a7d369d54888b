"""What a federated training run produces: weights, encoder, per-round history, privacy, bytes.

:func:`combine_round` turns the sites' evaluation replies of one round into per-site values and
their combination (:mod:`analysis.metrics` says what each combination equals):

- ``train_loss``, ``test_loss``: means weighted by the rows in each loss (the pooled loss);
- ``harrell_c``, ``uno_c``: comparable-pair-weighted (concordance over the within-site pairs);
- ``harrell_c_n_weighted``: the site C-indices weighted by test subjects, for comparison;
- ``ibs`` (Cox models) or ``brier`` (logistic, at the landmark): n-weighted, which is exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray
from torch import nn

from analysis.kinds.train import TrainSpec, parse_train
from analysis.privacy import PrivacySpent
from models.features import FeatureEncoder
from models.nets import build_model
from models.task import set_parameters

PART_METRICS = {"harrell": "harrell_c", "uno": "uno_c", "ibs": "ibs", "brier": "brier"}


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def _weighted(values: list[tuple[float, float]]) -> float:
    pairs = [(v, w) for v, w in values if math.isfinite(v) and w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total > 0 else float("nan")


def combine_round(
    server_round: int,
    evaluated: Mapping[str, Mapping[str, float]],
    trained: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    """Per-site and combined metrics of one round (evaluation replies, training replies)."""
    sites: dict[str, dict[str, float]] = {}
    for site, v in evaluated.items():
        row = {
            "n_train": v["n_train"],
            "n_test": v["n_test"],
            "events_test": v["events_test"],
            "train_loss": v["train_loss"],
            "test_loss": v["test_loss"],
        }
        for part, name in PART_METRICS.items():
            if f"{part}_num" in v:
                row[name] = _ratio(v[f"{part}_num"], v[f"{part}_den"])
        if site in trained:
            row["local_loss"] = float(trained[site].get("local-loss", float("nan")))
        sites[site] = row
    combined = {
        "train_loss": _weighted([(v["train_loss"], v["n_train"]) for v in evaluated.values()]),
        "test_loss": _weighted([(v["test_loss"], v["n_test_loss"]) for v in evaluated.values()]),
        "harrell_c_n_weighted": _weighted(
            [(sites[s].get("harrell_c", math.nan), v["n_test"]) for s, v in evaluated.items()]
        ),
    }
    for part, name in PART_METRICS.items():
        if all(f"{part}_num" in v for v in evaluated.values()):
            num = sum(v[f"{part}_num"] for v in evaluated.values())
            den = sum(v[f"{part}_den"] for v in evaluated.values())
            combined[name] = _ratio(num, den)
    return {"round": server_round, "combined": combined, "sites": sites}


@dataclass
class TrainingOutcome:
    """A finished training run (see :func:`federation.training.run_training`)."""

    spec: TrainSpec
    encoder: FeatureEncoder
    state: dict[str, NDArray[Any]]
    sites: list[str]
    site_sizes: dict[str, dict[str, int]]
    history: list[dict[str, Any]]
    privacy: PrivacySpent | None = None
    bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    evaluation: dict[str, Any] = field(default_factory=dict)
    disclosure: list[dict[str, str]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        """The last round's per-site and combined metrics."""
        return self.history[-1] if self.history else {}

    def model(self) -> nn.Module:
        """The trained torch model."""
        model = build_model(
            self.spec.model, len(self.encoder.columns), self.spec.hidden, self.spec.seed
        )
        set_parameters(model, list(self.state.values()))
        return model

    def coefficients(self) -> dict[str, float] | None:
        """Linear models: one coefficient per design column (and the logistic intercept)."""
        if self.spec.model == "deepsurv":
            return None
        weights = np.asarray(self.state["linear.weight"]).reshape(-1)
        out = {c: float(w) for c, w in zip(self.encoder.columns, weights, strict=True)}
        if "linear.bias" in self.state:
            out["(intercept)"] = float(np.asarray(self.state["linear.bias"]).reshape(-1)[0])
        return out

    def metric_series(self) -> list[tuple[str, float, int]]:
        """``(key, value, step = round)`` for MLflow: combined metrics and per-site C and loss."""
        rows: list[tuple[str, float, int]] = []
        for entry in self.history:
            step = int(entry["round"])
            for key, value in entry["combined"].items():
                rows.append((key, float(value), step))
            for site, values in entry["sites"].items():
                for key in ("harrell_c", "uno_c", "ibs", "brier", "train_loss", "test_loss"):
                    if key in values:
                        rows.append((f"site.{site}.{key}", float(values[key]), step))
        return [r for r in rows if math.isfinite(r[1])]

    def to_dict(self) -> dict[str, Any]:
        """The results.json section of this analysis (JSON-safe; NaN as null)."""
        return _json_safe(
            {
                "kind": "train",
                "spec": self.spec.to_dict(),
                "sites": self.sites,
                "site_sizes": self.site_sizes,
                "features": {"columns": list(self.encoder.columns), **self.encoder.to_dict()},
                "coefficients": self.coefficients(),
                "final": self.final,
                "history": self.history,
                "evaluation": self.evaluation,
                "disclosure": self.disclosure,
                "privacy": self.privacy.to_dict() if self.privacy else None,
                "bytes_per_site": self.bytes,
                "seconds": self.seconds,
                # the trained weights: a reviewer (or `trialfed results`) can rebuild the model
                "state": {k: np.asarray(v).tolist() for k, v in self.state.items()},
            }
        )

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> TrainingOutcome:
        """Rebuild from :meth:`to_dict` (results.json): spec, encoder and weights."""
        problems: list[str] = []
        defaults = {f.name: f.default for f in fields(TrainSpec)}
        table = {
            k: v
            for k, v in section["spec"].items()
            if v is not None and (k not in defaults or k == "name" or v != defaults[k])
        }
        hidden = table.get("hidden")
        if hidden is not None and tuple(hidden) == defaults["hidden"]:
            del table["hidden"]
        spec = parse_train(table, problems)
        if spec is None:
            raise ValueError("; ".join(problems))
        privacy = section.get("privacy")
        return cls(
            spec=spec,
            encoder=FeatureEncoder.from_dict(section["features"]),
            state={k: np.asarray(v, dtype=np.float64) for k, v in section["state"].items()},
            sites=list(section["sites"]),
            site_sizes=dict(section.get("site_sizes") or {}),
            history=list(section.get("history") or []),
            privacy=PrivacySpent(**privacy) if privacy else None,
            seconds=float(section.get("seconds") or 0.0),
            evaluation=dict(section.get("evaluation") or {}),
            disclosure=list(section.get("disclosure") or []),
        )


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
