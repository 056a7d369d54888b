"""The site's disclosure rules, applied to every answer before it leaves (k = min_cell_count).

With k = 0 the rules are off and every answer is exact. With k >= 2:

- **variables**: a grouping variable, stratum or covariate whose levels at this site are mostly
  unique or mostly hold fewer than k subjects (an identifier, a date, free text) is refused, as
  is a numeric identifier or date variable (ADaM names ending in ID, DT, DTM, TM);
- **groups**: every group and stratum a site reports holds at least k of its subjects (smaller
  groups are left out, and the reply says so);
- **counts**: every released count is 0 or at least k: Table 1 cells below k are suppressed
  (with complementary suppression, :func:`analysis.disclosure.suppress_cells`); event tables are
  released on a coarser time grid (:func:`analysis.disclosure.coarsen_table`), and Cox moments
  are computed on the same coarsened times, so a coordinator-chosen grid learns nothing finer;
- **sums**: a Cox model is evaluated only over at least k subjects, every level of a categorical
  covariate and every stratum held by at least k of them, at coefficient vectors the plan's own
  iteration can reach (:mod:`sites.evaluations`). Its event count may be below k: the site's
  event table (a remainder at its last release) tells that count anyway.

Each change is reported as a note ``{"rule", "change"}`` that the coordinator copies into
results.json.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from analysis import km
from analysis.base import factorize_labels, format_level
from analysis.cox_design import CoxDesign, StratumKey
from analysis.data import SurvivalData, is_numeric
from analysis.disclosure import coarsen_table, suppress_cells, too_fine
from analysis.kinds.base import AnalysisSpec
from analysis.kinds.cox_model import COUNTRY, SITE, CoxModelDef
from analysis.summary import summary_aggregate
from sites import prepared
from sites.bundle import SiteBundle

Note = dict[str, str]
SITE_VARIABLES = (SITE, COUNTRY)
IDENTIFIER_NAME = re.compile(r"(ID|DT|DTM|TM|DTC)$")


class Withheld(Exception):
    """An answer the rules do not let leave; ``rule`` names the rule."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def variables_problem(
    bundle: SiteBundle,
    spec: AnalysisSpec,
    grouping: Sequence[str],
    covariates: Sequence[str],
    secure: bool = False,
) -> tuple[str, str] | None:
    """``(rule, message)`` when the analysis names something this site cannot or may not use
    (``secure``: under secure aggregation, see :func:`variable_problem`)."""
    param = getattr(spec, "param", "")
    if param and param not in bundle.params():
        return "plan", f"endpoint PARAMCD {param!r} is not in adtte; available: {bundle.params()}"
    subjects = bundle.subjects()
    for name in dict.fromkeys([*grouping, *covariates]):
        if name not in subjects:
            available = ", ".join(sorted(subjects))
            return "plan", f"variable {name!r} is not in adsl; available: {available}"
        problem = variable_problem(bundle, name, name in grouping, secure)
        if problem:
            return "identifier", problem
    return None


def variable_problem(bundle: SiteBundle, name: str, grouping: bool, secure: bool = False) -> str:
    """Why this site may not use variable ``name`` ("" when it may; always "" with k = 0).

    ``grouping``: the variable splits rows into groups or strata (else it is a covariate, which
    enters a model as a number when numeric). ``secure``: under secure aggregation the small-cell
    rules move to the pooled totals, so a variable is refused only as an identifier: by its ADaM
    name (text identifiers such as USUBJID too, whose level names would otherwise leave in
    round 1), or with more than k levels at the site most of whose subjects are alone in theirs.
    """
    k = bundle.rules.min_cell_count
    if k == 0 or name in SITE_VARIABLES:
        return ""
    values = bundle.subjects()[name]
    numeric = is_numeric(values)
    if (numeric or secure) and IDENTIFIER_NAME.search(name):
        return (
            f"variable {name!r} is an identifier or a date (ADaM name ending in ID, DT, DTM or "
            "TM) and may not group, stratify or enter a model"
        )
    if numeric and not grouping:
        return ""  # a numeric covariate enters a model as a number, never as groups
    labels, codes = factorize_labels(np.asarray(values))
    counts = np.bincount(codes, minlength=len(labels))
    # secure: only "mostly alone in their level", judged where the site has more than k levels
    judged = not secure or len(labels) > k
    reason = too_fine(counts, 1 if secure else k) if judged else ""
    if reason:
        return (
            f"variable {name!r} is too fine at this site to group, stratify or enter a model as "
            f"categories: {reason} (min_cell_count = {k})"
        )
    return ""


