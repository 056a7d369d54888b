"""The round protocol under ``[run] secure_aggregation = true``: the coordinator sees only sums.

Round 1 is the plain round 1 (docs/design.md, "Round protocol"), in the clear, from which the
coordinator learns what the secure rounds need: the sites' level names, endpoint names, the end
of their time axes, Cox models' levels and the fits that sites publish. Every later round is one
secure sum (:meth:`SecureGridTransport.secure_sum`): round 2 sums everything round 1 of a plain
run collects (Table 1, event tables on the common grid, log-rank stratum sums) and evaluates
every Cox model at its start value (the inverse-variance combination of the published fits, as in
a plain run); later rounds evaluate the Cox models still iterating. The layout of each round's
vector is derived by both ends (:mod:`analysis.secure_layout`).

The sites' small-cell rules apply to what the coordinator sees, the pooled totals: Table 1 cells
and groups below k (the largest ``min_cell_count`` among the contributing sites) are suppressed,
and pooled groups of fewer than k subjects are left out of the survival analyses; each change is
a disclosure note of site ``pooled``. A per-country model is iterated only when at least three
sites of that country take part (its sum would otherwise show fewer than three sites).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from analysis.kinds import REGISTRY
from analysis.kinds.context import EstimateContext
from analysis.plan import Plan
from analysis.rounds import iterated_models
from analysis.secure_layout import (
    FIRST_SECURE_ROUND,
    Grid,
    SecureState,
    round_layout,
    secure_queries,
    stratum_sums,
)
from analysis.secure_payloads import (
    pooled_stratum_sums,
    pooled_summary,
    pooled_tables,
)
from federation.exchange import Exchange, RunFailed, SiteFailure, site_outcome
from federation.protocol import Outcome, alpha, finished, open_round, request
from federation.secure import MIN_SITES, SecureSum
from federation.secure_models import SecureCox
from sites.disclosure import suppress_table_one
from sites.secure import grouping_variables

POOLED = "pooled"
"""The site name of the coordinator's own disclosure notes and of the pooled answers."""
Progress = Callable[[str], None]


