"""The site's query handler: checks a coordinator request against the bundle and the site
policy, then answers it with aggregates computed by ``analysis/``. Never returns a row.

A request is a dict (see ``federation/protocol.py`` for who builds it)::

    {"round": 1,
     "summary": [{"id", "by"}],
     "event_tables": [{"id", "param", "by": [...]}],
     "cox_local": [{"id", "kind", "param", "model": {...}}],
     "cox_eval": [{"id", "kind", "param", "model": {...}, "beta", "mode", "center", "grids"}]}

The whole request is validated before anything is computed, so a wrong plan or a wrong bundle
makes the site answer with an error and no aggregate at all.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from analysis import cox, km, summary
from analysis.base import format_level
from analysis.data import SurvivalData
from analysis.errors import UserError
from sites.bundle import SiteBundle
from sites.cache import load_cached

# Parsed bundles and endpoint data, per process: a simulation worker serves many virtual sites
# (1,000 sites on 2 workers: 500 each) and answers several rounds, so parsing once per bundle
# matters. Keyed by the files' mtimes and sizes so an edited bundle is reloaded. The least
# recently used bundles (and what was derived from them) are dropped beyond MAX_CACHED_ROWS
# table rows or MAX_CACHED_BUNDLES bundles; the bundle in use is always kept.
# Values keep their bundle alive (and are checked against it), so a recycled id() never
# returns another bundle's rows.
MAX_CACHED_BUNDLES = 4096
MAX_CACHED_ROWS = 20_000_000
_BUNDLES: dict[str, tuple[tuple[tuple[str, float, int], ...], SiteBundle]] = {}
_DATA: dict[tuple[int, str], tuple[SiteBundle, SurvivalData]] = {}
_MODEL_DATA: dict[tuple[int, str, str], tuple[SiteBundle, SurvivalData]] = {}
_DESIGNS: dict[tuple[Any, ...], tuple[SiteBundle, cox.CoxDesign]] = {}


def cached_bundle(path: Path) -> SiteBundle:
    """Load a bundle once per process; reload it when a file in it changed."""
    folder = Path(path).resolve()
    try:
        stamp = tuple(
            sorted(
                (p.name, p.stat().st_mtime, p.stat().st_size)
                for p in folder.iterdir()
                if not p.name.startswith(".")  # e.g. the .trialfed-cache folder
            )
        )
    except OSError:
        stamp = ()
    key = str(folder)
    cached = _BUNDLES.pop(key, None)
    if cached is not None and cached[0] == stamp:
        _BUNDLES[key] = cached  # now the most recently used
        return cached[1]
    if cached is not None:
        _forget(cached[1])
    bundle = load_cached(folder)
    _BUNDLES[key] = (stamp, bundle)
    while len(_BUNDLES) > 1 and (
        len(_BUNDLES) > MAX_CACHED_BUNDLES or _cached_rows() > MAX_CACHED_ROWS
    ):
        _forget(_BUNDLES.pop(next(iter(_BUNDLES)))[1])
    return bundle


def _cached_rows() -> int:
    return sum(len(b.adsl) + len(b.adtte) for _, b in _BUNDLES.values())


def _forget(bundle: SiteBundle) -> None:
    """Drop what was derived from ``bundle`` (endpoint data, model rows, designs)."""
    for derived in (_DATA, _MODEL_DATA, _DESIGNS):
        for key in [k for k, (owner, _) in derived.items() if owner is bundle]:
            del derived[key]


def prefetch(path: Path) -> None:
    """Load, validate and join a bundle into this process's caches ahead of its first query.

    Bad data is not reported here (the query that needs it reports it and is audited).
    """
    with contextlib.suppress(UserError):
        site_info(cached_bundle(path))


def _data(bundle: SiteBundle, param: str) -> SurvivalData:
    key = (id(bundle), param)
    cached = _DATA.get(key)
    if cached is None or cached[0] is not bundle:
        cached = _DATA[key] = (bundle, bundle.survival_data(param))
    return cached[1]


def site_info(bundle: SiteBundle) -> dict[str, Any]:
    """Site identity and size; the counts are those of the site's own check report."""
    params = {}
    for param in bundle.params():
        data = _data(bundle, param)
        params[param] = {"n": data.n, "events": data.n_events}
    return {
        "id": bundle.site_id,
        "name": bundle.name,
        "country": bundle.country,
        "n": int(len(bundle.adsl)),
        "params": params,
        "policy": dict(bundle.policy),
    }


def _allowed_kinds(bundle: SiteBundle) -> set[str] | None:
    allowed = bundle.policy.get("allowed_analyses")
    if allowed is None:
        return None
    return {str(a) for a in allowed}


def validate_request(bundle: SiteBundle, request: dict[str, Any]) -> None:
    """Refuse a request this site cannot or may not answer, naming the reason."""
    allowed = _allowed_kinds(bundle)
    params = set(bundle.params())
    variables = set(bundle.adsl.columns) | {"SITE", "COUNTRY"}
    for section in ("summary", "event_tables", "cox_local", "cox_eval"):
        for query in request.get(section, []):
            kind = query.get("kind", "summary" if section == "summary" else "")
            if allowed is not None and kind not in allowed:
                raise UserError(
                    f"site {bundle.site_id}: policy allowed_analyses {sorted(allowed)} "
                    f"does not allow analyses of kind {kind!r} (analysis {query.get('analysis')!r})"
                )
            param = query.get("param")
            if param is not None and param not in params:
                raise UserError(
                    f"site {bundle.site_id}: endpoint PARAMCD {param!r} (analysis "
                    f"{query.get('analysis')!r}) is not in adtte; available: {sorted(params)}"
                )
            needed = list(query.get("by", [])) if section != "summary" else [query["by"]]
            model = query.get("model")
            if model:
                needed += list(model["covariates"]) + list(model["strata"])
                needed += [v for pair in model.get("interactions", []) for v in pair]
                needed += list(model.get("filter", {}))
            for var in needed:
                if var not in variables:
                    raise UserError(
                        f"site {bundle.site_id}: variable {var!r} (analysis "
                        f"{query.get('analysis')!r}) is not in adsl; available: "
                        f"{', '.join(sorted(variables))}"
                    )


