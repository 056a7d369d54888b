"""The round protocol: sends the plan and each round's state to the sites, and turns their
answers into results.

A request is ``{"protocol", "plan", "plan_sha256", "round", "state"}``: the plan text and the
coordinator's state (the countries in the federation and, per Cox model, the levels, the
coefficient vector and, for a shared baseline, the shift and the event-time grid). Each site
derives what to compute from the plan itself (:mod:`analysis.rounds`), so no message carries a
query. Round 1 asks everything that needs no coordinator state; later rounds iterate the Cox
models in lockstep (docs/design.md).

It is independent of Flower: a :class:`Transport` sends one request per node and returns the
replies, so the protocol runs the same in the simulation engine, in a deployment and in a plain
function call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from analysis.errors import UserError
from analysis.kinds import REGISTRY
from analysis.kinds.context import EstimateContext
from analysis.plan import Plan
from analysis.rounds import iterated_models
from analysis.terminology import compare_level_sets
from federation.exchange import Exchange, RunFailed, SiteFailure
from federation.models import CoxRun

PROTOCOL = 2

__all__ = ["Outcome", "RunFailed", "SiteFailure", "Transport", "run_plan"]


class Transport(Protocol):
    """How the protocol reaches the sites."""

    def nodes(self) -> list[int]:
        """The node ids of the connected sites."""
        ...

    def exchange(
        self, requests: Mapping[int, dict[str, Any]], timeout: float
    ) -> dict[int, dict[str, Any] | SiteFailure]:
        """Send one request per node, wait at most ``timeout`` seconds, return every outcome."""
        ...


@dataclass
class Outcome:
    """What a finished protocol run produced."""

    analyses: dict[str, Any]
    sites: list[dict[str, Any]]
    sites_missing: list[dict[str, Any]]
    rounds: int
    seconds: float
    round_seconds: list[float] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    disclosure: list[dict[str, Any]] = field(default_factory=list)
    secure: dict[str, Any] = field(default_factory=dict)  # secure aggregation's grid, rounds
    site_nodes: dict[str, int] = field(default_factory=dict)  # who answered, from which node


Progress = Callable[[str], None]
E = TypeVar("E", bound=Exchange)


def request(plan: Plan, number: int, state: dict[str, Any]) -> dict[str, Any]:
    """The message a site receives in round ``number``."""
    return {
        "protocol": PROTOCOL,
        "plan": plan.text or plan.to_toml(),
        "plan_sha256": plan.sha256,
        "round": number,
        "state": state,
    }


def run_plan(
    plan: Plan,
    transport: Transport,
    progress: Progress | None = None,
    expected_sites: Sequence[str] | None = None,
    node_sites: Mapping[int, str] | None = None,
) -> Outcome:
    """Run every analysis of ``plan`` over the sites behind ``transport``.

    Parameters
    ----------
    plan : Plan
    transport : Transport
    progress : callable, optional
        Receives one line per round.
    expected_sites : sequence of str, optional
        The roster of a deployment: the site ids expected when the plan names none. A site
        that is not expected is never pooled; one that does not answer is missing.
    node_sites : mapping of int to str, optional
        The roster's node id -> site id: a node answering as another site is never pooled.
    """
    if plan.run.secure_aggregation:  # federation.secure_protocol.run_secure runs those
        raise UserError(
            f"plan {plan.study_id} asks for secure aggregation ([run] secure_aggregation = "
            "true), which needs Flower's SecAgg+: run it on the simulation engine or a "
            "deployment, not over a transport that sums in the clear"
        )
    start = time.perf_counter()
    link, replies, sites = open_round(
        Exchange, plan, transport, progress, expected_sites, node_sites
    )
    context = _context(link, replies, sites)
    countries = sorted({link.info[s]["country"] for s in sites})
    runs = [CoxRun(m) for m in iterated_models(plan, countries)]
    for run in runs:
        source = run.definition.start_from or run.id
        run.sites = [
            s
            for s in sites
            if run.definition.wants(link.info[s]["country"])
            and source in replies[s]["answers"]
            and run.definition.analysis not in replies[s]["refused"]
        ]
        run.start({s: replies[s]["answers"][source] for s in run.sites}, context, plan.run)

    while any(r.active and not r.done for r in runs) and link.rounds < plan.run.max_rounds:
        _cox_round(link, plan, countries, [r for r in runs if r.active and not r.done])

    models = {r.id: r.fitted(alpha(plan, r.definition.analysis)) for r in runs}
    context = EstimateContext(context.sites, context.answers, models)
    analyses = {
        spec.name: _estimate(link, spec, context)
        for spec in plan.analyses
        if REGISTRY[spec.kind].engine == "rounds"  # training kinds run after, by strategies
    }
    return finished(link, analyses, start)


def open_round(  # noqa: PLR0913 - run_plan's and run_secure's own arguments
    exchange: type[E],
    plan: Plan,
    transport: Any,
    progress: Progress | None,
    expected_sites: Sequence[str] | None,
    node_sites: Mapping[int, str] | None,
) -> tuple[E, dict[str, dict[str, Any]], list[str]]:
    """The run's ``exchange`` (:class:`Exchange` or a subclass) over the connected nodes, and
    round 1 to every node: the quorum checked, and the sites' level sets against the study's
    (before any analysis: a level outside the study would be a group of its own)."""
    nodes = sorted(transport.nodes())
    if not nodes:
        raise RunFailed("no site is connected")
    expected = list(plan.sites or expected_sites or [])
    say = progress or (lambda _msg: None)
    link = exchange(plan, transport, nodes, say, expected, node_sites)
    replies = link.send({node: request(plan, 1, {}) for node in nodes})
    link.check_quorum()
    sites = link.live_sites()
    problems = compare_level_sets(
        {s: replies[s].get("levels", {}) for s in sites}, plan.study_levels
    )
    if problems:
        raise UserError(
            "the sites' levels disagree with the study's (map them in each site's "
            "terminology.toml):\n  - " + "\n  - ".join(problems)
        )
    return link, replies, sites


def finished(link: Exchange, analyses: dict[str, Any], start: float, **extra: Any) -> Outcome:
    """The outcome of a protocol run: the analyses and who answered, refused or was missing."""
    return Outcome(
        analyses=analyses,
        sites=[{**link.public(s), "contributed": True} for s in link.live_sites()],
        sites_missing=link.missing_sites(),
        rounds=link.rounds,
        seconds=time.perf_counter() - start,
        round_seconds=link.round_seconds,
        refusals=link.refusals(),
        disclosure=link.disclosure(),
        site_nodes={s: link.node_of(s) for s in link.live_sites()},
        **extra,
    )


def alpha(plan: Plan, analysis: str) -> float:
    """The two-sided level of ``analysis``'s confidence intervals (0.05 unless it says)."""
    return float(getattr(plan.analysis(analysis), "alpha", 0.05))