def shareable_variables(
    bundle: SiteBundle, names: Sequence[str], secure: bool = False
) -> list[str]:
    """The variables whose level names this site may report (present and not too fine)."""
    subjects = bundle.subjects()
    return [n for n in names if n in subjects and not variable_problem(bundle, n, True, secure)]


def _labels(values: Any) -> Any:
    return np.asarray([format_level(v) for v in values], dtype=object)


def table_one(bundle: SiteBundle, by: str, k: int) -> tuple[dict[str, Any], list[Note]]:
    """Table 1 sums by ``by``, small groups left out and small cells suppressed."""
    subjects = bundle.subjects()
    endpoints = {}
    for param in bundle.params():
        data = prepared.survival_data(bundle, param)
        endpoints[param] = (_labels(data.column(by)), data.event)
    age = np.asarray(subjects["AGE"], dtype=np.float64)
    aggregate = summary_aggregate(_labels(subjects[by]), age, _labels(subjects["SEX"]), endpoints)
    return suppress_table_one(aggregate, k)


def suppress_table_one(aggregate: dict[str, Any], k: int) -> tuple[dict[str, Any], list[Note]]:
    """A Table 1 aggregate with groups below k left out and small cells suppressed (in place);
    the site's rule, and the coordinator's on pooled totals under secure aggregation."""
    if k <= 1:
        return aggregate, []
    notes: list[Note] = []
    hidden_cells: list[list[str]] = []
    arms = aggregate["arms"]
    for arm in sorted(arms):
        item = arms[arm]
        if item["n"] < k:
            del arms[arm]
            hidden_cells.append([arm, "group", ""])
            notes.append(_note(f"group {arm!r}: fewer than {k} subjects, left out of Table 1"))
            continue
        if 0 < item["age_n"] < k:
            item.update(age_n=0, age_sum=0.0, age_sumsq=0.0)
            hidden_cells.append([arm, "age", ""])
            notes.append(_note(f"group {arm!r}: age known for fewer than {k}, not released"))
        item["sex"], hidden = suppress_cells(item["sex"], k)
        hidden_cells += [[arm, "sex", level] for level in hidden]
        if hidden:
            notes.append(_note(f"group {arm!r}: sex count(s) {hidden} suppressed"))
        for param in sorted(set(item["events"]) | set(item["censored"])):
            cells = {cell: item[cell].get(param, 0) for cell in ("events", "censored")}
            _, hidden = suppress_cells(cells, k)
            for cell in hidden:
                item[cell].pop(param, None)
                hidden_cells.append([arm, cell, param])
            if hidden:
                notes.append(_note(f"group {arm!r}: {param} {' and '.join(hidden)} suppressed"))
    aggregate["suppressed"] = hidden_cells
    return aggregate, notes


def _note(change: str, rule: str = "min_cell_count") -> Note:
    return {"rule": rule, "change": change}


def event_tables(
    bundle: SiteBundle, param: str, by: Sequence[str], k: int
) -> tuple[list[dict[str, Any]], list[Note]]:
    """Event tables of ``param`` by ``by``, small groups left out, times coarsened."""
    data = prepared.survival_data(bundle, param)
    rows: list[dict[str, Any]] = []
    notes: list[Note] = []
    for key, table in sorted(km.grouped_event_tables(data, by).items()):
        released, changes = release_table(table, k, ", ".join(key) or "all")
        notes += changes
        if released is not None:
            rows.append({"key": list(key), **asdict(released)})
    return rows, notes


