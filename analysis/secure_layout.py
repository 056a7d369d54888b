"""What a secure round sums, derived from the plan and the round state at both ends.

Under ``[run] secure_aggregation = true`` every summable aggregate of a protocol round travels in
one vector (:class:`analysis.fixedpoint.Layout`) that SecAgg+ sums over the sites. A site and the
coordinator derive its layout with :func:`round_layout` from the plan, the round number and the
round's :class:`SecureState` (level sets, endpoints, countries, time grid) and model points: no
message names a segment. Round 2 sums what round 1 asks in a plain run (Table 1 cells, event and
censoring counts per group and grid time, log-rank stratum sums where ``SITE`` is a stratum) and
evaluates every Cox model at its start value; later rounds evaluate the Cox models only.

The time axis is the common grid ``0, u, 2u, ..., end`` (:class:`Grid`; ``u`` the plan's
``time_unit``, ``end`` its ``follow_up`` or the sites' largest time rounded up to 100 units), not
any site's event times, so the sites' vectors line up and no single site decides the axis. A
time maps to the first grid point at or after it: with times that are whole multiples of the
unit (ADaM days) the tables and the Cox moments are exactly the pooled ones.

:mod:`analysis.secure_payloads` fills the segments at a site and reads the totals back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis import cox
from analysis.fixedpoint import Layout
from analysis.kinds.base import Query
from analysis.kinds.cox_model import COUNTRY, SITE, CoxModelDef
from analysis.plan import Plan
from analysis.rounds import plan_models, round_one_queries

MAX_GRID = 100_000
"""Grid points at most (a site refuses a longer axis)."""
MAX_ELEMENTS = 5_000_000
"""Vector elements at most in one secure round (a site refuses a larger layout)."""
END_STEP = 100
"""Without ``follow_up``, a site reports its largest time rounded up to this many units."""
FIRST_SECURE_ROUND = 2

FloatArray = NDArray[np.float64]


class StateMismatch(ValueError):
    """The round's state does not cover a site's data (a level, a group, a time)."""


@dataclass(frozen=True)
class Grid:
    """The common time axis ``unit * (0, 1, ..., size - 1)``."""

    unit: float
    end: float

    @property
    def size(self) -> int:
        """Number of grid points."""
        return int(math.floor(self.end / self.unit + 1e-9)) + 1

    @property
    def times(self) -> FloatArray:
        """The grid times."""
        return self.unit * np.arange(self.size, dtype=np.float64)

    def index(self, times: NDArray[Any]) -> NDArray[np.intp]:
        """Grid index of each time: the first grid point at or after it.

        Raises
        ------
        ValueError
            For a negative time or one after the grid's end.
        """
        t = np.asarray(times, dtype=np.float64)
        idx = np.ceil(t / self.unit - 1e-9).astype(np.intp)
        bad = (t < 0) | (idx >= self.size) | ~np.isfinite(t)
        if bad.any():
            first = float(t[np.argmax(bad)])
            raise StateMismatch(
                f"time {first!r} is outside the secure time grid 0..{self.end:g} (step "
                f"{self.unit:g}; set [run] follow_up to cover the data)"
            )
        return idx

    def on_grid(self, times: NDArray[Any]) -> bool:
        """Whether every time is a grid point (then the grid changes nothing)."""
        t = np.asarray(times, dtype=np.float64)
        return bool(np.all(np.abs(t - self.times[self.index(t)]) <= 1e-9 * self.unit))


def grid_end(times_max: float, unit: float) -> float:
    """A site's report of its axis: its largest time rounded up to :data:`END_STEP` units."""
    steps = math.ceil(max(times_max, 0.0) / (unit * END_STEP) - 1e-9)
    return float(max(steps, 1) * END_STEP * unit)


@dataclass(frozen=True)
class SecureState:
    """The round state every secure round carries (the same for every site)."""

    levels: Mapping[str, tuple[str, ...]]
    params: tuple[str, ...]
    countries: tuple[str, ...]
    grid: Grid

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the request's ``state["secure"]``)."""
        return {
            "levels": {k: list(v) for k, v in sorted(self.levels.items())},
            "params": list(self.params),
            "end": self.grid.end,
        }

    @classmethod
    def from_dict(cls, raw: Any, plan: Plan, countries: Sequence[str]) -> SecureState:
        """Validate a request's ``state["secure"]`` (ValueError naming what is wrong)."""
        if not isinstance(raw, Mapping):
            raise ValueError("the round state has no secure-aggregation table")
        levels, params, end = raw.get("levels"), raw.get("params"), raw.get("end")
        if not isinstance(levels, Mapping) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) and len(set(v)) == len(v)
            for v in levels.values()
        ):
            raise ValueError("secure state: levels must map variables to distinct level names")
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            raise ValueError("secure state: params must be a list of endpoint names")
        if plan.run.follow_up:
            end = plan.run.follow_up
        if not isinstance(end, int | float) or isinstance(end, bool) or not 0 < end < 1e12:
            raise ValueError(f"secure state: the grid end must be a positive number; got {end!r}")
        grid = Grid(plan.run.time_unit, float(end))
        if grid.size > MAX_GRID:
            raise ValueError(f"secure state: {grid.size} grid points; at most {MAX_GRID}")
        return cls(
            {str(k): tuple(sorted(v)) for k, v in levels.items()},
            tuple(sorted(set(params))),
            tuple(sorted(set(countries))),
            grid,
        )

    def levels_of(self, variable: str) -> tuple[str, ...]:
        """The union level set of a grouping variable (``COUNTRY``: the countries)."""
        if variable == COUNTRY:
            return self.countries
        if variable not in self.levels:
            raise StateMismatch(f"secure state: no level set for {variable!r}")
        return self.levels[variable]

    def keys(self, by: Sequence[str]) -> list[tuple[str, ...]]:
        """Every group key of ``by`` (the product of the level sets, sorted)."""
        return list(itertools.product(*(self.levels_of(v) for v in by)))