def _context(
    link: Exchange, replies: Mapping[str, dict[str, Any]], sites: list[str]
) -> EstimateContext:
    answers: dict[str, list[tuple[str, Any]]] = {}
    for site in sites:
        for key, payload in replies[site]["answers"].items():
            answers.setdefault(key, []).append((site, payload))
    return EstimateContext(tuple(link.public(s) for s in sites), answers, {})


def _cox_round(link: Exchange, plan: Plan, countries: list[str], runs: list[CoxRun]) -> None:
    number = link.rounds + 1
    requests: dict[int, dict[str, Any]] = {}
    for site in link.live_sites():
        points = {r.id: r.point() for r in runs if site in r.sites}
        if points:
            state = {"countries": countries, "models": points}
            requests[link.node_of(site)] = request(plan, number, state)
    replies = link.send(requests)
    link.check_quorum()
    for run in runs:
        parts, refused = [], []
        for site in run.sites:
            reply = replies.get(site)
            if reply is None:
                continue  # lost: the quorum check decided the run can go on without it
            if run.id in reply["answers"]:
                parts.append(reply["answers"][run.id])
            else:
                why = reply["refused"].get(run.definition.analysis, {})
                refused.append(f"{site} ({why.get('rule')}: {why.get('message')})")
        if refused:
            run.stop(f"round {number}: refused by {'; '.join(refused)}")
        elif parts:
            run.update(parts)


def _estimate(link: Exchange, spec: Any, context: EstimateContext) -> dict[str, Any]:
    """One analysis from the sites that answered it, or marked refused when too few did."""
    kind = REGISTRY[spec.kind]
    refusing = link.refusing(spec.name)
    answering = link.answering(spec.name)
    needed = link.needed()
    notes = link.disclosure(spec.name)
    if refusing and all(r["rule"] == "plan" for r in refusing.values()) and not answering:
        first = next(iter(refusing.values()))
        raise UserError(f"analysis {spec.name!r}: {first['message']}")
    if len(answering) < needed or not answering:
        return {
            "kind": spec.kind,
            "refused": True,
            "message": (
                f"{len(answering)} of {len(link.live_sites())} sites answered and the plan needs "
                f"{needed}"
            ),
            "refusals": [{"site": s, **r} for s, r in refusing.items()],
            "disclosure": notes,
        }
    sub = EstimateContext(
        tuple(i for i in context.sites if i["id"] in answering),
        {q: [(s, p) for s, p in parts if s in answering] for q, parts in context.answers.items()},
        context.models,
    )
    out = kind.estimate(spec, sub)
    if refusing:
        out["refusals"] = [{"site": s, **r} for s, r in refusing.items()]
    if notes:
        out["disclosure"] = notes
    return out
