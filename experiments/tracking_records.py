"""MLflow names, params and metrics of a federated run, as pure functions of its results.

Keys are MLflow-valid (:func:`metric_name`), values within MLflow's limits; None and non-finite
numbers are left out. :mod:`experiments.tracking` logs what these functions return.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

MAX_KEY = 250
MAX_PARAM = 6000
CHILD_PARAMS = {"kind", "param", "by", "arm", "reference", "treatment", "strata", "ties", "alpha"}


def safe_part(text: Any) -> str:
    """One component of an MLflow key: alphanumerics, ``_-.`` and space; others become ``_``."""
    part = re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(text)).strip()
    return "_" if part in {"", ".", ".."} else part


def metric_name(*parts: Any) -> str:
    """An MLflow-valid metric or param key from ``parts`` joined with ``/``."""
    return "/".join(safe_part(p) for p in parts)[:MAX_KEY]


def mlflow_key(key: str) -> str:
    """``key`` (parts joined by ``/``) made MLflow-valid part by part (:func:`metric_name`)."""
    return metric_name(*key.split("/"))


def param_value(value: Any) -> str:
    """A param value as MLflow stores it: lists comma-joined, tables as JSON, cut to the limit."""
    if isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, Mapping):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text[:MAX_PARAM]


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _cox_metrics(cox: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for term, t in cox.get("terms", {}).items():
        for field in ("hr", "hr_lower", "hr_upper", "p", "coef", "se"):
            out[metric_name(*prefix, term, field)] = finite_or_none(t.get(field))
    out[metric_name(*prefix, "loglik_final")] = finite_or_none(cox.get("loglik"))
    out[metric_name(*prefix, "rounds")] = finite_or_none(cox.get("rounds"))
    return out


def analysis_metrics(a: Mapping[str, Any]) -> dict[str, float]:
    """Key numbers of one analysis as MLflow metrics (None and non-finite values left out).

    cox: ``<term>/hr``, ``hr_lower``, ``hr_upper``, ``p`` (+ coef, se), ``loglik_final``;
    ve: ``ve``, ``ve_lower``, ``ve_upper``, ``hr*``, ``p``, ``interaction_p``,
    ``country/<C>/...`` and the Cox model under ``cox/``; km: ``median/<group>``;
    logrank: ``statistic``, ``p``, ``df``; summary: ``n/<group>``.
    """
    kind = a.get("kind")
    out: dict[str, float | None] = {}
    if kind == "cox":
        out.update(_cox_metrics(a))
    elif kind == "ve":
        for key, name in (("ve", "ve"), ("lower", "ve_lower"), ("upper", "ve_upper")):
            out[name] = finite_or_none(a.get(key))
        for key in ("hr", "hr_lower", "hr_upper", "p", "interaction_p"):
            out[key] = finite_or_none(a.get(key))
        for country, c in a.get("by_country", {}).items():
            for key in ("hr", "hr_lower", "hr_upper", "ve", "lower", "upper", "n", "events"):
                out[metric_name("country", country, key)] = finite_or_none(c.get(key))
        if a.get("cox"):
            out.update(_cox_metrics(a["cox"], ("cox",)))
    elif kind == "km":
        for level, g in a.get("groups", {}).items():
            out[metric_name("median", level)] = finite_or_none(g.get("median"))
    elif kind == "logrank":
        for key in ("statistic", "p", "df"):
            out[key] = finite_or_none(a.get(key))
    elif kind == "summary":
        for level, g in a.get("groups", {}).items():
            out[metric_name("n", level)] = finite_or_none(g.get("n"))
    return {k: v for k, v in out.items() if v is not None}


def history_points(a: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """Per-round Cox convergence ``(key, value, step=round)``: ``loglik`` and ``step_norm``."""
    cox = a if a.get("kind") == "cox" else a.get("cox") or {}
    points = []
    for h in cox.get("history") or []:
        for key in ("loglik", "step_norm"):
            value = finite_or_none(h.get(key))
            if value is not None:
                points.append((key, value, int(h["round"])))
    return points


def plan_params(plan_text: str) -> dict[str, Any]:
    """Params of the plan: ``run/<key>``, the analysis names, ``analysis/<name>/<key>``."""
    import tomllib

    try:
        plan = tomllib.loads(plan_text)
    except tomllib.TOMLDecodeError as exc:
        return {"plan.parse_error": str(exc)}
    params: dict[str, Any] = {}
    for key, value in (plan.get("run") or {}).items():
        params[metric_name("run", key)] = value
    analyses = plan.get("analysis") or []
    params["analyses"] = [a.get("name", "") for a in analyses]
    for a in analyses:
        for key, value in a.items():
            if key != "name":
                params[metric_name("analysis", a.get("name", "_"), key)] = value
    return params


def site_params(sites: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Params naming the sites that were asked, their countries, sizes and policies.

    Logged when the run completes: only then does the coordinator know who answered.
    """
    params: dict[str, Any] = {
        "sites": [s.get("id") for s in sites],
        "countries": sorted({str(s.get("country")) for s in sites}),
    }
    for s in sites:
        for key in ("name", "country", "n", "events", "policy", "contributed"):
            if key in s:
                params[metric_name("site", s.get("id"), key)] = s[key]
    return params
