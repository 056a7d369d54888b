"""What a site contributes to a secure sum: one vector per protocol round, derived from the plan.

Under ``[run] secure_aggregation = true`` round 1 travels in the clear as in a plain run, with
only what the coordinator needs to lay out the sums (:func:`round_one_info`: level names of the
grouping variables, endpoint names, the site's time-axis end) and the fits the site publishes.
Every later round is answered here, inside SecAgg+ only (:mod:`sites.answers` refuses them in the
clear): :func:`answer_secure` parses and checks the plan as for any request, validates the round
state, derives the vector's layout (:mod:`analysis.secure_layout`) and fills it with the site's
exact aggregates. The coordinator sees only the sum over sites, so no small-cell rule changes
them; the identifier rules still refuse variables (:func:`sites.disclosure.variable_problem`),
the coefficient bounds still apply to Cox points, and an analysis this site refuses contributes
zeros, with the refusal in the clear. A value the fixed-point encoding cannot carry exactly
refuses its analysis (rule ``secure_aggregation``), never wraps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis import cox, km
from analysis.base import factorize_labels
from analysis.data import SurvivalData
from analysis.fixedpoint import Layout, RangeError
from analysis.kinds import REGISTRY
from analysis.kinds.base import Query
from analysis.kinds.cox_model import SITE, CoxModelDef
from analysis.plan import Plan
from analysis.rounds import iterated_models
from analysis.secure_layout import (
    FIRST_SECURE_ROUND,
    ModelShape,
    SecureState,
    StateMismatch,
    grid_end,
    model_shape,
    round_layout,
    secure_queries,
    stratum_sums,
)
from analysis.secure_payloads import (
    site_derivatives,
    site_moments,
    site_stratum_sums,
    site_summary,
    site_tables,
)
from sites import disclosure, prepared
from sites.answers import Refusal, Work, _guarded, _spec, check_beta, gate, read_plan
from sites.bundle import SiteBundle
from sites.evaluations import BetaRefused, EvaluationLog

Values = dict[str, Any]


def grouping_variables(plan: Plan) -> list[str]:
    """Variables whose level sets lay out the secure sums (``SEX`` where Table 1 counts it)."""
    names: list[str] = []
    for spec in plan.analyses:
        kind = REGISTRY[spec.kind]
        if kind.engine == "rounds":
            names += [n for n in kind.level_variables(spec) if n not in kind.covariates(spec)]
    return [n for n in dict.fromkeys(names) if n not in (SITE, "COUNTRY")]


def round_one_info(bundle: SiteBundle, plan: Plan) -> dict[str, Any]:
    """What a secure plan's round 1 tells the coordinator besides a plain round 1: the level
    names of its grouping variables (those its rules let it group by), its endpoint names and,
    without ``[run] follow_up``, its largest time rounded up to 100 time units."""
    subjects = bundle.subjects()
    names = disclosure.shareable_variables(bundle, grouping_variables(plan), secure=True)
    levels = {n: sorted(factorize_labels(np.asarray(subjects[n]))[0]) for n in names}
    info: dict[str, Any] = {"levels": levels, "params": bundle.params()}
    if not plan.run.follow_up:
        ends = [
            float(np.max(prepared.survival_data(bundle, p).time, initial=0.0))
            for p in info["params"]
        ]
        info["end"] = grid_end(max(ends, default=0.0), plan.run.time_unit)
    return info


@dataclass
class SecureWork:
    """One secure round at this site: what it computed, refused and what leaves (the vector)."""

    work: Work
    layout: Layout | None = None
    vector: NDArray[np.float64] | None = None
    values: dict[str, Values] = field(default_factory=dict)  # analysis -> segment values


class GridTimes:
    """Each row's time moved to the secure grid (a :func:`sites.prepared.design` time map)."""

    def __init__(self, state: SecureState) -> None:
        self.grid = state.grid
        self.key = ("secure-grid", state.grid.unit, state.grid.end)

    def times(self, data: SurvivalData) -> NDArray[np.float64]:
        """The rows' grid times."""
        return self.grid.times[self.grid.index(data.time)]


def answer_secure(bundle: SiteBundle, request: Mapping[str, Any], state_dir: Any) -> SecureWork:
    """Compute this site's vector for one secure round (raises Refusal for a whole refusal)."""
    plan, number, state = read_plan(bundle, request)
    if not plan.run.secure_aggregation:
        raise Refusal(
            "secure_aggregation",
            f"plan {plan.study_id} does not ask for secure aggregation; its rounds are answered "
            "as plain requests",
        )
    if number < FIRST_SECURE_ROUND:
        raise Refusal("request", f"round {number} is not a secure round (rounds 2 and later)")
    countries = state.get("countries")
    if not isinstance(countries, list) or bundle.country not in countries:
        raise Refusal(
            "state", f"the round state must list the countries, {bundle.country} among them"
        )
    try:
        secure = SecureState.from_dict(state.get("secure"), plan, countries)
        points, evaluate = _points(plan, countries, state)
        asked = state.get("queries", [])
        if not isinstance(asked, list):
            raise ValueError("queries must list round-1 query ids")
        shapes = [model_shape(model, point["levels"], secure) for model, point in points]
        layout = round_layout(plan, number, secure, shapes)
    except (ValueError, TypeError, KeyError) as exc:
        raise Refusal("state", f"the secure round state is malformed: {exc}") from None
    out = SecureWork(Work(plan, number), layout)
    if number == FIRST_SECURE_ROUND:
        for query in (q for q in secure_queries(plan) if q.id in asked):
            out.work.asked.append({"query": query.id, "op": query.op, "by": list(query.by)})
            _contribute(
                out,
                bundle,
                query.analysis,
                lambda q=query: _query(bundle, plan, q, secure, out.work),
            )
    log = EvaluationLog(state_dir, plan.sha256, prepared.data_version(bundle))
    for shape, (model, point) in zip(shapes, points, strict=True):
        if model.id in evaluate and model.wants(bundle.country):
            out.work.asked.append({"model": model.id, "secure": True})
            _contribute(
                out,
                bundle,
                model.analysis,
                lambda s=shape, p=point: _evaluate(bundle, plan, s, p, secure, log),
            )
    log.save()
    merged: Values = {}
    for analysis, values in out.values.items():
        if analysis not in out.work.refused:
            merged.update(values)
    out.vector = layout.encode(merged)
    return out


