"""MLflow names, params and metrics of a federated run, as pure functions of its results.

Keys are MLflow-valid (:func:`metric_name`), values within MLflow's limits; None and non-finite
numbers are left out. :mod:`experiments.tracking` logs what these functions return.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from analysis.kinds.base import Effect, Presentation
from analysis.kinds.format import Locale

MAX_KEY = 250
MAX_PARAM = 6000


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


def analysis_metrics(shown: Presentation) -> dict[str, float]:
    """An analysis's metrics as MLflow keys (None and non-finite values left out); the
    kind declares them (:class:`analysis.kinds.base.Metric`)."""
    out = {metric_name(*m.key): finite_or_none(m.value) for m in shown.metrics if m.step is None}
    return {k: v for k, v in out.items() if v is not None}


HEADLINE_NAMES = {"hr": "HR", "ve": "VE"}


def headline_metrics(name: str, shown: Presentation) -> dict[str, float]:
    """The metrics a kind marks as headline, keyed ``<analysis>/<key>`` (the parent run's
    metrics when no analysis estimates a treatment effect)."""
    out = {
        metric_name(name, *m.key): finite_or_none(m.value)
        for m in shown.metrics
        if m.headline and m.step is None
    }
    return {k: v for k, v in out.items() if v is not None}


def effect_metrics(effects: Sequence[Effect]) -> dict[str, float]:
    """The primary analysis's estimates for the parent run: ``VE``, ``VE lower``, ``VE
    upper`` (vaccine trials), ``HR``, ``HR lower``, ``HR upper`` and ``p``."""
    out: dict[str, float | None] = {}
    for effect in effects:
        name = HEADLINE_NAMES.get(effect.measure)
        if name and name not in out:
            out[name] = finite_or_none(effect.value)
            out[f"{name} lower"] = finite_or_none(effect.lower)
            out[f"{name} upper"] = finite_or_none(effect.upper)
    out["p"] = finite_or_none(effects[0].p) if effects else None  # the estimates share it
    return {k: v for k, v in out.items() if v is not None}


def run_name(study_id: str, plan_name: str, started: float) -> str:
    """``demo_vaccine · 2026-12-03 14:05 · DEMO-VAX``: plan, local start time and study. The
    plan and time lead because the runs table shows a name's first characters only and every
    run of an experiment has the same study."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    return " · ".join(part for part in (plan_name, stamp, study_id) if part)


def run_note(
    results: Mapping[str, Any], head: Any, loc: Locale, experiment_id: Any, run_id: str
) -> str:
    """The parent run's description (Markdown): the headline estimate first, then the
    study, the data and a link to the report."""
    from experiments.presentation import effect_text

    study = results.get("study") or {}
    lines = []
    if head is not None:
        lines += [f"**{effect_text(e, loc)}**" for e in head.effects]
        lines.append(loc.t("report.primary", analysis=f"`{head.analysis}` {head.shown.heading}"))
    else:
        lines.append(loc.t("report.no_effect"))
    if results.get("synthetic"):
        lines.append(f"**{loc.t('report.synthetic')}**")
    lines.append(
        f"{study.get('title', '')} ({study.get('id', '')}); plan sha256 "
        f"`{results.get('plan_sha256')}`; engine `{results.get('engine')}`."
    )
    page = f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/report.html"
    raw = f"get-artifact?path=report.html&run_uuid={run_id}"
    lines.append(f"Report: [report.html]({page}) ([open the page alone]({raw}))")
    return "\n\n".join(lines)


def history_points(shown: Presentation) -> list[tuple[str, float, int]]:
    """Per-round values ``(key, value, step=round)`` (e.g. Cox log-likelihood, step norm)."""
    points = []
    for m in shown.metrics:
        value = finite_or_none(m.value)
        if m.step is not None and value is not None:
            points.append((metric_name(*m.key), value, m.step))
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
