"""The analysis kinds: one module each, registered in :data:`REGISTRY` by importing it.

Adding a kind is adding a module here (and its tests) and importing it below; see
:mod:`analysis.kinds.base` for what a kind declares.
"""

from analysis.kinds import cox, km, logrank, summary, train, ve
from analysis.kinds.base import REGISTRY, AnalysisSpec, Kind, Presentation, Query

KINDS = tuple(REGISTRY)
"""Registered kind names, in registration order."""

__all__ = [
    "KINDS",
    "REGISTRY",
    "AnalysisSpec",
    "Kind",
    "Presentation",
    "Query",
    "cox",
    "km",
    "logrank",
    "summary",
    "train",
    "ve",
]
