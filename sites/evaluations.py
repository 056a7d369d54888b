"""Which coefficient vectors a site agrees to evaluate a Cox model at.

A hostile coordinator could ask for the score at a coefficient vector chosen to isolate one
subject (an extreme value on a rare dummy) or for many evaluations to solve for the rows. Under
the small-cell rules (k > 0) a site evaluates a model only at points that the plan's own Newton
iteration can reach:

- every coefficient, scaled by its column's standard deviation at the site, is at most
  :data:`MAX_SCALED_COEF` in absolute value (a hazard ratio of e^5 per standard deviation);
- each new point is within :data:`MAX_SCALED_STEP` (scaled, max norm) of a point the site
  already evaluated for this model and plan, or of an anchor: zero or the site's own fit;
- at most ``[run] max_rounds`` distinct points per model and plan (a point evaluated before,
  e.g. when the same plan is run again on the same data, is answered again without counting).

The points are kept per plan hash and data version in ``<audit folder>/evaluations/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

MAX_SCALED_COEF = 5.0
MAX_SCALED_STEP = 3.0

FloatArray = NDArray[np.float64]


class BetaRefused(Exception):
    """The coefficient vector does not follow from the plan's iteration (message says why)."""


def _scaled(beta: FloatArray, scale: FloatArray) -> FloatArray:
    return np.abs(beta * scale)


def check_point(
    beta: FloatArray,
    terms: tuple[str, ...],
    scale: FloatArray,
    anchors: list[FloatArray],
    previous: list[FloatArray],
    max_points: int,
) -> bool:
    """Whether ``beta`` may be evaluated; returns True when it is a new point.

    Raises
    ------
    BetaRefused
        Naming the term and the bound it breaks.
    """
    if beta.shape != scale.shape or not np.all(np.isfinite(beta)):
        raise BetaRefused(f"coefficient vector must be {scale.size} finite numbers")
    if any(np.array_equal(beta, p) for p in previous):
        return False
    size = _scaled(beta, scale)
    if np.any(size > MAX_SCALED_COEF):
        j = int(np.argmax(size))
        raise BetaRefused(
            f"coefficient of {terms[j]!r} is {beta[j]:.6g}: |coef x SD| = {size[j]:.3g} exceeds "
            f"{MAX_SCALED_COEF:g} (a hazard ratio of e^{MAX_SCALED_COEF:g} per standard deviation)"
        )
    if len(previous) >= max_points:
        raise BetaRefused(
            f"this model was already evaluated at {len(previous)} points for this plan "
            f"(max_rounds = {max_points})"
        )
    nearest = min(float(np.max(_scaled(beta - p, scale), initial=0.0)) for p in anchors + previous)
    if nearest > MAX_SCALED_STEP:
        raise BetaRefused(
            f"the coefficient vector is {nearest:.3g} scaled units from every point this site "
            f"evaluated or fitted for this model (at most {MAX_SCALED_STEP:g} per Newton step)"
        )
    return True


class EvaluationLog:
    """The evaluated points of one plan at one site (a small JSON file, written atomically)."""

    def __init__(self, folder: Path, plan_sha256: str, data_version: str) -> None:
        tag = hashlib.sha256(f"{plan_sha256}:{data_version}".encode()).hexdigest()[:32]
        self.path = folder / "evaluations" / f"{tag}.json"
        try:
            self.models: dict[str, list[list[float]]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.models = {}

    def points(self, model_id: str) -> list[FloatArray]:
        """The points evaluated so far for ``model_id``."""
        return [np.asarray(p, dtype=np.float64) for p in self.models.get(model_id, [])]

    def add(self, model_id: str, beta: FloatArray) -> None:
        """Record a new point (kept in memory until :meth:`save`)."""
        self.models.setdefault(model_id, []).append([float(b) for b in beta])

    def save(self) -> None:
        """Write the log atomically (before the answers leave the site)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self.models, handle)
        os.replace(tmp, self.path)


def describe(beta: Any) -> list[float]:
    """A coefficient vector as plain floats (for the audit log)."""
    return [float(b) for b in np.asarray(beta, dtype=np.float64).reshape(-1)]
