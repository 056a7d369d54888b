"""What a site answers: only what the plan it approved derives, under its own rules.

A coordinator request is ``{"plan": TOML text, "plan_sha256", "round", "state"}``. The site
parses the plan with its own code (:mod:`analysis.plan`), checks its hash against the policy's
``approved_plans``, derives the round's work with :mod:`analysis.rounds` and computes it:

- round 1: every query of :func:`analysis.rounds.round_one_queries` (Table 1 sums, event
  tables, each Cox model's levels and, where published, the site's own fit);
- later rounds: for each Cox model named in ``state["models"]`` that the plan derives for the
  countries in ``state["countries"]``, its derivatives (site-stratified baseline) or risk-set
  moments (shared baseline) at the coefficient vector given, once that vector passes
  :mod:`sites.evaluations`.

Nothing in the message is taken as a query. Each analysis the site may not answer (policy,
disclosure rules, an error) is refused by name with its rule; the reply says what each
disclosure rule changed (:mod:`sites.disclosure`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from analysis import cox
from analysis.errors import UserError
from analysis.kinds import REGISTRY
from analysis.kinds.base import Query
from analysis.kinds.cox_model import CoxModelDef
from analysis.plan import Plan, parse_plan
from analysis.rounds import categorical_variables, iterated_models, round_one_queries
from sites import disclosure, prepared
from sites.bundle import SiteBundle
from sites.evaluations import BetaRefused, EvaluationLog, check_point, describe
from sites.terminology import site_level_sets

PROTOCOL = 2


class Refusal(Exception):
    """The site refuses the whole request; ``rule`` names the policy key or check."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass
class Work:
    """What the site computed for one request (the reply and what the audit log records)."""

    plan: Plan
    round: int
    answers: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[dict[str, str]] = field(default_factory=list)
    asked: list[dict[str, Any]] = field(default_factory=list)
    secure: dict[str, Any] | None = None  # round 1 of a secure plan (sites.secure.round_one_info)

    def refuse(self, analysis: str, rule: str, message: str) -> None:
        """Refuse one analysis (the first reason is kept)."""
        self.refused.setdefault(analysis, {"rule": rule, "message": message})

    def reply(self, bundle: SiteBundle) -> dict[str, Any]:
        """The payload that leaves the site (round 1 also the level sets of the plan's
        categorical variables: level names, not patient data)."""
        info = prepared.site_info(bundle)
        if self.plan.run.secure_aggregation:  # per-site counts are sums' business too
            info["params"] = {
                p: {**v, "n": None, "events": None} for p, v in info["params"].items()
            }
        reply: dict[str, Any] = {
            "site": info,
            "round": self.round,
            "answers": self.answers,
            "refused": self.refused,
            "disclosure": self.notes,
        }
        if self.round == 1:
            secure = self.plan.run.secure_aggregation
            names = disclosure.shareable_variables(bundle, categorical_variables(self.plan), secure)
            found = site_level_sets(bundle, names)
            reply["levels"] = {name: sorted(values) for name, values in found.items()}
        if self.secure is not None:
            reply["secure"] = self.secure
        return reply


def read_plan(
    bundle: SiteBundle, request: Mapping[str, Any], previewing: bool = False
) -> tuple[Plan, int, dict[str, Any]]:
    """Parse and check the request's plan; the round number and state.

    Raises
    ------
    Refusal
        A malformed request, a plan this site's code rejects, a hash that does not match the
        text, a plan the policy does not approve, or a plan that names other sites only.
    """
    if not isinstance(request, Mapping) or request.get("protocol") != PROTOCOL:
        raise Refusal("request", f"not a trialfed request of protocol {PROTOCOL}")
    text, claimed = request.get("plan"), request.get("plan_sha256")
    number, state = request.get("round"), request.get("state", {})
    if not isinstance(text, str) or not isinstance(number, int) or not isinstance(state, dict):
        raise Refusal("request", "the request must carry the plan text, a round and a state")
    try:
        plan = parse_plan(text, source="the coordinator's plan")
    except UserError as exc:
        raise Refusal("plan", str(exc)) from None
    if claimed != plan.sha256:
        raise Refusal(
            "plan",
            f"the plan's content hash is {plan.sha256}; the request claims {claimed!r}",
        )
    if not previewing and not bundle.rules.approves(plan.sha256):
        raise Refusal(
            "approved_plans",
            f"site {bundle.site_id} has not approved plan {plan.sha256} (study "
            f"{plan.study_id}); a site approves it with `trialfed site approve BUNDLE PLAN`",
        )
    if bundle.rules.require_secure_aggregation and not plan.run.secure_aggregation:
        raise Refusal(
            "require_secure_aggregation",
            f"site {bundle.site_id} answers only plans summed under secure aggregation; plan "
            f"{plan.study_id} has [run] secure_aggregation = false (set it to true)",
        )
    if plan.sites and bundle.site_id not in plan.sites:
        raise Refusal(
            "sites",
            f"plan {plan.study_id} names the sites {list(plan.sites)}; {bundle.site_id} is not one",
        )
    if not 1 <= number <= plan.run.max_rounds:
        raise Refusal("max_rounds", f"round {number} is outside 1..{plan.run.max_rounds}")
    return plan, number, state