class SecureExchange(Exchange):
    """:class:`~federation.exchange.Exchange` plus secure rounds (who each sum covers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.covered: list[dict[str, Any]] = []

    def send_secure(self, requests: Mapping[int, dict[str, Any]], digest: str) -> tuple[Any, int]:
        """One secure round: the element sums and the number of sites they cover."""
        self.rounds += 1
        start = time.perf_counter()
        outcome: SecureSum = self.transport.secure_sum(
            requests, timeout=self.plan.run.round_timeout, number=self.rounds
        )
        self.round_seconds.append(time.perf_counter() - start)
        sites = []
        for node in requests:
            clear = outcome.clear.get(node)
            found = site_outcome(clear) if clear is not None else None
            if found is None or isinstance(found, SiteFailure):
                self._failed(node, found or outcome.failures.get(node) or SiteFailure("lost"))
                continue
            site = self._identify(node, found["reply"]["site"])
            if site is None:
                continue
            reply = self._keep(site, found)
            if reply.get("layout") != digest:
                raise RunFailed(
                    f"round {self.rounds}: site {site} laid out its secure vector differently "
                    "(its trialfed version differs from the coordinator's?)"
                )
            sites.append(site)
        stages = ", ".join(outcome.stages)
        self.progress(
            f"round {self.rounds}: secure sum over {len(sites)}/{len(requests)} sites in "
            f"{self.round_seconds[-1]:.2f} s (SecAgg+ stages: {stages})"
        )
        if outcome.sums is None or len(outcome.covered) != len(sites):
            lost = "; ".join(f"{s} ({why})" for s, why in sorted(self.missing.items()))
            raise RunFailed(
                f"round {self.rounds}: the secure sum failed ({outcome.message or 'incomplete'}); "
                f"a secure sum needs at least {MIN_SITES} sites and a majority of those asked; "
                f"missing: {lost or 'none'}"
            )
        self.covered.append({"round": self.rounds, "sites": sorted(sites)})
        self.check_quorum()
        return outcome.sums, len(outcome.covered)


def run_secure(
    plan: Plan,
    transport: Any,
    progress: Progress | None = None,
    expected_sites: Sequence[str] | None = None,
    node_sites: Mapping[int, str] | None = None,
) -> Outcome:
    """Run ``plan`` with secure aggregation over the sites behind ``transport`` (which must have
    ``secure_sum``: :class:`federation.secure.SecureGridTransport`)."""
    start = time.perf_counter()
    link, replies, sites = open_round(
        SecureExchange, plan, transport, progress, expected_sites, node_sites
    )
    if len(sites) < MIN_SITES:
        raise RunFailed(
            f"secure aggregation needs at least {MIN_SITES} sites; {len(sites)} answered"
        )
    countries = sorted({link.info[s]["country"] for s in sites})
    state = _state(plan, replies, sites, countries)
    runs = _start_models(plan, link, replies, state, countries)
    answers = _first_round(link, plan, countries, state, runs)
    while any(r.active and not r.done for r in runs) and link.rounds < plan.run.max_rounds:
        _model_round(link, plan, countries, state, [r for r in runs if r.active and not r.done])
    models = {r.id: r.fitted(alpha(plan, r.definition.analysis)) for r in runs}
    context = EstimateContext(tuple(link.public(s) for s in link.live_sites()), answers, models)
    analyses = {
        spec.name: _estimate(link, spec, context)
        for spec in plan.analyses
        if REGISTRY[spec.kind].engine == "rounds"  # training kinds run after, by strategies
    }
    return finished(
        link,
        analyses,
        start,
        secure={
            "time_grid": {"unit": state.grid.unit, "end": state.grid.end},
            "min_cell_count": _pooled_k(link),
            "rounds": link.covered,
        },
    )


def _state(
    plan: Plan, replies: Mapping[str, Any], sites: list[str], countries: list[str]
) -> SecureState:
    """The secure rounds' state: union level sets, endpoints and the grid's end."""
    by_site = any("SITE" in q.by and not stratum_sums(plan, q) for q in secure_queries(plan))
    levels: dict[str, set[str]] = {"SITE": set(sites)} if by_site else {}
    for name in grouping_variables(plan):  # none reported (every site refuses it): no cells
        levels.setdefault(name, set())
    params: set[str] = set()
    ends = [plan.run.follow_up]
    for site in sites:
        info = replies[site].get("secure") or {}
        for name, values in (info.get("levels") or {}).items():
            levels.setdefault(name, set()).update(values)
        params.update(info.get("params") or [])
        ends.append(float(info.get("end") or 0.0))
    end = plan.run.follow_up or max(ends)
    return SecureState(
        {k: tuple(sorted(v)) for k, v in levels.items()},
        tuple(sorted(params)),
        tuple(countries),
        Grid(plan.run.time_unit, end or plan.run.time_unit),
    )


def _start_models(
    plan: Plan,
    link: Exchange,
    replies: Mapping[str, Any],
    state: SecureState,
    countries: list[str],
) -> list[SecureCox]:
    runs = [SecureCox(m) for m in iterated_models(plan, countries)]
    for run in runs:
        source = run.definition.start_from or run.id
        run.sites = [
            s
            for s in link.live_sites()
            if run.definition.wants(link.info[s]["country"])
            and source in replies[s]["answers"]
            and run.definition.analysis not in replies[s]["refused"]
        ]
        run.start_secure({s: replies[s]["answers"][source] for s in run.sites}, state, plan)
    return runs


def _requests(
    link: Exchange,
    plan: Plan,
    countries: list[str],
    state: SecureState,
    runs: list[SecureCox],
) -> dict[int, dict[str, Any]]:
    models = {r.id: r.point() for r in runs}
    first = link.rounds + 1 == FIRST_SECURE_ROUND
    answering = {q.id: _answering(link, q.analysis) for q in secure_queries(plan)} if first else {}
    requests = {}
    for site in link.live_sites():
        body = {
            "countries": countries,
            "secure": state.to_dict(),
            "models": models,
            "evaluate": [r.id for r in runs if site in r.sites],
            # a round-1 sum is formed only over 3 sites or more (refusals of round 1 known)
            "queries": [q for q, sites in answering.items() if site in sites],
        }
        requests[link.node_of(site)] = request(plan, link.rounds + 1, body)
    return requests


def _answering(link: Exchange, analysis: str) -> list[str]:
    """Live sites that did not refuse ``analysis``, if at least :data:`MIN_SITES` of them."""
    sites = link.answering(analysis)
    return sites if len(sites) >= MIN_SITES else []


def _first_round(
    link: SecureExchange,
    plan: Plan,
    countries: list[str],
    state: SecureState,
    runs: list[SecureCox],
) -> dict[str, list[tuple[str, Any]]]:
    """Round 2: the round-1 sums and every model at its start value; the pooled answers."""
    active = [r for r in runs if r.active]
    layout = round_layout(plan, FIRST_SECURE_ROUND, state, [r.shape for r in active if r.shape])
    if layout.width == 0:
        return {}
    sums, n = link.send_secure(_requests(link, plan, countries, state, active), layout.digest())
    totals = layout.decode(sums, n)
    answers: dict[str, list[tuple[str, Any]]] = {}
    for query in secure_queries(plan):
        if query.op == "summary":
            payload: Any = pooled_summary(query, totals, state)
        elif stratum_sums(plan, query):
            payload = pooled_stratum_sums(query, totals, state)
        else:
            payload = pooled_tables(query, totals, state)
        answers[query.id] = [(POOLED, payload)]
    _update(link, active, totals)
    return answers


def _model_round(
    link: SecureExchange,
    plan: Plan,
    countries: list[str],
    state: SecureState,
    runs: list[SecureCox],
) -> None:
    layout = round_layout(plan, link.rounds + 1, state, [r.shape for r in runs if r.shape])
    sums, n = link.send_secure(_requests(link, plan, countries, state, runs), layout.digest())
    _update(link, runs, layout.decode(sums, n))


def _update(link: Exchange, runs: list[SecureCox], totals: Mapping[str, Any]) -> None:
    """Newton steps from the pooled totals; a model a site refused stops (as in a plain run)."""
    live = set(link.live_sites())
    for run in runs:
        if len(live & set(run.sites)) < MIN_SITES:  # e.g. a country's sites after a dropout
            run.stop(
                f"round {link.rounds}: withheld under secure aggregation: fewer than "
                f"{MIN_SITES} of its sites remain"
            )
            continue
        refused = [
            f"{s} ({why.get('rule')}: {why.get('message')})"
            for s in run.sites
            if (why := link.refused.get(s, {}).get(run.definition.analysis))
        ]
        if refused:
            run.stop(f"round {link.rounds}: refused by {'; '.join(refused)}")
        else:
            run.update_totals(totals)


def _pooled_k(link: Exchange) -> int:
    """The pooled rule's k: the largest ``min_cell_count`` among the live sites."""
    ks = [
        int((link.info[s].get("policy") or {}).get("min_cell_count", 0)) for s in link.live_sites()
    ]
    return max(ks, default=0)


