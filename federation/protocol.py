"""The round protocol: turns a validated plan into site requests, and site replies into results.

It is independent of Flower: a :class:`Transport` sends one request per site and returns the
replies, so the protocol runs the same in the simulation engine, in a deployment and in a plain
function call. Round 1 asks for everything that needs no coordinator state; later rounds carry
only the Cox models still iterating, all in lockstep (see docs/design.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from analysis.errors import UserError
from analysis.plan import Plan
from federation import assemble
from federation.models import CoxModel, plan_models


class SiteFailure(Exception):
    """A site that did not answer (timeout, dropped connection) or answered with an error."""

    def __init__(self, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused  # the site refused: its data or the plan is wrong


class RunFailed(Exception):
    """The federated run cannot produce a valid result; the message says why and where."""


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


Progress = Callable[[str], None]


class _Exchange:
    """Sends rounds, keeps the set of live sites and enforces ``min_sites``."""

    def __init__(
        self, plan: Plan, transport: Transport, nodes: list[int], progress: Progress
    ) -> None:
        self.plan = plan
        self.transport_nodes = nodes
        self.transport = transport
        self.progress = progress
        self.rounds = 0
        self.round_seconds: list[float] = []
        self.info: dict[int, dict[str, Any]] = {}
        self.missing: dict[int, str] = {}

    def send(self, requests: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        self.rounds += 1
        start = time.perf_counter()
        outcomes = self.transport.exchange(requests, timeout=self.plan.run.round_timeout)
        self.round_seconds.append(time.perf_counter() - start)
        replies: dict[int, dict[str, Any]] = {}
        for node in requests:
            outcome = outcomes.get(node, SiteFailure("no reply"))
            name = self.info.get(node, {}).get("id", f"node {node}")
            if isinstance(outcome, SiteFailure):
                if outcome.refused:
                    raise UserError(f"{outcome.reason} (a site refused round {self.rounds})")
                self.missing[node] = f"round {self.rounds}: {outcome.reason}"
                self.progress(f"round {self.rounds}: site {name} did not answer ({outcome.reason})")
                continue
            replies[node] = outcome
            self.info.setdefault(node, outcome["site"])
        ids = [info["id"] for info in self.info.values()]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise UserError(f"two or more sites report the same site id: {', '.join(twice)}")
        self._check_quorum()
        self.progress(
            f"round {self.rounds}: {len(replies)}/{len(requests)} sites answered in "
            f"{self.round_seconds[-1]:.2f} s"
        )
        return replies

    def _check_quorum(self) -> None:
        live = self.live_nodes()
        needed = self.plan.run.min_sites or len(self.transport_nodes)
        if len(live) < needed:
            lost = "; ".join(
                f"{self.info.get(n, {}).get('id', f'node {n}')} ({why})"
                for n, why in sorted(self.missing.items())
            )
            raise RunFailed(
                f"only {len(live)} of {len(self.transport_nodes)} sites answered and the plan "
                f"needs {needed} (set [run] min_sites to allow fewer); missing: {lost}"
            )

    def live_nodes(self) -> list[int]:
        """Answering nodes in site-id order, so sums run in the same order every run."""
        live = [n for n in self.transport_nodes if n not in self.missing]
        return sorted(live, key=lambda n: (str(self.info.get(n, {}).get("id", "")), n))


def run_plan(plan: Plan, transport: Transport, progress: Progress | None = None) -> Outcome:
    """Run every analysis of ``plan`` over the sites behind ``transport``."""
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    nodes = sorted(transport.nodes())
    if not nodes:
        raise RunFailed("no site is connected")
    link = _Exchange(plan, transport, nodes, say)
    models = plan_models(plan)

    first = assemble.round_one_request(plan, models)
    replies = link.send({node: first for node in nodes})
    replies = {n: replies[n] for n in link.live_nodes()}
    countries = sorted({replies[n]["site"]["country"] for n in replies})
    models = [m for m in models if m.applies(countries)]
    models += [m for base in list(models) for m in base.country_models(countries)]
    for model in models:
        model.start(replies, link.info, plan.run)

    while any(not m.done for m in models if m.active):
        if link.rounds >= plan.run.max_rounds:
            break
        requests = _cox_round(link, [m for m in models if m.active and not m.done])
        cox_replies = link.send(requests)
        for model in models:
            if model.active and not model.done:
                model.update(cox_replies, link.live_nodes())

    live = link.live_nodes()
    final = {n: replies[n] for n in live}
    analyses = assemble.results(plan, final, models, link.info)
    sites = [{**_public(link.info[n]), "contributed": True} for n in live]
    missing = [
        {**_public(link.info.get(n, {"id": f"node {n}"})), "contributed": False, "reason": why}
        for n, why in sorted(link.missing.items())
    ]
    return Outcome(
        analyses=analyses,
        sites=sites,
        sites_missing=missing,
        rounds=link.rounds,
        seconds=time.perf_counter() - start,
        round_seconds=link.round_seconds,
    )


def _cox_round(link: _Exchange, models: list[CoxModel]) -> dict[int, dict[str, Any]]:
    requests: dict[int, dict[str, Any]] = {}
    for node in link.live_nodes():
        country = link.info[node]["country"]
        queries = [m.eval_query() for m in models if m.wants(country)]
        requests[node] = {"round": link.rounds + 1, "cox_eval": queries}
    return requests


def _public(info: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("id", "name", "country", "n", "policy")
    out = {k: info[k] for k in keep if k in info}
    params = info.get("params", {})
    out["events"] = {p: v["events"] for p, v in params.items()}
    return out
