"""Table 1 (baseline characteristics and event counts): site sums and the coordinator summary.

Site half
    :func:`summary_aggregate` reduces one site's subjects to additive sums per arm; sites' dicts
    are combined with :func:`add_summaries` (plain recursive sums, so the order of sites does
    not matter and the dicts travel as JSON).
Coordinator half
    :func:`summarise` turns the summed dict into per-arm and overall n, age mean and SD, sex
    counts and events/censored per endpoint (PARAMCD).

Aggregate layout (every leaf a Python ``int`` or ``float``)::

    {"arms": {arm: {"n": int, "age_n": int, "age_sum": float, "age_sumsq": float,
                    "sex": {level: int}, "events": {paramcd: int},
                    "censored": {paramcd: int}}}}

``age_n`` counts non-missing (finite) ages; missing ages are left out of the mean and SD.
Arm and sex labels follow :func:`analysis.base.format_level` (missing -> ``""``).

Numerics of the SD
    The coordinator computes ``var = (S2 - S1**2 / m) / (m - 1)`` from ``m = age_n``,
    ``S1 = sum age`` and ``S2 = sum age**2``. When the ages are whole numbers (ADSL ``AGE`` in
    years) both sums are integers below 2**53, hence exact in float64 at every site and after
    summing; the numerator ``m * S2 - S1**2`` is then formed in exact integer arithmetic and
    divided once, so the variance is correctly rounded and the federated SD equals the pooled
    one. Otherwise the sites use pairwise summation (``numpy.sum``) and the cancellation in the
    numerator costs a factor ``mean**2 / var`` (about 40 for adult ages) of relative error:
    about 1e-14, far below the printed precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from analysis.base import factorize_labels, json_safe

_EXACT = 2.0**53


def _counts(labels: list[str], codes: NDArray[np.intp], mask: NDArray[np.bool_]) -> dict[str, int]:
    counts = np.bincount(codes[mask], minlength=len(labels))
    return {label: int(c) for label, c in zip(labels, counts, strict=True) if c > 0}


def summary_aggregate(
    arm: ArrayLike,
    age: ArrayLike,
    sex: ArrayLike,
    endpoints: Mapping[str, tuple[ArrayLike, ArrayLike]],
) -> dict[str, Any]:
    """Additive Table 1 sums of one site (site half).

    Parameters
    ----------
    arm : array_like, shape (n,)
        Arm of each subject (ADSL ``TRT01P`` or the plan's ``by`` variable).
    age : array_like of float, shape (n,)
        Age of each subject; NaN when missing.
    sex : array_like, shape (n,)
        Sex of each subject.
    endpoints : mapping of str to (array_like, array_like)
        For each PARAMCD, the arm of each ADTTE row and whether its event was observed.

    Returns
    -------
    dict
        ``{"arms": {arm: {...}}}`` as in the module docstring; combine sites with
        :func:`add_summaries`.
    """
    arm_values = np.asarray(arm)
    age_values = np.asarray(age, dtype=np.float64).reshape(-1)
    sex_values = np.asarray(sex)
    if not (arm_values.shape == age_values.shape == sex_values.shape):
        raise ValueError(
            f"arm, age and sex must have one length; got {arm_values.shape}, "
            f"{age_values.shape} and {sex_values.shape}"
        )
    arm_labels, arm_codes = factorize_labels(arm_values)
    sex_labels, sex_codes = factorize_labels(sex_values)
    has_age = np.isfinite(age_values)
    arms: dict[str, dict[str, Any]] = {}

    def entry(label: str) -> dict[str, Any]:
        if label not in arms:
            arms[label] = {
                "n": 0,
                "age_n": 0,
                "age_sum": 0.0,
                "age_sumsq": 0.0,
                "sex": {},
                "events": {},
                "censored": {},
            }
        return arms[label]

    for a, label in enumerate(arm_labels):
        rows = arm_codes == a
        ages = age_values[rows & has_age]
        item = entry(label)
        item["n"] = int(rows.sum())
        item["age_n"] = int(ages.size)
        item["age_sum"] = float(np.sum(ages))
        item["age_sumsq"] = float(np.sum(ages * ages))
        item["sex"] = _counts(sex_labels, sex_codes, rows)

    for paramcd, (row_arm, event) in endpoints.items():
        row_arm_values = np.asarray(row_arm)
        events = np.asarray(event, dtype=bool).reshape(-1)
        if row_arm_values.shape != events.shape:
            raise ValueError(
                f"endpoint {paramcd!r}: arm and event must have one length; got "
                f"{row_arm_values.shape} and {events.shape}"
            )
        labels, codes = factorize_labels(row_arm_values)
        n_event = np.bincount(codes[events], minlength=len(labels))
        n_rows = np.bincount(codes, minlength=len(labels))
        for a, label in enumerate(labels):
            item = entry(label)
            item["events"][str(paramcd)] = int(n_event[a])
            item["censored"][str(paramcd)] = int(n_rows[a] - n_event[a])
    return {"arms": arms}


def add_summaries(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Sum two aggregates key by key (union of keys; neither input is modified).

    Parameters
    ----------
    a, b : mapping
        Outputs of :func:`summary_aggregate` or earlier sums.

    Returns
    -------
    dict
        Nested dict whose numeric leaves are ``a + b`` (a key missing on one side counts as 0).
    """
    out: dict[str, Any] = {}
    for key in {*a, *b}:
        if key not in b:
            out[key] = _copy(a[key])
        elif key not in a:
            out[key] = _copy(b[key])
        elif isinstance(a[key], Mapping) and isinstance(b[key], Mapping):
            out[key] = add_summaries(a[key], b[key])
        elif isinstance(a[key], Mapping) or isinstance(b[key], Mapping):
            raise ValueError(f"cannot add a mapping to a number at key {key!r}")
        else:
            out[key] = a[key] + b[key]
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _mean_sd(m: int, s1: float, s2: float) -> tuple[float, float]:
    """Mean and SD (ddof=1) from a count, sum and sum of squares (see the module notes)."""
    if m == 0:
        return float("nan"), float("nan")
    mean = s1 / m
    if m < 2:
        return mean, float("nan")
    if float(s1).is_integer() and float(s2).is_integer() and max(abs(s1), abs(s2)) < _EXACT:
        numerator = m * int(s2) - int(s1) ** 2  # exact integer arithmetic
        var = numerator / (m * (m - 1))
    else:
        var = (s2 - s1 * s1 / m) / (m - 1)
    return mean, math.sqrt(max(var, 0.0))


@dataclass(frozen=True)
class GroupSummary:
    """Table 1 column of one arm (or overall).

    Attributes
    ----------
    n : int
        Subjects.
    age_n : int
        Subjects with a known age.
    age_mean, age_sd : float
        Mean and SD (ddof=1) of age; NaN when undefined.
    sex : mapping of str to int
        Subjects per sex level (every level seen in any arm, zeros included).
    events, censored : mapping of str to int
        Events and censored rows per PARAMCD (every PARAMCD, zeros included).
    """

    n: int
    age_n: int
    age_mean: float
    age_sd: float
    sex: Mapping[str, int]
    events: Mapping[str, int]
    censored: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe entry: n, age_mean, age_sd, sex, events, censored."""
        return json_safe(
            {
                "n": self.n,
                "age_mean": self.age_mean,
                "age_sd": self.age_sd,
                "sex": dict(self.sex),
                "events": dict(self.events),
                "censored": dict(self.censored),
            }
        )


def _group(
    items: list[Mapping[str, Any]], sex_levels: list[str], params: list[str]
) -> GroupSummary:
    m = int(sum(int(x["age_n"]) for x in items))
    s1 = math.fsum(float(x["age_sum"]) for x in items)
    s2 = math.fsum(float(x["age_sumsq"]) for x in items)
    mean, sd = _mean_sd(m, s1, s2)

    def total(field: str, keys: list[str]) -> Mapping[str, int]:
        return MappingProxyType({k: int(sum(int(x[field].get(k, 0)) for x in items)) for k in keys})

    return GroupSummary(
        n=int(sum(int(x["n"]) for x in items)),
        age_n=m,
        age_mean=mean,
        age_sd=sd,
        sex=total("sex", sex_levels),
        events=total("events", params),
        censored=total("censored", params),
    )


@dataclass(frozen=True)
class SummaryResult:
    """Table 1 over all sites (immutable).

    Attributes
    ----------
    groups : mapping of str to GroupSummary
        One entry per arm, arms sorted.
    overall : GroupSummary
        All arms together.
    """

    groups: Mapping[str, GroupSummary]
    overall: GroupSummary

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe ``{"groups": {arm: {...}}, "overall": {...}}`` for results.json."""
        return {
            "groups": {level: g.to_dict() for level, g in self.groups.items()},
            "overall": self.overall.to_dict(),
        }

    @property
    def table(self) -> pd.DataFrame:
        """Table 1: rows (variable, level), columns the arms then ``"Overall"``."""
        columns = {**self.groups, "Overall": self.overall}
        rows: list[tuple[str, str]] = [("n", ""), ("age", "n"), ("age", "mean"), ("age", "sd")]
        rows += [("sex", s) for s in self.overall.sex]
        rows += [("events", p) for p in self.overall.events]
        rows += [("censored", p) for p in self.overall.censored]

        def value(g: GroupSummary, row: tuple[str, str]) -> float:
            variable, level = row
            if variable == "n":
                return float(g.n)
            if variable == "age":
                return float({"n": g.age_n, "mean": g.age_mean, "sd": g.age_sd}[level])
            return float(getattr(g, variable)[level])

        data = {name: [value(g, r) for r in rows] for name, g in columns.items()}
        index = pd.MultiIndex.from_tuples(rows, names=["variable", "level"])
        return pd.DataFrame(data, index=index)


def summarise(total: Mapping[str, Any]) -> SummaryResult:
    """Table 1 from the sum of the sites' aggregates (coordinator half).

    Parameters
    ----------
    total : mapping
        :func:`summary_aggregate` output, or the :func:`add_summaries` sum over sites.

    Returns
    -------
    SummaryResult
    """
    try:
        arms: Mapping[str, Mapping[str, Any]] = total["arms"]
        sex_levels = sorted({s for item in arms.values() for s in item["sex"]})
        params = sorted({p for item in arms.values() for p in (*item["events"], *item["censored"])})
        groups = {level: _group([arms[level]], sex_levels, params) for level in sorted(arms)}
        overall = _group(list(arms.values()), sex_levels, params)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a Table 1 aggregate: missing or malformed {exc}") from None
    return SummaryResult(groups=MappingProxyType(groups), overall=overall)