def gate(bundle: SiteBundle, plan: Plan, analysis: str, work: Work) -> bool:
    """Whether ``analysis`` may be answered; refuses it (naming the rule) otherwise."""
    if analysis in work.refused:
        return False
    spec = plan.analysis(analysis)
    if not bundle.rules.allows(spec.kind):
        allowed = bundle.rules.allowed_analyses or ()
        work.refuse(
            analysis,
            "allowed_analyses",
            f"site {bundle.site_id}: policy allowed_analyses {list(allowed)} does not allow "
            f"analyses of kind {spec.kind!r}",
        )
        return False
    kind = REGISTRY[spec.kind]
    problem = disclosure.variables_problem(
        bundle, spec, kind.grouping(spec), kind.covariates(spec), plan.run.secure_aggregation
    )
    if problem:
        work.refuse(analysis, problem[0], f"site {bundle.site_id}: {problem[1]}")
        return False
    return True


def answer(
    bundle: SiteBundle, request: Mapping[str, Any], state_dir: Any, previewing: bool = False
) -> Work:
    """Compute the answers a request derives (raises Refusal for a whole-request refusal).

    ``previewing`` (``trialfed site approve``, nothing leaves) skips the approval check.
    """
    plan, number, state = read_plan(bundle, request, previewing)
    work = Work(plan, number)
    if plan.run.secure_aggregation and number > 1:
        raise Refusal(
            "secure_aggregation",
            f"round {number} of plan {plan.study_id} is summed under secure aggregation: this "
            "site answers it only inside SecAgg+, never in the clear",
        )
    if number == 1:
        for query in round_one_queries(plan):
            work.asked.append(
                {"query": query.id, "op": query.op, "param": query.param, "by": list(query.by)}
            )
            if gate(bundle, plan, query.analysis, work):
                _guarded(work, query.analysis, lambda q=query: _round_one(bundle, plan, q, work))
        return work
    countries = state.get("countries")
    models = state.get("models")
    if not isinstance(countries, list) or bundle.country not in countries:
        raise Refusal(
            "state", f"the round state must list the countries, {bundle.country} among them"
        )
    if not isinstance(models, dict):
        raise Refusal("state", "the round state must map model ids to their evaluation points")
    derived = {m.id: m for m in iterated_models(plan, countries) if m.wants(bundle.country)}
    unknown = sorted(set(models) - set(derived))
    if unknown:
        raise Refusal(
            "plan",
            f"model(s) {unknown} are not derived from plan {plan.study_id} for a site in "
            f"{bundle.country}; this site evaluates only {sorted(derived)}",
        )
    log = EvaluationLog(state_dir, plan.sha256, prepared.data_version(bundle))
    for model_id, point in models.items():
        model = derived[model_id]
        work.asked.append({"model": model_id, **_describe_point(point)})
        if gate(bundle, plan, model.analysis, work):
            _guarded(
                work,
                model.analysis,
                lambda m=model, p=point: _evaluate(bundle, plan, m, p, work, log),
            )
    log.save()
    return work


def _guarded(work: Work, analysis: str, compute: Any) -> None:
    """Run one computation; any error refuses its analysis instead of escaping the site."""
    try:
        compute()
    except (disclosure.Withheld, Refusal) as exc:
        work.refuse(analysis, exc.rule, str(exc))
    except BetaRefused as exc:
        work.refuse(analysis, "coefficients", f"{exc}")
    except UserError as exc:
        work.refuse(analysis, "data", str(exc))
    except Exception as exc:  # noqa: BLE001 - an error must be a refusal, never an oracle
        work.refuse(analysis, "error", f"{type(exc).__name__}: {exc}")


def _describe_point(point: Any) -> dict[str, Any]:
    if not isinstance(point, Mapping):
        return {"malformed": True}
    out: dict[str, Any] = {}
    if "beta" in point:
        out["beta"] = describe(point["beta"]) if _is_vector(point["beta"]) else "malformed"
    grids = point.get("grids")
    if isinstance(grids, list):
        out["grid_points"] = int(sum(len(g.get("time", [])) for g in grids if isinstance(g, dict)))
    return out


def _is_vector(value: Any) -> bool:
    try:
        return np.asarray(value, dtype=np.float64).ndim == 1
    except (TypeError, ValueError):
        return False


