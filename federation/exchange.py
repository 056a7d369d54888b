"""One round trip to the sites: who answered, who is missing, who refused what.

Sites are named by their site id everywhere (a node id only where a node never said who it is).
A site the plan (or the coordinator's roster) does not list is never pooled: its answer is set
aside and reported. ``[run] min_sites`` (0 = every expected site) decides whether the run can go
on without a site.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from analysis.errors import UserError
from analysis.plan import Plan

# Whole-request refusals that mean the data, the plan or the app the coordinator shipped is
# wrong: the run stops (exit status 2).
USER_ERROR_RULES = frozenset({"data", "plan", "request", "error", "approved_apps"})


class SiteFailure(Exception):
    """A site that did not answer (timeout, dropped connection) or refused the whole request."""

    def __init__(
        self,
        reason: str,
        refused: bool = False,
        rule: str = "",
        site: str = "",
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused  # the site answered with a refusal
        self.rule = rule
        self.site = site
        self.audit = dict(audit or {})


def site_outcome(payload: Mapping[str, Any]) -> dict[str, Any] | SiteFailure:
    """A decoded site payload (:func:`sites.node.serve`): the payload, or its refusal."""
    if payload.get("ok"):
        return dict(payload)
    return SiteFailure(
        str(payload.get("error")),
        refused=True,
        rule=str(payload.get("rule", "")),
        site=str(payload.get("site", "")),
        audit=payload.get("audit"),
    )


class RunFailed(Exception):
    """The federated run cannot produce a valid result; the message says why and where."""


class Exchange:
    """Sends rounds and keeps track of the sites (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        transport: Any,
        nodes: list[int],
        progress: Callable[[str], None],
        expected: list[str],
        node_sites: Mapping[int, str] | None = None,
    ) -> None:
        self.plan = plan
        self.transport = transport
        self.nodes = nodes
        self.progress = progress
        self.expected = expected
        self.node_sites = dict(node_sites or {})  # the roster: which site each node enrolled as
        self.rounds = 0
        self.round_seconds: list[float] = []
        self.info: dict[str, dict[str, Any]] = {}
        self.site_of: dict[int, str] = {}
        self.missing: dict[str, str] = {}
        self.rejected: dict[str, str] = {}
        self.refused: dict[str, dict[str, dict[str, str]]] = {}
        self.notes: list[dict[str, Any]] = []
        self.audit: dict[str, dict[str, Any]] = {}

    def name(self, node: int) -> str:
        """The site id of a node: as it said, else as the roster enrolled it, else ``node N``."""
        return self.site_of.get(node) or self.node_sites.get(node) or f"node {node}"

    def node_of(self, site: str) -> int:
        """The node serving ``site``."""
        return next(n for n, s in self.site_of.items() if s == site)

    def send(self, requests: Mapping[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """One round; returns the replies of the sites that answered, by site id."""
        self.rounds += 1
        start = time.perf_counter()
        timeout = self.plan.run.round_timeout
        outcomes = self.transport.exchange(requests, timeout=timeout)
        waited = time.perf_counter() - start
        self.round_seconds.append(waited)
        replies: dict[str, dict[str, Any]] = {}
        for node in requests:
            outcome = outcomes.get(node) or SiteFailure(f"no reply within {waited:.0f} s")
            if isinstance(outcome, SiteFailure):
                self._failed(node, outcome)
                continue
            site = self._identify(node, outcome["reply"]["site"])
            if site is None:
                continue
            replies[site] = self._keep(site, outcome)
        self.progress(
            f"round {self.rounds}: {len(replies)}/{len(requests)} sites answered in "
            f"{self.round_seconds[-1]:.2f} s"
        )
        return replies

    def _identify(self, node: int, info: Mapping[str, Any]) -> str | None:
        site = str(info["id"])
        enrolled = self.node_sites.get(node)
        if self.node_sites and enrolled != site:  # a site may not answer as another
            what = (
                f"node {node} enrolled as {enrolled}"
                if enrolled
                else f"node {node} is not enrolled"
            )
            self.rejected.setdefault(
                f"{site} (claimed)", f"{what} but answered as {site}: its answers were not pooled"
            )
            self.progress(f"round {self.rounds}: {what} but answered as {site}; not pooled")
            return None
        if node not in self.site_of:
            if site in self.site_of.values():
                raise UserError(f"two or more sites report the same site id: {site}")
            self.site_of[node] = site
        if self.expected and site not in self.expected:
            if site not in self.rejected:
                self.rejected[site] = (
                    f"not one of the expected sites {self.expected}: its answers were not pooled"
                )
                self.progress(f"round {self.rounds}: site {site} is not expected; not pooled")
            return None
        self.info.setdefault(site, dict(info))
        return site

    def _keep(self, site: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        reply = dict(payload["reply"])
        self.audit[site] = dict(payload.get("audit") or {})
        for analysis, why in reply.get("refused", {}).items():
            self.refused.setdefault(site, {}).setdefault(analysis, dict(why))
        for note in reply.get("disclosure", []):
            self.notes.append({"site": site, **note})
        return reply

    def _failed(self, node: int, failure: SiteFailure) -> None:
        site = failure.site or self.name(node)
        if failure.site and node not in self.site_of and failure.site not in self.site_of.values():
            self.site_of[node] = failure.site
        if failure.audit:
            self.audit[site] = failure.audit
        if failure.refused and failure.rule in USER_ERROR_RULES:
            raise UserError(f"{failure.reason} (site {site} refused round {self.rounds})")
        if self.expected and site not in self.expected and not site.startswith("node "):
            self.rejected.setdefault(site, f"not one of the expected sites {self.expected}")
            return
        what = f"refused ({failure.rule}): {failure.reason}" if failure.refused else failure.reason
        self.missing.setdefault(site, f"round {self.rounds}: {what}")
        self.progress(f"round {self.rounds}: site {site} did not answer ({what})")

    def live_sites(self) -> list[str]:
        """Answering, pooled sites in site-id order (sums run in the same order every run)."""
        return sorted(s for s in self.info if s not in self.missing)

    def disclosure(self, analysis: str | None = None) -> list[dict[str, Any]]:
        """The disclosure notes (of one analysis), by site id: replies arrive in any order."""
        notes = [n for n in self.notes if analysis is None or n["analysis"] == analysis]
        return sorted(notes, key=lambda note: str(note["site"]))  # stable within a site

    def needed(self) -> int:
        """How many sites must answer."""
        return self.plan.run.min_sites or len(self.expected) or len(self.nodes)

    def check_quorum(self) -> None:
        """Fail the run when fewer sites answer than the plan needs; name every missing one."""
        for site in self.expected:
            if site not in self.info and site not in self.missing:
                self.missing[site] = f"round {self.rounds}: did not answer (no node of this site)"
        live = self.live_sites()
        if len(live) < self.needed():
            lost = "; ".join(f"{s} ({why})" for s, why in sorted(self.missing.items()))
            total = len(self.expected) or len(self.nodes)
            raise RunFailed(
                f"only {len(live)} of {total} sites answered and the plan needs {self.needed()} "
                f"(set [run] min_sites to allow fewer); missing: {lost or 'none'}"
            )

    def refusing(self, analysis: str) -> dict[str, dict[str, str]]:
        """Live sites that refused ``analysis``, with the rule and message."""
        return {
            s: self.refused[s][analysis]
            for s in self.live_sites()
            if analysis in self.refused.get(s, {})
        }

    def answering(self, analysis: str) -> list[str]:
        """Live sites that did not refuse ``analysis``, in site-id order."""
        refusing = self.refusing(analysis)
        return [s for s in self.live_sites() if s not in refusing]

    def refusals(self) -> list[dict[str, Any]]:
        """Every refusal, per site and analysis, and the sites not pooled."""
        out: list[dict[str, Any]] = [
            {"site": s, "analysis": a, **why}
            for s in sorted(self.refused)
            for a, why in sorted(self.refused[s].items())
        ]
        out += [
            {"site": s, "analysis": None, "rule": "sites", "message": why}
            for s, why in sorted(self.rejected.items())
        ]
        return out

    def public(self, site: str) -> dict[str, Any]:
        """What results.json says about a site."""
        info = self.info.get(site, {"id": site})
        out: dict[str, Any] = {
            k: info[k]
            for k in ("id", "name", "country", "n", "policy", "synthetic", "version")
            if k in info
        }
        out["events"] = {p: v["events"] for p, v in info.get("params", {}).items()}
        out["params"] = dict(info.get("params", {}))
        if info.get("data_cutoff"):
            out["data_cutoff"] = info["data_cutoff"]
        if site in self.audit:
            out["audit"] = self.audit[site]
        return out

    def missing_sites(self) -> list[dict[str, Any]]:
        """The sites that did not answer, with the reason."""
        return [
            {**self.public(s), "contributed": False, "reason": why}
            for s, why in sorted(self.missing.items())
        ]
