"""Feature encoding built from federated aggregates, carried inside the trained model.

Site half
    :func:`feature_aggregates` reduces a site's feature columns to counts and sums: per numeric
    feature the number of non-missing values, their sum and their sum of squared deviations from
    the site mean; per categorical feature the number of subjects at each level.
Coordinator half
    :func:`combine_aggregates` pools them exactly (Chan et al.'s parallel variance formula) into a
    :class:`FeatureEncoder`.

Disclosure rule (``min_cell_count`` k, the site's own policy): a site reports a categorical level
only when at least k of its subjects have it, and a numeric feature's sum and sum of squares only
when at least k subjects have a value. Suppressed levels are not in the encoder unless another site
reports them; the site reports how many levels it suppressed, never which. k = 0 reports all.

Encoding: numeric ``(x - mean) / sd`` with the pooled mean and SD (SD 1 for a constant feature),
a missing value as the mean (0); categorical: one indicator per pooled level except the first in
sorted order (the reference, as in :mod:`analysis.cox`), itself standardised with the pooled
share of the level among all rows (``(d - p) / sd``; gradient methods converge much faster on
standardised columns), so an unknown, suppressed or missing level encodes as the reference.
This module needs numpy only: it is loaded by the MLflow model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

MISSING = ""
"""The label of a missing categorical value."""


def label(value: Any) -> str:
    """Canonical text of a categorical value: integral floats without ``.0``, missing as ''."""
    if value is None:
        return MISSING
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return MISSING
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value).strip()


def is_numeric(values: NDArray[Any]) -> bool:
    """Numeric columns are scaled, others one-hot encoded."""
    return np.asarray(values).dtype.kind in "biuf"


def feature_aggregates(
    columns: Mapping[str, NDArray[Any]], features: Sequence[str], min_cell_count: int = 0
) -> dict[str, Any]:
    """Site half: JSON-safe aggregates of ``features`` (see the module notes for the rule).

    Returns
    -------
    dict
        ``{"n": rows, "numeric": {name: {"n", "sum", "m2"}}, "levels": {name: {level: count}},
        "suppressed": {name: number of levels not reported}}``.
    """
    out: dict[str, Any] = {"n": 0, "numeric": {}, "levels": {}, "suppressed": {}}
    for name in features:
        values = np.asarray(columns[name])
        out["n"] = int(values.shape[0])
        if is_numeric(values):
            x = values.astype(np.float64)
            x = x[np.isfinite(x)]
            if x.size < max(min_cell_count, 1):
                out["numeric"][name] = {"n": 0, "sum": 0.0, "m2": 0.0}
                out["suppressed"][name] = 1 if x.size else 0
                continue
            mean = float(x.mean())
            out["numeric"][name] = {
                "n": int(x.size),
                "sum": float(x.sum()),
                "m2": float(np.square(x - mean).sum()),
            }
            out["suppressed"][name] = 0
        else:
            labels = [label(v) for v in values]
            counts: dict[str, int] = {}
            for lab in labels:
                if lab != MISSING:
                    counts[lab] = counts.get(lab, 0) + 1
            kept = {k: v for k, v in sorted(counts.items()) if v >= min_cell_count}
            out["levels"][name] = kept
            out["suppressed"][name] = len(counts) - len(kept)
    return out


@dataclass(frozen=True)
class FeatureEncoder:
    """Raw feature columns to a standardised design matrix (see the module notes).

    Attributes
    ----------
    features : tuple of str
        The plan's feature names, in order.
    numeric : dict of str to (mean, sd)
    levels : dict of str to tuple of str
        Pooled levels of each categorical feature, sorted; the first is the reference.
    level_scale : dict of str to tuple of (mean, sd)
        Standardisation of each non-reference level's indicator.
    counts : dict
        Pooled numbers of subjects (numeric: with a value; categorical: per level), for reports.
    """

    features: tuple[str, ...]
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)
    levels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    level_scale: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the design matrix columns: ``AGE``, ``SEX=M``, ..."""
        names: list[str] = []
        for name in self.features:
            if name in self.numeric:
                names.append(name)
            else:
                names += [f"{name}={level}" for level in self.levels[name][1:]]
        return tuple(names)

    def encode(self, columns: Mapping[str, Any]) -> NDArray[np.float64]:
        """Design matrix (n, len(columns)) of float64 from raw columns (a DataFrame works).

        Raises
        ------
        KeyError
            Naming the missing feature column.
        """
        blocks: list[NDArray[np.float64]] = []
        for name in self.features:
            if name not in columns:
                raise KeyError(f"feature column {name!r} is missing")
            raw = np.asarray(columns[name])
            if name in self.numeric:
                mean, sd = self.numeric[name]
                x = _to_float(raw)
                z = np.where(np.isfinite(x), (x - mean) / sd, 0.0)
                blocks.append(z.reshape(-1, 1))
            else:
                labels = np.asarray([label(v) for v in raw], dtype=object)
                levels = self.levels[name][1:]
                block = np.zeros((labels.shape[0], len(levels)), dtype=np.float64)
                for j, (level, (mean, sd)) in enumerate(
                    zip(levels, self.level_scale[name], strict=True)
                ):
                    block[:, j] = ((labels == level) - mean) / sd
                blocks.append(block)
        n = len(np.asarray(columns[self.features[0]])) if self.features else 0
        return np.hstack(blocks) if blocks else np.zeros((n, 0))

    def example(self, rows: int = 5) -> dict[str, list[Any]]:
        """A synthetic input (never a patient row): means +/- SDs and the levels in turn."""
        out: dict[str, list[Any]] = {}
        for name in self.features:
            if name in self.numeric:
                mean, sd = self.numeric[name]
                out[name] = [round(mean + sd * (k - rows // 2) / 2, 3) for k in range(rows)]
            else:
                levels = self.levels[name] or (MISSING,)
                out[name] = [levels[k % len(levels)] for k in range(rows)]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (travels in messages and inside the MLflow model)."""
        return {
            "features": list(self.features),
            "numeric": {k: list(v) for k, v in self.numeric.items()},
            "levels": {k: list(v) for k, v in self.levels.items()},
            "level_scale": {k: [list(x) for x in v] for k, v in self.level_scale.items()},
            "counts": self.counts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoder:
        """Inverse of :meth:`to_dict`."""
        return cls(
            features=tuple(data["features"]),
            numeric={k: (float(v[0]), float(v[1])) for k, v in data["numeric"].items()},
            levels={k: tuple(str(x) for x in v) for k, v in data["levels"].items()},
            level_scale={
                k: tuple((float(m), float(sd)) for m, sd in v)
                for k, v in data["level_scale"].items()
            },
            counts=dict(data.get("counts", {})),
        )


def _to_float(raw: NDArray[Any]) -> NDArray[np.float64]:
    if raw.dtype.kind in "biuf":
        return raw.astype(np.float64)
    out = np.full(raw.shape[0], np.nan)
    for i, v in enumerate(raw):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            out[i] = np.nan
    return out


def combine_aggregates(
    parts: Sequence[Mapping[str, Any]], features: Sequence[str]
) -> FeatureEncoder:
    """Coordinator half: pool the sites' aggregates into a :class:`FeatureEncoder`.

    Raises
    ------
    ValueError
        When a feature is numeric at one site and categorical at another, has no value reported
        by any site, or has fewer than two pooled levels.
    """
    numeric: dict[str, tuple[float, float]] = {}
    levels: dict[str, tuple[str, ...]] = {}
    scales: dict[str, tuple[tuple[float, float], ...]] = {}
    counts: dict[str, Any] = {}
    rows = sum(int(p["n"]) for p in parts)
    for name in features:
        kinds = {"numeric" if name in p["numeric"] else "levels" for p in parts}
        if len(kinds) != 1:
            raise ValueError(f"feature {name!r} is numeric at some sites and categorical at others")
        if kinds == {"numeric"}:
            n, mean, m2 = 0, 0.0, 0.0
            for p in parts:
                s = p["numeric"][name]
                if s["n"] == 0:
                    continue
                n_b, mean_b = s["n"], s["sum"] / s["n"]
                delta = mean_b - mean
                total = n + n_b
                m2 += s["m2"] + delta * delta * n * n_b / total
                mean += delta * n_b / total
                n = total
            if n == 0:
                raise ValueError(f"feature {name!r}: no site reported a value")
            sd = math.sqrt(m2 / (n - 1)) if n > 1 else 0.0
            numeric[name] = (mean, sd if sd > 0 else 1.0)
            counts[name] = n
        else:
            pooled: dict[str, int] = {}
            for p in parts:
                for level, count in p["levels"][name].items():
                    pooled[level] = pooled.get(level, 0) + int(count)
            if len(pooled) < 2:
                raise ValueError(
                    f"feature {name!r} has fewer than two levels reported by the sites "
                    f"({sorted(pooled)}); it cannot be used as a predictor"
                )
            levels[name] = tuple(sorted(pooled))
            scales[name] = tuple(_indicator_scale(pooled[v], rows) for v in levels[name][1:])
            counts[name] = dict(sorted(pooled.items()))
    return FeatureEncoder(tuple(features), numeric, levels, scales, counts)


def _indicator_scale(count: int, rows: int) -> tuple[float, float]:
    """Mean and SD (n - 1 denominator, as for numeric features) of a 0/1 indicator."""
    p = count / rows
    var = p * (1.0 - p) * rows / (rows - 1) if rows > 1 else 0.0
    return p, math.sqrt(var) if var > 0 else 1.0
