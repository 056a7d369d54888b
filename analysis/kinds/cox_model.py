"""The Cox models a plan iterates, derived from the plan alone (at the coordinator and the site).

A ``cox`` analysis is one model. A ``ve`` analysis is the arm model, plus one model per country
(the same model restricted to that country's sites) and an arm-by-country interaction model when
the federation spans more than one country. The site derives the same list from the plan it
approved and the coordinator's list of countries, and evaluates nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

COUNTRY = "COUNTRY"
SITE = "SITE"


@dataclass(frozen=True)
class CoxModelDef:
    """One Cox model of a plan.

    Attributes
    ----------
    id : str
        Unique in the plan: the analysis name, ``name@COUNTRY`` or ``name#interaction``.
    analysis, kind : str
        The plan analysis it belongs to and that analysis's kind.
    role : {"main", "country", "interaction"}
    param : str
        ADTTE endpoint (PARAMCD).
    covariates, strata : tuple of str
    reference : tuple of (str, str)
        Reference level per categorical variable.
    ties : {"efron", "breslow"}
    interactions : tuple of (str, str)
    country : str or None
        Country whose sites fit this model (``role == "country"``).
    start_from : str
        Model id whose round-1 local fits give the start value ("" = this model's own).
    """

    id: str
    analysis: str
    kind: str
    role: str
    param: str
    covariates: tuple[str, ...]
    reference: tuple[tuple[str, str], ...]
    strata: tuple[str, ...]
    ties: str
    interactions: tuple[tuple[str, str], ...] = ()
    country: str | None = None
    start_from: str = ""

    @property
    def mode(self) -> str:
        """``stratified`` when each site holds whole strata, else cross-site ``moments``."""
        return "stratified" if SITE in self.strata else "moments"

    @property
    def reference_map(self) -> dict[str, str]:
        """The reference levels as a dict."""
        return dict(self.reference)

    @property
    def filter(self) -> dict[str, str]:
        """Rows the model uses at a site: its country's rows for a per-country model."""
        return {COUNTRY: self.country} if self.country is not None else {}

    @property
    def grid_table_id(self) -> str:
        """Round-1 event table whose event times are this model's risk-set grid (moments)."""
        return f"grid:{self.param}:{','.join(self.strata)}"

    @property
    def level_variables(self) -> tuple[str, ...]:
        """Covariates and interaction variables, each once (categorical ones get levels)."""
        names = list(self.covariates) + [v for pair in self.interactions for v in pair]
        return tuple(dict.fromkeys(names))

    def wants(self, country: str) -> bool:
        """Whether a site of ``country`` evaluates this model."""
        return self.country is None or self.country == country

    def applies(self, countries: list[str]) -> bool:
        """Interaction models need two countries or more."""
        return self.role != "interaction" or len(countries) > 1

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description (audit log, results)."""
        return {
            "id": self.id,
            "param": self.param,
            "covariates": list(self.covariates),
            "strata": list(self.strata),
            "interactions": [f"{a}:{b}" for a, b in self.interactions],
            "ties": self.ties,
            "country": self.country,
        }


def arm_models(
    name: str,
    kind: str,
    param: str,
    arm: str,
    covariates: tuple[str, ...],
    reference: tuple[tuple[str, str], ...],
    strata: tuple[str, ...],
    ties: str,
    by_country: bool,
) -> list[CoxModelDef]:
    """The models of a ``ve`` analysis: the arm model and, by country, the interaction model."""
    terms = (arm, *[c for c in covariates if c != arm])
    main = CoxModelDef(name, name, kind, "main", param, terms, reference, strata, ties)
    models = [main]
    if by_country:
        absorbed = {SITE, COUNTRY} & set(strata)
        main_effects = terms if absorbed else (*terms, COUNTRY)
        models.append(
            replace(
                main,
                id=f"{name}#interaction",
                role="interaction",
                covariates=main_effects,
                interactions=((arm, COUNTRY),),
            )
        )
    return models


def country_models(model: CoxModelDef, countries: list[str]) -> list[CoxModelDef]:
    """Per-country copies of a ``ve`` arm model (they start from its local fits)."""
    if model.kind != "ve" or model.role != "main":
        return []
    return [
        replace(model, id=f"{model.id}@{c}", role="country", country=c, start_from=model.id)
        for c in countries
    ]