def release_table(
    table: km.EventTable, k: int, label: str
) -> tuple[km.EventTable | None, list[Note]]:
    """One group's event table as the rules release it (``None``: left out or withheld), and a
    note of what they changed."""
    if k <= 1:
        return table, []
    if table.n < k:
        return None, [_note(f"group ({label}): fewer than {k} subjects, left out")]
    released = coarsen_table(table, k)
    if released is None:
        return None, [_note(f"group ({label}): events or censorings fewer than {k}, withheld")]
    if released.time.size == table.time.size:
        return released, []
    change = (
        f"group ({label}): {table.n_events} events and {table.n - table.n_events} censorings "
        f"released at {released.time.size} of {table.time.size} distinct times"
    )
    return released, [_note(change)]


def check_model_rows(
    bundle: SiteBundle,
    model: CoxModelDef,
    data: SurvivalData,
    levels: Mapping[str, Sequence[str]],
) -> None:
    """Refuse (:class:`Withheld`) a model whose sums would cover fewer than k subjects."""
    k = bundle.rules.min_cell_count
    if k <= 1:
        return
    if data.n < k:
        raise Withheld("min_cell_count", f"model {model.id}: fewer than {k} subjects at this site")
    for name in [*levels, *model.strata]:
        if name in SITE_VARIABLES:
            continue
        labels, codes = factorize_labels(np.asarray(data.column(name)))
        counts = np.bincount(codes, minlength=len(labels))
        small = [labels[i] for i in np.flatnonzero((counts > 0) & (counts < k))]
        if small:
            raise Withheld(
                "min_cell_count",
                f"model {model.id}: level(s) {small} of {name!r} hold fewer than {k} subjects "
                "at this site",
            )


def checked_levels(
    model: CoxModelDef, found: Mapping[str, Sequence[str]], given: Any
) -> dict[str, list[str]]:
    """The coordinator's levels, if they cover this site's and start with the plan's references."""
    if not isinstance(given, Mapping):
        raise Withheld("state", f"model {model.id}: the round state gives no levels")
    out: dict[str, list[str]] = {}
    for name, own in found.items():
        levels = given.get(name)
        if not isinstance(levels, list) or not all(isinstance(v, str) for v in levels):
            raise Withheld("state", f"model {model.id}: no level list for {name!r}")
        missing = sorted(set(own) - set(levels))
        if missing or len(set(levels)) != len(levels):
            raise Withheld(
                "state", f"model {model.id}: the levels of {name!r} omit this site's {missing}"
            )
        reference = model.reference_map.get(name)
        if reference is not None and levels[0] != reference:
            raise Withheld(
                "state",
                f"model {model.id}: the reference level of {name!r} must be the plan's "
                f"{reference!r}; got {levels[0]!r}",
            )
        out[name] = levels
    return out


def checked_grids(design: CoxDesign, grids: Any) -> dict[StratumKey, np.ndarray]:
    """The risk-set grid per stratum, if it holds every event time this site released."""
    if not isinstance(grids, list):
        raise Withheld("state", "the round state gives no event-time grid")
    out: dict[StratumKey, np.ndarray] = {}
    for grid in grids:
        times = np.asarray(
            grid.get("time") if isinstance(grid, Mapping) else None, dtype=np.float64
        )
        if times.ndim != 1 or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
            raise Withheld("state", "every grid must be ascending finite times")
        out[tuple(str(v) for v in grid["key"])] = times
    for b, key in enumerate(design.keys):
        lo, hi = int(design.bounds[b]), int(design.bounds[b + 1])
        own = np.unique(design.time[lo:hi][design.event[lo:hi]])
        grid = out.get(tuple(key), np.empty(0))
        if not np.isin(own, grid).all():
            raise Withheld(
                "state",
                "the event-time grid omits event times this site released in round 1 "
                "(a grid must be the merged released tables)",
            )
    return out
