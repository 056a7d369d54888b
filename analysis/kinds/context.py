"""What the estimators of :mod:`analysis.kinds` read: the sites' answers and the fitted models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis import km
from analysis.cox_newton import LocalFit
from analysis.cox_result import CoxResult
from analysis.kinds.cox_model import CoxModelDef


@dataclass(frozen=True)
class FittedModel:
    """A Cox model after the iteration, as the estimators see it.

    ``result`` is None when no site contributed; ``local_fits`` holds the sites' own fits that
    their policy allowed them to publish (site id -> fit).
    """

    definition: CoxModelDef
    result: CoxResult | None
    levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    local_fits: Mapping[str, LocalFit] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class EstimateContext:
    """The sites' answers for the estimators.

    Attributes
    ----------
    sites : tuple of mapping
        Contributing sites' public info (``id``, ``country``, ``policy``...), site-id order.
    answers : mapping of str to list of (str, object)
        Round-1 query id -> ``(site id, payload)`` of every site that answered it.
    models : mapping of str to FittedModel
        Cox model id -> the iterated model.
    """

    sites: tuple[Mapping[str, Any], ...]
    answers: Mapping[str, Sequence[tuple[str, Any]]]
    models: Mapping[str, FittedModel]

    def payloads(self, query_id: str) -> list[Any]:
        """The answers to one query, in site order."""
        return [payload for _, payload in self.answers.get(query_id, [])]

    def tables(self, query_id: str) -> dict[tuple[str, ...], km.EventTable]:
        """Event tables of one query merged over the sites by group key."""
        groups: dict[tuple[str, ...], list[km.EventTable]] = {}
        for rows in self.payloads(query_id):
            for row in rows:
                table = km.EventTable(row["time"], row["n_event"], row["n_censored"])
                groups.setdefault(tuple(row["key"]), []).append(table)
        return {key: km.merge_event_tables(parts) for key, parts in sorted(groups.items())}

    def site_ids(self, query_id: str) -> list[str]:
        """The sites that answered one query."""
        return [site for site, _ in self.answers.get(query_id, [])]
