"""What each round of a plan asks of a site, derived from the plan alone.

The coordinator and every site call the same functions: round 1's queries
(:func:`round_one_queries`) and the Cox models iterated afterwards (:func:`iterated_models`).
A site therefore computes only what the plan it approved derives; the coordinator's message
carries the plan and the round's state (coefficient vectors, levels, grids), never a query.
The estimators of :mod:`analysis.kinds` read the sites' answers through
:class:`EstimateContext`.
"""

from __future__ import annotations

from collections.abc import Sequence

from analysis.errors import UserError
from analysis.kinds import REGISTRY
from analysis.kinds.base import Query
from analysis.kinds.context import EstimateContext, FittedModel
from analysis.kinds.cox_model import CoxModelDef, country_models
from analysis.kinds.train import TrainSpec
from analysis.plan import Plan, parse_plan

__all__ = [
    "EstimateContext",
    "FittedModel",
    "categorical_variables",
    "iterated_models",
    "plan_models",
    "round_one_queries",
    "train_spec_from_plan",
]


def plan_models(plan: Plan) -> list[CoxModelDef]:
    """The Cox models of every analysis, without the per-country copies."""
    return [model for spec in plan.analyses for model in REGISTRY[spec.kind].cox_models(spec)]


def iterated_models(plan: Plan, countries: Sequence[str]) -> list[CoxModelDef]:
    """The models iterated after round 1 over a federation spanning ``countries``."""
    listed = sorted(set(countries))
    models = [m for m in plan_models(plan) if m.applies(listed)]
    return models + [c for m in list(models) for c in country_models(m, listed)]


def round_one_queries(plan: Plan) -> list[Query]:
    """Every query of round 1, in plan order; a table several models share is asked once."""
    queries: dict[str, Query] = {}
    for spec in plan.analyses:
        kind = REGISTRY[spec.kind]
        for query in kind.queries(spec):
            queries.setdefault(query.id, query)
        for model in kind.cox_models(spec):
            local = Query(model.id, model.analysis, "cox_local", model.param, model=model.id)
            queries.setdefault(local.id, local)
            if model.mode == "moments":
                grid = Query(
                    model.grid_table_id, model.analysis, "event_table", model.param, model.strata
                )
                queries.setdefault(grid.id, grid)
    return list(queries.values())


def categorical_variables(plan: Plan) -> list[str]:
    """The variables whose levels the sites compare in round 1 (grouping variables, strata and
    covariates of every analysis; SEX where Table 1 counts it)."""
    names = [n for spec in plan.analyses for n in REGISTRY[spec.kind].level_variables(spec)]
    return list(dict.fromkeys(names))


def train_spec_from_plan(text: str, analysis: str, source: str = "<plan>") -> TrainSpec:
    """The TrainSpec of the ``[[analysis]]`` named ``analysis`` in plan TOML ``text`` (the whole
    plan is validated, as the survival protocol's sites do)."""
    plan = parse_plan(text, source)
    try:
        spec = plan.analysis(analysis)
    except KeyError:
        names = sorted(a.name for a in plan.analyses)
        raise UserError(f"{source}: analysis must be one of {names}; got {analysis!r}") from None
    if not isinstance(spec, TrainSpec):
        raise UserError(f"{source}: analysis {analysis!r} is not of kind 'train'")
    return spec