@dataclass(frozen=True)
class ModelShape:
    """What a Cox model's segments hold: its terms and, for a shared baseline, stratum keys."""

    definition: CoxModelDef
    spec: cox.CoxSpec
    terms: tuple[str, ...]
    keys: tuple[tuple[str, ...], ...]


def model_shape(
    definition: CoxModelDef, levels: Mapping[str, Sequence[str]], state: SecureState
) -> ModelShape:
    """The shape of a model evaluated with the coordinator's ``levels``."""
    spec = cox.CoxSpec(
        covariates=definition.covariates,
        levels={k: tuple(v) for k, v in levels.items()},
        interactions=definition.interactions,
        strata=definition.strata,
        ties=cox.check_ties(definition.ties),
    )
    keys = tuple(state.keys(definition.strata)) if definition.mode == "moments" else ()
    return ModelShape(definition, spec, cox.term_names(spec), keys)


def _tri(p: int) -> int:
    return p * (p + 1) // 2


def pack(matrix: NDArray[Any]) -> FloatArray:
    """Upper triangles of symmetric ``(..., p, p)`` matrices, flattened."""
    m = np.asarray(matrix, dtype=np.float64)
    p = m.shape[-1]
    rows, cols = np.triu_indices(p)
    return m[..., rows, cols].ravel()


def unpack(values: NDArray[Any], p: int) -> FloatArray:
    """Inverse of :func:`pack`: ``(..., p, p)`` symmetric matrices."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1, _tri(p))
    out = np.zeros((flat.shape[0], p, p))
    rows, cols = np.triu_indices(p)
    out[:, rows, cols] = flat
    out[:, cols, rows] = flat
    return out


def grid_queries(plan: Plan) -> set[str]:
    """Round-1 event tables that only give a shared-baseline Cox model its plain-run grid (the
    secure run evaluates on the common grid instead)."""
    return {m.grid_table_id for m in plan_models(plan) if m.mode == "moments"}


def stratum_sums(plan: Plan, query: Query) -> bool:
    """Whether an event-table query is summed as log-rank stratum sums: ``SITE`` among the
    strata of a log-rank test (a table per site would show each site's table)."""
    return plan.analysis(query.analysis).kind == "logrank" and SITE in query.by[1:]


def secure_queries(plan: Plan) -> list[Query]:
    """The round-1 queries summed in the first secure round (Cox local queries excluded)."""
    skip = grid_queries(plan)
    return [q for q in round_one_queries(plan) if q.op != "cox_local" and q.id not in skip]


def round_layout(
    plan: Plan, number: int, state: SecureState, models: Sequence[ModelShape]
) -> Layout:
    """The vector of secure round ``number``: the round-1 sums (round 2 only), then each model."""
    layout = Layout()
    if number == FIRST_SECURE_ROUND:
        for query in secure_queries(plan):
            _query_segments(layout, plan, query, state)
    for shape in models:
        _model_segments(layout, shape, state.grid.size)
    if layout.width > MAX_ELEMENTS:
        raise ValueError(f"the secure round holds {layout.width} numbers; at most {MAX_ELEMENTS}")
    return layout


def _query_segments(layout: Layout, plan: Plan, query: Query, state: SecureState) -> None:
    q = query.id
    if query.op == "summary":
        arms, sexes = len(state.levels_of(query.by[0])), len(state.levels.get("SEX", ()))
        params = len(state.params)
        for name, kind, size in (
            ("n", "total", arms),
            ("age_n", "total", arms),
            ("age", "real", 2 * arms),
            ("sex", "total", arms * sexes),
            ("events", "total", arms * params),
            ("censored", "total", arms * params),
        ):
            layout.add(f"{q}/{name}", kind, size)
    elif stratum_sums(plan, query):
        k = len(state.levels_of(query.by[0]))
        layout.add(f"{q}/n", "total", k)
        layout.add(f"{q}/observed", "total", k)
        layout.add(f"{q}/expected", "real", k)
        layout.add(f"{q}/variance", "real", k * k)
    else:
        cells = len(state.keys(query.by)) * state.grid.size
        layout.add(f"{q}/events", "count", cells)
        layout.add(f"{q}/censored", "count", cells)


def _model_segments(layout: Layout, shape: ModelShape, grid_size: int) -> None:
    m, p = shape.definition.id, len(shape.terms)
    if shape.definition.mode == "stratified":
        for name, kind, size in (
            ("loglik", "real", 1),
            ("gradient", "real", p),
            ("information", "real", _tri(p)),
            ("gross", "real", p),
            ("n", "total", 1),
            ("events", "total", 1),
        ):
            layout.add(f"{m}/{name}", kind, size)
        return
    t = len(shape.keys) * grid_size
    for name, kind, size in (
        ("r0", "real", t),
        ("r1", "real", t * p),
        ("r2", "real", t * _tri(p)),
        ("d", "count", t),
        ("dx", "real", t * p),
        ("e0", "real", t),
        ("e1", "real", t * p),
        ("e2", "real", t * _tri(p)),
        ("eta", "real", 1),
        ("n", "total", 1),
        ("events", "total", 1),
        ("xsum", "real", p),
    ):
        layout.add(f"{m}/{name}", kind, size)
