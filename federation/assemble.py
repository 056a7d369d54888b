"""Builds the round-1 request of a plan and turns the summed replies into results objects."""

from __future__ import annotations

from functools import reduce
from typing import Any

import numpy as np

from analysis import km, logrank, summary
from analysis.cox_result import pseudo_inverse
from analysis.distributions import normal_quantile
from analysis.plan import AnalysisSpec, Plan
from federation.models import CoxModel, merge_tables


def round_one_request(plan: Plan, models: list[CoxModel]) -> dict[str, Any]:
    """Everything the plan needs that does not depend on coordinator state, in one message."""
    request: dict[str, Any] = {"round": 1, "summary": [], "event_tables": [], "cox_local": []}
    tables: dict[str, dict[str, Any]] = {}
    for spec in plan.analyses:
        base = {"id": spec.name, "analysis": spec.name, "kind": spec.kind}
        if spec.kind == "summary":
            request["summary"].append({**base, "by": spec.by or "TRT01P"})
        elif spec.kind == "km":
            tables[spec.name] = {**base, "param": spec.param, "by": [spec.by] if spec.by else []}
        elif spec.kind == "logrank":
            tables[spec.name] = {**base, "param": spec.param, "by": [spec.by, *spec.strata]}
    for model in models:
        if model.role == "country":
            continue
        request["cox_local"].append(model.local_query())
        if model.mode == "moments" and model.grid_table_id not in tables:
            tables[model.grid_table_id] = {
                "id": model.grid_table_id,
                "analysis": model.analysis,
                "kind": model.kind,
                "param": model.param,
                "by": list(model.strata),
            }
    request["event_tables"] = list(tables.values())
    return request