def _points(
    plan: Plan, countries: Sequence[str], state: Mapping[str, Any]
) -> tuple[list[tuple[CoxModelDef, Mapping[str, Any]]], set[str]]:
    """The round's model points in plan order, and the ids this site is asked to evaluate."""
    models, evaluate = state.get("models", {}), state.get("evaluate", [])
    if not isinstance(models, Mapping) or not isinstance(evaluate, list):
        raise ValueError("models must map model ids to points and evaluate must list ids")
    derived = {m.id: m for m in iterated_models(plan, countries)}
    unknown = sorted(set(models) - set(derived))
    if unknown:
        raise ValueError(f"model(s) {unknown} are not derived from plan {plan.study_id}")
    points = [(m, models[i]) for i, m in derived.items() if i in models]
    for model, point in points:
        if not isinstance(point, Mapping) or not isinstance(point.get("levels"), Mapping):
            raise ValueError(f"model {model.id}: the point must be a table with levels")
    return points, set(map(str, evaluate)) & set(models)


def _contribute(out: SecureWork, bundle: SiteBundle, analysis: str, compute: Any) -> None:
    """Compute one query or model of ``analysis`` (refused by name on any error; a value out of
    the fixed-point range refuses it too)."""
    work = out.work
    if not gate(bundle, work.plan, analysis, work):
        return

    def checked() -> None:
        assert out.layout is not None
        try:
            values = compute()
            out.layout.encode(values)
        except RangeError as exc:
            raise Refusal("secure_aggregation", f"site {bundle.site_id}: {exc}") from None
        except StateMismatch as exc:  # the round's levels or grid do not cover this site
            raise Refusal("state", f"site {bundle.site_id}: {exc}") from None
        out.values.setdefault(analysis, {}).update(values)

    _guarded(work, analysis, checked)


def _query(bundle: SiteBundle, plan: Plan, query: Query, state: SecureState, work: Work) -> Values:
    if query.op == "summary":
        aggregate, _ = disclosure.table_one(bundle, query.by[0], 0)
        return site_summary(query, aggregate, state)
    if (
        SITE in query.by
        and not stratum_sums(plan, query)
        and not bundle.rules.publish_site_estimates
    ):
        raise Refusal(
            "publish_site_estimates",
            f"site {bundle.site_id}: grouping by SITE would show this site's own table "
            "(publish_site_estimates = false)",
        )
    data = prepared.survival_data(bundle, query.param)
    if not state.grid.on_grid(data.time):
        work.notes.append(
            {
                "analysis": query.analysis,
                "rule": "time_unit",
                "change": f"times moved up to the secure grid (step {state.grid.unit:g})",
            }
        )
    tables = km.grouped_event_tables(data, query.by)
    if stratum_sums(plan, query):
        return site_stratum_sums(query, tables, state)
    return site_tables(query, tables, state)


def _evaluate(
    bundle: SiteBundle,
    plan: Plan,
    shape: ModelShape,
    point: Mapping[str, Any],
    state: SecureState,
    log: EvaluationLog,
) -> Values:
    """A Cox model's derivatives (site-stratified) or moments on the full grid (shared)."""
    model = shape.definition
    data = prepared.model_data(bundle, model)
    found = cox.local_levels(data, model.level_variables)
    disclosure.checked_levels(model, found, point.get("levels"))
    spec = _spec(model, point["levels"])
    timemap = GridTimes(state) if model.mode == "moments" else None
    design = prepared.design(bundle, model, spec, timemap)
    if design.terms != shape.terms:
        raise Refusal("state", f"model {model.id}: its terms here differ from the round's")
    beta = np.asarray(point.get("beta"), dtype=np.float64).reshape(-1)
    if beta.shape != (len(design.terms),) or not np.all(np.isfinite(beta)):
        raise BetaRefused(
            f"model {model.id} has {len(design.terms)} terms; got {beta.size} coefficients"
        )
    if bundle.rules.min_cell_count > 0:
        check_beta(plan, model, design, spec, beta, log)
    if model.mode == "stratified":
        return site_derivatives(shape, cox.stratified_derivatives(design, spec, beta))
    missing = sorted(set(design.keys) - set(shape.keys))
    if missing:
        raise Refusal("state", f"model {model.id}: the round's strata omit this site's {missing}")
    center = np.asarray(point.get("center"), dtype=np.float64).reshape(-1)
    if center.shape != beta.shape or not np.all(np.isfinite(center)):
        raise BetaRefused(f"model {model.id}: the center must be {beta.size} finite numbers")
    grids = {key: state.grid.times for key in shape.keys}
    moments = cox.risk_set_moments(design, spec, beta, center, grids)
    return site_moments(shape, moments, design.n * design.x_mean)