def _site_summary(bundle: SiteBundle, by: str) -> dict[str, Any]:
    """Table 1 sums by ``by``: subjects from ADSL, events per endpoint from ADTTE."""
    subjects = bundle.subjects()
    endpoints = {}
    for param in bundle.params():
        data = _data(bundle, param)
        endpoints[param] = (_labels(data.column(by)), data.event)
    age = np.asarray(subjects["AGE"], dtype=np.float64)
    return summary.summary_aggregate(
        _labels(subjects[by]), age, _labels(subjects["SEX"]), endpoints
    )


def _labels(values: Any) -> Any:
    return np.asarray([format_level(v) for v in values], dtype=object)


def _model_data(bundle: SiteBundle, query: dict[str, Any]) -> SurvivalData:
    filters = query["model"].get("filter", {})
    key = (id(bundle), str(query["param"]), json.dumps(filters, sort_keys=True))
    cached = _MODEL_DATA.get(key)
    if cached is not None and cached[0] is bundle:
        return cached[1]
    data = _data(bundle, query["param"])
    for var, value in filters.items():
        column = data.column(var)
        data = data.subset(np.asarray([format_level(v) == value for v in column], dtype=bool))
    _MODEL_DATA[key] = (bundle, data)
    return data


def _design(bundle: SiteBundle, query: dict[str, Any], spec: cox.CoxSpec) -> cox.CoxDesign:
    """The model's rows prepared once (design built, sorted) and reused in every round."""
    data = _model_data(bundle, query)
    key = (
        id(bundle),
        str(query["param"]),
        json.dumps(query["model"].get("filter", {}), sort_keys=True),
        spec.covariates,
        tuple(sorted(spec.levels.items())),
        spec.interactions,
        spec.strata,
        spec.ties,
    )
    cached = _DESIGNS.get(key)
    if cached is not None and cached[0] is bundle:
        return cached[1]
    design = cox.prepare(data, spec)
    _DESIGNS[key] = (bundle, design)
    return design


def _level_variables(model: dict[str, Any]) -> list[str]:
    names = list(model["covariates"]) + [v for pair in model.get("interactions", []) for v in pair]
    return list(dict.fromkeys(names))


def _spec(model: dict[str, Any], data: SurvivalData) -> cox.CoxSpec:
    levels = model.get("levels")
    if levels is None:  # round 1: this site's own levels, plan reference first (even if absent)
        reference = model.get("reference", {})
        local = cox.local_levels(data, _level_variables(model))
        levels = {
            var: ([reference[var]] if var in reference else [])
            + [lvl for lvl in found if lvl != reference.get(var)]
            for var, found in local.items()
        }
    return cox.CoxSpec(
        covariates=tuple(model["covariates"]),
        levels={k: tuple(v) for k, v in levels.items()},
        interactions=tuple((a, b) for a, b in model.get("interactions", [])),
        strata=tuple(model["strata"]),
        ties=cox.check_ties(model["ties"]),
    )


def answer(bundle: SiteBundle, request: dict[str, Any]) -> dict[str, Any]:
    """Answer one coordinator request with aggregates only."""
    validate_request(bundle, request)
    reply: dict[str, Any] = {"site": site_info(bundle)}
    if request.get("summary"):
        reply["summary"] = {}
        for query in request["summary"]:
            reply["summary"][query["id"]] = _site_summary(bundle, query["by"])
    if request.get("event_tables"):
        reply["event_tables"] = {}
        for query in request["event_tables"]:
            tables = km.grouped_event_tables(_data(bundle, query["param"]), query["by"])
            reply["event_tables"][query["id"]] = [
                {"key": list(key), **asdict(table)} for key, table in sorted(tables.items())
            ]
    if request.get("cox_local"):
        reply["cox_local"] = {}
        for query in request["cox_local"]:
            data = _model_data(bundle, query)
            spec = _spec(query["model"], data)
            fit = cox.local_fit(_design(bundle, query, spec), spec)
            reply["cox_local"][query["id"]] = {
                **asdict(fit),
                "levels": cox.local_levels(data, _level_variables(query["model"])),
            }
    if request.get("cox_eval"):
        reply["cox_eval"] = {}
        for query in request["cox_eval"]:
            data = _model_data(bundle, query)
            spec = _spec(query["model"], data)
            design = _design(bundle, query, spec)
            beta = np.asarray(query["beta"], dtype=np.float64)
            if query["mode"] == "stratified":
                derivs = cox.stratified_derivatives(design, spec, beta)
                reply["cox_eval"][query["id"]] = asdict(derivs)
            else:
                grids = {tuple(g["key"]): np.asarray(g["time"]) for g in query["grids"]}
                center = np.asarray(query["center"], dtype=np.float64)
                moments = cox.risk_set_moments(design, spec, beta, center, grids)
                reply["cox_eval"][query["id"]] = cox.moments_to_payload(moments)
    return reply