def _estimate(link: SecureExchange, spec: Any, context: EstimateContext) -> dict[str, Any]:
    """One analysis from the pooled answers, the pooled small-cell rule applied."""
    refusing = link.refusing(spec.name)
    answering = link.answering(spec.name)
    if len(answering) < max(link.needed(), MIN_SITES):
        return {
            "kind": spec.kind,
            "refused": True,
            "message": (
                f"{len(answering)} of {len(link.live_sites())} sites answered; the plan needs "
                f"{link.needed()} and a secure sum {MIN_SITES}"
            ),
            "refusals": [{"site": s, **r} for s, r in refusing.items()],
        }
    k = _pooled_k(link)
    answers = dict(context.answers)
    if spec.name in answers:
        answers[spec.name] = [
            (s, _pooled_rule(link, spec.name, p, k)) for s, p in answers[spec.name]
        ]
    kind = REGISTRY[spec.kind]
    out = kind.estimate(spec, EstimateContext(context.sites, answers, context.models))
    computed = link.covered[-1 if kind.cox_models(spec) else 0]["sites"] if link.covered else []
    out["secure_aggregation"] = {"sites": [s for s in computed if s not in refusing]}
    if refusing:
        out["refusals"] = [{"site": s, **r} for s, r in refusing.items()]
    notes = link.disclosure(spec.name)
    if notes:
        out["disclosure"] = notes
    return out


def _pooled_rule(link: Exchange, analysis: str, payload: Any, k: int) -> Any:
    """The site-trust rules on a pooled answer (k = 0: unchanged)."""
    if k <= 1:
        return payload
    if isinstance(payload, dict) and "arms" in payload:
        released, notes = suppress_table_one(payload, k)
        link.notes += [{"site": POOLED, "analysis": analysis, **n} for n in notes]
        return released
    if isinstance(payload, list):  # event tables
        sizes = [int(np.sum(r["n_event"]) + np.sum(r["n_censored"])) for r in payload]
        labels = [", ".join(r["key"]) or "all" for r in payload]
        keep = [i for i, n in enumerate(sizes) if n >= k]
        _small_groups(link, analysis, [labels[i] for i in range(len(payload)) if i not in keep], k)
        return [payload[i] for i in keep]
    if isinstance(payload, dict) and "variance" in payload:  # log-rank stratum sums
        keep = [i for i, n in enumerate(payload["n"]) if n >= k]
        small = [g for i, g in enumerate(payload["groups"]) if i not in keep]
        _small_groups(link, analysis, small, k)
        return {
            "groups": [payload["groups"][i] for i in keep],
            **{key: np.asarray(payload[key])[keep] for key in ("observed", "expected", "n")},
            "variance": np.asarray(payload["variance"])[np.ix_(keep, keep)],
        }
    return payload


def _small_groups(link: Exchange, analysis: str, labels: list[str], k: int) -> None:
    for label in labels:
        link.notes.append(
            {
                "site": POOLED,
                "analysis": analysis,
                "rule": "min_cell_count",
                "change": f"group ({label}): fewer than {k} subjects in the pooled data, left out",
            }
        )
