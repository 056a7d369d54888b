"""Coordinator-side bookkeeping of the Cox models a plan needs.

A ``cox`` analysis is one model. A ``ve`` analysis is the arm model, plus one model per country
(the same model on that country's sites) and an arm-by-country interaction model when the
federation spans more than one country. Every model starts from the inverse-variance
combination of the sites' local fits and then takes federated Newton steps in lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from analysis import cox, km
from analysis.plan import AnalysisSpec, Plan, RunSettings

COUNTRY = "COUNTRY"


@dataclass
class CoxModel:
    """One Cox model iterated over the federation."""

    id: str
    analysis: str
    kind: str
    role: str  # "main", "country" or "interaction"
    param: str
    covariates: tuple[str, ...]
    reference: dict[str, str]
    strata: tuple[str, ...]
    ties: str
    interactions: tuple[tuple[str, str], ...] = ()
    country: str | None = None
    start_from: str = ""  # id of the model whose round-1 local fits give the start value
    active: bool = True
    newton: cox.CoxNewton | None = None
    spec: cox.CoxSpec | None = None
    center: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grids: list[dict[str, Any]] = field(default_factory=list)
    local_fits: dict[str, cox.LocalFit] = field(default_factory=dict)  # site id -> round-1 fit

    @property
    def mode(self) -> str:
        """``stratified`` when each site holds whole strata, else cross-site ``moments``."""
        return "stratified" if "SITE" in self.strata else "moments"

    @property
    def filter(self) -> dict[str, str]:
        return {COUNTRY: self.country} if self.country is not None else {}

    @property
    def done(self) -> bool:
        return self.newton is not None and self.newton.done

    def model_payload(self) -> dict[str, Any]:
        """The model as sites see it (levels only once the coordinator fixed them)."""
        payload: dict[str, Any] = {
            "covariates": list(self.covariates),
            "reference": dict(self.reference),
            "interactions": [list(p) for p in self.interactions],
            "strata": list(self.strata),
            "ties": self.ties,
            "filter": self.filter,
        }
        if self.spec is not None:
            payload["levels"] = {k: list(v) for k, v in self.spec.levels.items()}
        return payload

    @property
    def grid_table_id(self) -> str:
        """Round-1 event table whose event times are this model's risk-set grid."""
        return f"grid:{self.param}:{','.join(self.strata)}"

    def local_query(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "analysis": self.analysis,
            "kind": self.kind,
            "param": self.param,
            "model": self.model_payload(),
        }

    def applies(self, countries: list[str]) -> bool:
        return self.role != "interaction" or len(countries) > 1

    def wants(self, country: str) -> bool:
        return self.country is None or self.country == country

    def country_models(self, countries: list[str]) -> list[CoxModel]:
        """Per-country copies of a ``ve`` arm model (start from this model's local fits)."""
        if self.kind != "ve" or self.role != "main":
            return []
        return [
            replace(self, id=f"{self.id}@{c}", role="country", country=c, start_from=self.id)
            for c in countries
        ]

    def start(
        self, replies: dict[int, dict[str, Any]], info: dict[int, dict[str, Any]], run: RunSettings
    ) -> None:
        """Fix levels and terms, and the start value, from the round-1 replies."""
        source = self.start_from or self.id
        nodes = [n for n in replies if self.wants(info[n]["country"])]  # site-id order
        fits = [replies[n]["cox_local"][source] for n in nodes]
        local_levels = [{k: v for k, v in f["levels"].items()} for f in fits]
        levels = cox.global_levels(local_levels, self.reference)
        self.spec = cox.CoxSpec(
            covariates=self.covariates,
            levels={k: tuple(v) for k, v in levels.items()},
            interactions=self.interactions,
            strata=self.strata,
            ties=cox.check_ties(self.ties),
        )
        terms = cox.term_names(self.spec)
        local = [cox.LocalFit.from_payload(f) for f in fits]
        self.local_fits = {info[n]["id"]: fit for n, fit in zip(nodes, local, strict=True)}
        beta0 = cox.inverse_variance_start(local, terms)
        weights = np.array([f.n for f in local], dtype=np.float64)
        self.center = cox.combined_center(local, terms)
        if not nodes or weights.sum() == 0:
            self.active = False
            return
        self.newton = cox.CoxNewton(
            terms,
            beta0,
            tolerance=run.tolerance,
            max_rounds=run.max_rounds,
            ties=self.ties,
            strata=self.strata,
        )
        if self.mode == "moments":
            tables = merge_tables(replies, nodes, self.grid_table_id)
            self.grids = [
                {"key": list(key), "time": t.time[t.n_event > 0]}
                for key, t in sorted(tables.items())
            ]

    def eval_query(self) -> dict[str, Any]:
        assert self.newton is not None
        query = self.local_query()
        query.update(beta=np.asarray(self.newton.beta, dtype=np.float64), mode=self.mode)
        if self.mode == "moments":
            query.update(center=self.center, grids=self.grids)
        return query

    def update(self, replies: dict[int, dict[str, Any]], nodes: list[int]) -> None:
        """Sum this round's site derivatives and take the Newton step."""
        assert self.newton is not None and self.spec is not None
        parts = [
            replies[n]["cox_eval"][self.id]
            for n in nodes
            if self.id in replies.get(n, {}).get("cox_eval", {})
        ]
        if self.mode == "stratified":
            total = cox.sum_derivatives([cox.CoxDerivatives.from_payload(p) for p in parts])
        else:
            moments = cox.sum_moments([cox.moments_from_payload(p) for p in parts])
            total = cox.derivatives_from_moments(moments, cox.check_ties(self.ties))
        self.newton.update(total)


def merge_tables(
    replies: dict[int, dict[str, Any]], nodes: list[int], table_id: str
) -> dict[tuple[str, ...], km.EventTable]:
    """Event tables of one round-1 request id, merged over ``nodes`` by group key."""
    groups: dict[tuple[str, ...], list[km.EventTable]] = {}
    for node in nodes:
        for row in replies[node]["event_tables"][table_id]:
            key = tuple(row["key"])
            table = km.EventTable(
                time=row["time"], n_event=row["n_event"], n_censored=row["n_censored"]
            )
            groups.setdefault(key, []).append(table)
    return {key: km.merge_event_tables(tables) for key, tables in groups.items()}


def plan_models(plan: Plan) -> list[CoxModel]:
    """The Cox models of every ``cox`` and ``ve`` analysis of a plan."""
    models: list[CoxModel] = []
    for spec in plan.analyses:
        if spec.kind == "cox":
            models.append(_model(spec, spec.name, "main", spec.covariates, spec.interactions))
        elif spec.kind == "ve":
            covariates = (spec.arm, *[c for c in spec.covariates if c != spec.arm])
            models.append(_model(spec, spec.name, "main", covariates, ()))
            if spec.by_country:
                absorbed = {"SITE", COUNTRY} & set(spec.strata)
                main_effects = covariates if absorbed else (*covariates, COUNTRY)
                models.append(
                    _model(
                        spec,
                        f"{spec.name}#interaction",
                        "interaction",
                        main_effects,
                        ((spec.arm, COUNTRY),),
                    )
                )
    return models


def _model(
    spec: AnalysisSpec,
    model_id: str,
    role: str,
    covariates: tuple[str, ...],
    interactions: tuple[tuple[str, str], ...],
) -> CoxModel:
    return CoxModel(
        id=model_id,
        analysis=spec.name,
        kind=spec.kind,
        role=role,
        param=spec.param,
        covariates=tuple(covariates),
        reference=spec.reference_map,
        strata=spec.strata,
        ties=spec.ties,
        interactions=interactions,
    )