def _round_one(bundle: SiteBundle, plan: Plan, query: Query, work: Work) -> None:
    k = bundle.rules.min_cell_count
    payload: Any
    if plan.run.secure_aggregation and query.op != "cox_local":
        return  # summed in the first secure round (sites.secure)
    if query.op == "summary":
        payload, notes = disclosure.table_one(bundle, query.by[0], k)
    elif query.op == "event_table":
        payload, notes = disclosure.event_tables(bundle, query.param, query.by, k)
    elif query.op == "cox_local":
        model = next(m for m in _plan_models(plan) if m.id == query.model)
        payload, notes = _cox_local(bundle, model, plan.run.secure_aggregation)
    else:  # the query list comes from this site's own code
        raise AssertionError(f"unknown op {query.op!r}")
    work.answers[query.id] = payload
    work.notes += [{"analysis": query.analysis, **note} for note in notes]


def _plan_models(plan: Plan) -> list[CoxModelDef]:
    return [m for spec in plan.analyses for m in REGISTRY[spec.kind].cox_models(spec)]


def _spec(model: CoxModelDef, levels: Mapping[str, Any]) -> cox.CoxSpec:
    return cox.CoxSpec(
        covariates=model.covariates,
        levels={k: tuple(v) for k, v in levels.items()},
        interactions=model.interactions,
        strata=model.strata,
        ties=cox.check_ties(model.ties),
    )


def _own_levels(model: CoxModelDef, found: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """This site's levels, the plan's reference level first (even where the site lacks it)."""
    reference = model.reference_map
    return {
        var: ([reference[var]] if var in reference else [])
        + [lvl for lvl in levels if lvl != reference.get(var)]
        for var, levels in found.items()
    }


def _cox_local(
    bundle: SiteBundle, model: CoxModelDef, secure: bool = False
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Round 1 of a model: its levels here, size and column means, and the site's own fit where
    published. Under secure aggregation only the level names (and a published fit) leave: sizes
    and means are summed in the secure rounds, and small-cell rules apply to the pooled totals."""
    data = prepared.model_data(bundle, model)
    found = cox.local_levels(data, model.level_variables)
    if not secure:
        disclosure.check_model_rows(bundle, model, data, found)
    spec = _spec(model, _own_levels(model, found))
    design = prepared.design(bundle, model, spec, None)
    payload: dict[str, Any] = {"levels": {k: list(v) for k, v in found.items()}}
    if not secure:
        payload.update(
            n=design.n, events=design.events, terms=list(design.terms), x_mean=design.x_mean
        )
    notes = []
    if bundle.rules.publish_site_estimates:
        payload["fit"] = asdict(cox.local_fit(design, spec))
    else:
        notes.append(
            {
                "rule": "publish_site_estimates",
                "change": f"model {model.id}: the site's own fit was not released",
            }
        )
    return payload, notes


def check_beta(
    plan: Plan,
    model: CoxModelDef,
    design: cox.CoxDesign,
    spec: cox.CoxSpec,
    beta: np.ndarray,
    log: EvaluationLog,
) -> None:
    """Raise :class:`BetaRefused` unless the plan's own iteration can reach ``beta``
    (:mod:`sites.evaluations`); a new point is recorded in ``log``."""
    anchors = [np.zeros_like(beta), prepared.own_fit(design, spec).beta]
    scale = np.sqrt(np.einsum("ij,ij->j", design.x, design.x) / max(design.n, 1))
    if check_point(beta, design.terms, scale, anchors, log.points(model.id), plan.run.max_rounds):
        log.add(model.id, beta)


def _evaluate(
    bundle: SiteBundle,
    plan: Plan,
    model: CoxModelDef,
    point: Any,
    work: Work,
    log: EvaluationLog,
) -> None:
    if not isinstance(point, Mapping):
        raise Refusal("state", f"model {model.id}: the evaluation point must be a table")
    data = prepared.model_data(bundle, model)
    found = cox.local_levels(data, model.level_variables)
    disclosure.check_model_rows(bundle, model, data, found)
    spec = _spec(model, disclosure.checked_levels(model, found, point.get("levels")))
    k = bundle.rules.min_cell_count
    released = (
        prepared.ReleasedTimes(model.strata, k) if k > 1 and model.mode == "moments" else None
    )
    design = prepared.design(bundle, model, spec, released)
    beta = np.asarray(point.get("beta"), dtype=np.float64).reshape(-1)
    if beta.shape != (len(design.terms),):
        raise BetaRefused(
            f"model {model.id} has {len(design.terms)} terms; got {beta.size} coefficients"
        )
    if k > 0:
        check_beta(plan, model, design, spec, beta, log)
    if model.mode == "stratified":
        work.answers[model.id] = asdict(cox.stratified_derivatives(design, spec, beta))
        return
    grids = disclosure.checked_grids(design, point.get("grids"))
    center = np.asarray(point.get("center"), dtype=np.float64).reshape(-1)
    if center.shape != beta.shape or not np.all(np.isfinite(center)):
        raise BetaRefused(f"model {model.id}: the center must be {beta.size} finite numbers")
    moments = cox.risk_set_moments(design, spec, beta, center, grids)
    work.answers[model.id] = cox.moments_to_payload(moments)