def results(
    plan: Plan,
    replies: dict[int, dict[str, Any]],
    models: list[CoxModel],
    info: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    """Every analysis of the plan, from the replies of the sites that contributed."""
    nodes = list(replies)  # the protocol's canonical (site id) order
    by_id = {m.id: m for m in models}
    out: dict[str, Any] = {}
    for spec in plan.analyses:
        if spec.kind == "summary":
            parts = [replies[n]["summary"][spec.name] for n in nodes]
            total = reduce(summary.add_summaries, parts)
            out[spec.name] = {
                "kind": "summary",
                "by": spec.by or "TRT01P",
                **summary.summarise(total).to_dict(),
            }
        elif spec.kind == "km":
            out[spec.name] = _km(spec, merge_tables(replies, nodes, spec.name))
        elif spec.kind == "logrank":
            tables = merge_tables(replies, nodes, spec.name)
            keyed = {(key[0], tuple(key[1:])): table for key, table in tables.items()}
            result = logrank.logrank_test(keyed)
            out[spec.name] = {
                "kind": "logrank",
                "param": spec.param,
                "by": spec.by,
                "strata": list(spec.strata),
                **result.to_dict(),
            }
        elif spec.kind == "cox":
            out[spec.name] = {"kind": "cox", "param": spec.param, **_cox(by_id[spec.name], spec)}
        elif spec.kind == "ve":
            out[spec.name] = _ve(spec, models)
            out[spec.name]["by_site"] = _by_site(spec, models, [info[n] for n in nodes])
    return out


def _km(spec: AnalysisSpec, tables: dict[tuple[str, ...], km.EventTable]) -> dict[str, Any]:
    groups = {}
    for key, table in sorted(tables.items()):
        label = key[0] if key else "all"
        fit = km.kaplan_meier(table, alpha=spec.alpha, times=spec.times or None)
        groups[label] = fit.to_dict()
    return {"kind": "km", "param": spec.param, "by": spec.by, "alpha": spec.alpha, "groups": groups}


def _cox(model: CoxModel, spec: AnalysisSpec) -> dict[str, Any]:
    if model.newton is None:
        return {
            "converged": False,
            "message": "no site contributed data to this model",
            "terms": {},
            "rounds": 0,
        }
    result = model.newton.result(alpha=spec.alpha)
    return {**result.to_dict(), "strata": list(spec.strata), "ties": spec.ties, "alpha": spec.alpha}


def _treatment(spec: AnalysisSpec, main: CoxModel) -> tuple[str, str]:
    """The treated arm level and a note when it cannot be determined."""
    levels = main.spec.levels.get(spec.arm, ()) if main.spec is not None else ()
    treated = list(levels[1:])
    treatment = spec.treatment or (treated[0] if len(treated) == 1 else "")
    if treatment and treatment in treated:
        return treatment, ""
    found = ", ".join(map(repr, treated)) or "none"
    return treatment, (
        f"treatment must be one of the arm's non-reference levels {{{found}}}; got "
        f"{treatment or 'nothing'}: set `treatment` in the plan"
    )


def _main_model(spec: AnalysisSpec, models: list[CoxModel]) -> CoxModel:
    return next(m for m in models if m.analysis == spec.name and m.role == "main")


def _ve(spec: AnalysisSpec, models: list[CoxModel]) -> dict[str, Any]:
    main = _main_model(spec, models)
    cox_dict = _cox(main, spec)
    treatment, note = _treatment(spec, main)
    if note:
        cox_dict["message"] = note
    term = f"{spec.arm}[T.{treatment}]"
    out: dict[str, Any] = {
        "kind": "ve",
        "param": spec.param,
        "arm": spec.arm,
        "reference": spec.reference_map[spec.arm],
        "treatment": treatment,
        **_efficacy(cox_dict, term),
        "cox": cox_dict,
        "by_country": {},
        "interaction_p": None,
    }
    for model in models:
        if model.analysis != spec.name:
            continue
        if model.role == "country" and model.country is not None:
            country = _cox(model, spec)
            out["by_country"][model.country] = {
                **_efficacy(country, term),
                "n": country.get("n"),
                "events": country.get("events"),
                "converged": country.get("converged"),
            }
        elif model.role == "interaction" and model.newton is not None:
            result = model.newton.result(alpha=spec.alpha)
            names = [t for t in result.terms if t.startswith(f"{term}:")]
            if names and result.converged:
                out["interaction_p"] = result.wald_test(names)[2]
            out["interaction"] = {**result.to_dict(), "tested_terms": names}
    return out


def _efficacy(cox_dict: dict[str, Any], term: str) -> dict[str, Any]:
    row = cox_dict.get("terms", {}).get(term)
    if row is None or row.get("hr") is None:
        return {
            "ve": None,
            "lower": None,
            "upper": None,
            "hr": None,
            "hr_lower": None,
            "hr_upper": None,
            "p": None,
        }
    return {
        "ve": 1.0 - row["hr"],
        "lower": None if row["hr_upper"] is None else 1.0 - row["hr_upper"],
        "upper": None if row["hr_lower"] is None else 1.0 - row["hr_lower"],
        "hr": row["hr"],
        "hr_lower": row["hr_lower"],
        "hr_upper": row["hr_upper"],
        "p": row["p"],
    }


def _by_site(
    spec: AnalysisSpec, models: list[CoxModel], sites: list[dict[str, Any]]
) -> dict[str, Any]:
    """Each site's own estimate of the arm effect (its round-1 local fit), for the forest plot.

    Only for sites whose policy allows their estimate to be shown (``publish_site_estimates``,
    default true); a site's own fit is what a single-site analysis would report.
    """
    main = _main_model(spec, models)
    term = f"{spec.arm}[T.{_treatment(spec, main)[0]}]"
    z = normal_quantile(1 - spec.alpha / 2)
    out: dict[str, Any] = {}
    for site in sites:
        if not site.get("policy", {}).get("publish_site_estimates", True):
            continue
        fit = main.local_fits.get(site["id"])
        if fit is None or term not in fit.terms:
            continue
        i = fit.terms.index(term)
        variance = pseudo_inverse(fit.information)[i, i]
        if not variance > 0 or fit.events == 0:
            out[site["id"]] = {
                "hr": None,
                "hr_lower": None,
                "hr_upper": None,
                "n": fit.n,
                "events": fit.events,
                "country": site.get("country"),
            }
            continue
        coef, se = float(fit.beta[i]), float(np.sqrt(variance))
        out[site["id"]] = {
            "hr": float(np.exp(coef)),
            "hr_lower": float(np.exp(coef - z * se)),
            "hr_upper": float(np.exp(coef + z * se)),
            "n": fit.n,
            "events": fit.events,
            "country": site.get("country"),
        }
    return out
