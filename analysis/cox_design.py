"""Cox model specification, design matrix and strata: shared by the site and coordinator halves.

Level discovery is federated: every site reports :func:`local_levels` (its sorted categorical
levels), the coordinator unions them with :func:`global_levels` (reference level first) and
broadcasts a :class:`CoxSpec`; then every site builds the same columns with
:func:`build_design`, a zero column where it lacks a level.

Stratum keys are tuples of str, one per strata variable, in ``CoxSpec.strata`` order. A str value
is used as is; a number is formatted canonically by :func:`format_value` (an integral value
without a decimal point, ``2.0 -> "2"``; any other value by ``repr``, ``0.5 -> "0.5"``), so that
every site spells a stratum the same way.

Rows with a missing value (NaN, None or "") in any covariate, interaction or strata variable are
left out (complete-case analysis); ``n`` and ``events`` count the rows used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from analysis.base import format_level
from analysis.data import SurvivalData, is_numeric
from analysis.errors import UserError

Ties = Literal["efron", "breslow"]
StratumKey = tuple[str, ...]
FloatArray = NDArray[np.float64]
TIES: tuple[str, ...] = ("efron", "breslow")


def check_ties(ties: str) -> Ties:
    """``ties`` as the Literal type, or a UserError naming the allowed set."""
    if ties == "efron":
        return "efron"
    if ties == "breslow":
        return "breslow"
    raise UserError(f"ties must be one of {{'breslow', 'efron'}}; got {ties!r}")


def format_value(value: Any) -> str:
    """Canonical str of one categorical or strata value (see the module notes).

    The spelling of :func:`analysis.base.format_level`, so that a Cox stratum and a KM or
    log-rank group of the same value carry the same label.
    """
    return format_level(value)


def _missing(values: NDArray[Any]) -> NDArray[np.bool_]:
    """True where a covariate value is missing: NaN for numbers, None/NaN/'' for objects."""
    if is_numeric(values):
        return np.isnan(values.astype(np.float64))
    if set(map(type, values)) <= {str}:  # the common case, vectorised: only "" is missing
        return np.asarray(values == "", dtype=bool)
    out = np.zeros(values.shape, dtype=bool)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and v == ""):
            out[i] = True
    return out


def _as_text(values: NDArray[Any]) -> NDArray[Any]:
    """Object array of canonical str values (missing ones stay as they are)."""
    if values.dtype == object and (
        set(map(type, values)) <= {str} or all(isinstance(v, str) for v in values)
    ):
        return values
    return np.array(
        [v if (isinstance(v, str) or v is None) else format_value(v) for v in values], dtype=object
    )


@dataclass(frozen=True)
class CoxSpec:
    """Everything a site needs to build the design and strata of one Cox model.

    Parameters
    ----------
    covariates : tuple of str
        Main-effect variables, in term order.
    levels : mapping of str to tuple of str
        For every categorical variable (in ``covariates`` or ``interactions``): all global
        levels, the reference level first. A variable listed here is categorical even when its
        column is numeric (values are then formatted by :func:`format_value`).
    interactions : tuple of (str, str)
        Products of the design columns of two variables, named ``a_term:b_term``.
    strata : tuple of str
        Baseline-hazard strata variables; ``"SITE"`` makes the baseline site-specific.
    ties : {"efron", "breslow"}
        Handling of tied event times.
    """

    covariates: tuple[str, ...]
    levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    interactions: tuple[tuple[str, str], ...] = ()
    strata: tuple[str, ...] = ()
    ties: Ties = "efron"

    def __post_init__(self) -> None:
        if self.ties not in TIES:
            raise UserError(f"ties must be one of {{'efron', 'breslow'}}; got {self.ties!r}")
        object.__setattr__(self, "covariates", tuple(self.covariates))
        object.__setattr__(self, "strata", tuple(self.strata))
        object.__setattr__(self, "interactions", tuple((a, b) for a, b in self.interactions))
        object.__setattr__(self, "levels", {k: tuple(v) for k, v in self.levels.items()})
        for name, lv in self.levels.items():
            if not lv:
                raise UserError(f"levels[{name!r}] must list at least one level; got ()")

    @property
    def variables(self) -> tuple[str, ...]:
        """Covariate and interaction variables, each once, in first-use order."""
        names = list(self.covariates) + [v for pair in self.interactions for v in pair]
        return tuple(dict.fromkeys(names))


def local_levels(
    data: SurvivalData, covariates: Iterable[str], categorical: Iterable[str] = ()
) -> dict[str, tuple[str, ...]]:
    """Site half of level discovery: the sorted non-missing levels of each categorical variable.

    Parameters
    ----------
    data : SurvivalData
        The site's rows.
    covariates : iterable of str
        Variables of the model (covariates and interaction variables).
    categorical : iterable of str, optional
        Numeric variables to treat as categorical anyway. Str columns always are.

    Returns
    -------
    dict of str to tuple of str
        Only categorical variables appear; numeric ones are left out.
    """
    forced = set(categorical)
    out: dict[str, tuple[str, ...]] = {}
    for name in dict.fromkeys(covariates):
        values = data.column(name)
        if is_numeric(values) and name not in forced:
            continue
        keep = values[~_missing(values)]
        out[name] = tuple(sorted(set(_as_text(keep).tolist())))
    return out


def global_levels(
    local: Sequence[Mapping[str, Sequence[str]]], reference: Mapping[str, str] | None = None
) -> dict[str, tuple[str, ...]]:
    """Coordinator half of level discovery: union, sorted, reference level first.

    Parameters
    ----------
    local : sequence of mapping
        The :func:`local_levels` of every site.
    reference : mapping of str to str, optional
        Reference level per variable; default is the smallest level.

    Returns
    -------
    dict of str to tuple of str
        Levels per categorical variable, reference first.

    Raises
    ------
    UserError
        When a reference names a variable that is not categorical, or a level that no site has.
    """
    union: dict[str, set[str]] = {}
    for site in local:
        for name, levels in site.items():
            union.setdefault(name, set()).update(levels)
    out: dict[str, tuple[str, ...]] = {}
    for name, found in union.items():
        ordered = sorted(found)
        if not ordered:
            raise UserError(f"categorical variable {name!r} has no non-missing value at any site")
        out[name] = tuple(ordered)
    for name, level in (reference or {}).items():
        if name not in out:
            allowed = "{" + ", ".join(repr(v) for v in sorted(out)) + "}"
            raise UserError(
                f"reference names a variable that is not a categorical covariate; "
                f"reference keys must be in {allowed}; got {name!r}"
            )
        level = format_value(level)
        if level not in out[name]:
            allowed = "{" + ", ".join(repr(v) for v in out[name]) + "}"
            raise UserError(
                f"reference[{name!r}] must be one of the levels found at the sites {allowed}; "
                f"got {level!r}"
            )
        out[name] = (level,) + tuple(v for v in out[name] if v != level)
    return out


def _variable_columns(
    data: SurvivalData, name: str, spec: CoxSpec, rows: NDArray[np.bool_]
) -> tuple[list[FloatArray], list[str]]:
    column = data.column(name)
    values = column if bool(rows.all()) else column[rows]  # no copy of a complete column
    if name not in spec.levels:
        if not is_numeric(values):
            raise UserError(
                f"categorical covariate {name!r} has no levels in the Cox spec; "
                f"levels are given for {sorted(spec.levels)}"
            )
        return [values.astype(np.float64, copy=False)], [name]
    levels = spec.levels[name]
    text = _as_text(values)
    unknown = sorted(set(text.tolist()) - set(levels))
    if unknown:
        raise UserError(
            f"covariate {name!r} has level {unknown[0]!r}, not among the global levels {levels}"
        )
    cols = [(text == lv).astype(np.float64) for lv in levels[1:]]
    return cols, [f"{name}[T.{lv}]" for lv in levels[1:]]


def term_names(spec: CoxSpec) -> tuple[str, ...]:
    """The terms :func:`build_design` produces for ``spec``, without any data.

    A variable in ``spec.levels`` gives ``VAR[T.level]`` per non-reference level; any other
    variable is numeric and gives its own name; interactions give ``a_term:b_term``.
    """

    def of(name: str) -> list[str]:
        if name in spec.levels:
            return [f"{name}[T.{lv}]" for lv in spec.levels[name][1:]]
        return [name]

    terms = [t for name in spec.covariates for t in of(name)]
    terms += [f"{ta}:{tb}" for a, b in spec.interactions for ta in of(a) for tb in of(b)]
    return tuple(terms)


def used_rows(data: SurvivalData, spec: CoxSpec) -> NDArray[np.bool_]:
    """Rows without a missing value in any model or strata variable."""
    keep = np.ones(data.n, dtype=bool)
    for name in spec.variables + spec.strata:
        keep &= ~_missing(data.column(name))
    return keep


def build_design(
    data: SurvivalData, spec: CoxSpec, rows: NDArray[np.bool_] | None = None
) -> tuple[FloatArray, tuple[str, ...]]:
    """Design matrix and term names of ``spec`` on ``data``.

    Parameters
    ----------
    data : SurvivalData
        The site's rows.
    spec : CoxSpec
        The model; categorical variables get one indicator per non-reference level named
        ``VAR[T.level]``; interactions are products named ``a_term:b_term`` (a-major order).
    rows : ndarray of bool, optional
        Rows to use; default :func:`used_rows` (complete cases).

    Returns
    -------
    X : ndarray of float64, shape (n_rows, p)
    terms : tuple of str
    """
    if rows is None:
        rows = used_rows(data, spec)
    cols, terms = _design_columns(data, spec, rows)
    x = np.column_stack(cols) if cols else np.zeros((int(rows.sum()), 0))
    return np.ascontiguousarray(x, dtype=np.float64), terms


def _design_columns(
    data: SurvivalData, spec: CoxSpec, rows: NDArray[np.bool_]
) -> tuple[list[FloatArray], tuple[str, ...]]:
    """The design's columns (of the rows in ``rows``) and their term names."""
    per_var: dict[str, tuple[list[FloatArray], list[str]]] = {}
    for name in spec.variables:
        per_var[name] = _variable_columns(data, name, spec, rows)
    cols: list[FloatArray] = []
    terms: list[str] = []
    for name in spec.covariates:
        cols += per_var[name][0]
        terms += per_var[name][1]
    for a, b in spec.interactions:
        for ca, ta in zip(*per_var[a], strict=True):
            for cb, tb in zip(*per_var[b], strict=True):
                cols.append(ca * cb)
                terms.append(f"{ta}:{tb}")
    if len(set(terms)) != len(terms):
        raise UserError(f"the Cox model repeats a term; terms: {terms}")
    return cols, tuple(terms)


def stratum_keys(data: SurvivalData, strata: Sequence[str], rows: NDArray[np.bool_]) -> list[Any]:
    """Stratum key (tuple of str) of every row in ``rows``."""
    if not strata:
        return [()] * int(rows.sum())
    cols = [_as_text(data.column(s)[rows]).tolist() for s in strata]
    return list(zip(*cols, strict=True))


def _factorize(values: NDArray[Any]) -> tuple[list[str], NDArray[np.int64]]:
    """Sorted distinct str values and the rank of each row's value among them."""
    if values.shape[0] and bool(np.all(values == values[0])):  # e.g. SITE within a site
        return [values[0]], np.zeros(values.shape[0], dtype=np.int64)
    first: dict[str, int] = {}
    seen = np.fromiter(
        (first.setdefault(v, len(first)) for v in values.tolist()),
        dtype=np.int64,
        count=values.shape[0],
    )
    levels = sorted(first)
    rank = np.empty(len(levels), dtype=np.int64)
    rank[[first[v] for v in levels]] = np.arange(len(levels))
    return levels, rank[seen]


def _stratum_codes(
    data: SurvivalData, strata: Sequence[str], rows: NDArray[np.bool_]
) -> tuple[list[StratumKey], NDArray[np.int64]]:
    """Sorted distinct stratum keys of the rows in ``rows`` and each row's index among them.

    The same keys as ``sorted(set(stratum_keys(data, strata, rows)))``, without a tuple per row:
    per variable, values are ranked in sorted order, and the mixed-radix number of the ranks
    orders rows as their key tuples compare.
    """
    n = int(rows.sum())
    if not strata:
        return ([()] if n else []), np.zeros(n, dtype=np.int64)
    columns = [_factorize(_as_text(data.column(s)[rows])) for s in strata]
    combined = np.zeros(n, dtype=np.int64)
    for levels, rank in columns:
        combined = combined * len(levels) + rank
    present, codes = np.unique(combined, return_inverse=True)
    keys: list[StratumKey] = []
    for value in present.tolist():
        parts = []
        for levels, _ in reversed(columns):
            value, r = divmod(value, len(levels))
            parts.append(levels[r])
        keys.append(tuple(reversed(parts)))
    return keys, codes.reshape(-1).astype(np.int64)


@dataclass(frozen=True)
class CoxDesign:
    """A site's rows prepared once for many evaluations: sorted by (stratum, time).

    Attributes
    ----------
    spec : CoxSpec
    terms : tuple of str
    x : ndarray, shape (n, p), Fortran order
        Design rows minus ``x_mean`` (centred locally: exact, Cox is shift invariant, and
        stable), sorted by stratum then time.
    time, event : ndarray, shape (n,)
        Sorted like ``x``.
    keys : tuple of StratumKey
        Stratum keys, ascending; block ``b`` is rows ``bounds[b]:bounds[b + 1]``.
    bounds : ndarray of int64, shape (len(keys) + 1,)
    x_mean : ndarray, shape (p,)
        Column means (zeros for an empty site).
    """

    spec: CoxSpec
    terms: tuple[str, ...]
    x: FloatArray
    time: FloatArray
    event: NDArray[np.bool_]
    keys: tuple[StratumKey, ...]
    bounds: NDArray[np.int64]
    x_mean: FloatArray

    @property
    def n(self) -> int:
        """Rows used."""
        return int(self.time.shape[0])

    @property
    def events(self) -> int:
        """Events among the rows used."""
        return int(self.event.sum())


def prepare(data: SurvivalData | CoxDesign, spec: CoxSpec) -> CoxDesign:
    """Build the design once and sort it by (stratum, time); a CoxDesign passes through.

    Raises
    ------
    ValueError
        When ``data`` is a CoxDesign for another spec.
    """
    if isinstance(data, CoxDesign):
        if data.spec != spec:
            raise ValueError("the prepared CoxDesign was built for another CoxSpec")
        return data
    rows = used_rows(data, spec)
    cols, terms = _design_columns(data, spec, rows)
    time = data.time[rows]
    event = data.event[rows]
    uniq, codes = _stratum_codes(data, spec.strata, rows)
    order = np.lexsort((time, codes))
    codes = codes[order]
    bounds = np.searchsorted(codes, np.arange(len(uniq) + 1)).astype(np.int64)
    # filled column by column, each column dropped once placed: memory holds the design once
    centred = np.empty((order.shape[0], len(cols)), dtype=np.float64, order="F")
    x_mean = np.zeros(len(cols))
    for j in range(len(cols)):
        column = cols.pop(0)
        x_mean[j] = column.mean() if column.shape[0] else 0.0
        np.take(column, order, out=centred[:, j], mode="clip")  # "clip": unbuffered
        centred[:, j] -= x_mean[j]
    return CoxDesign(
        spec=spec,
        terms=terms,
        x=centred,
        time=time[order],
        event=event[order],
        keys=tuple(uniq),
        bounds=bounds,
        x_mean=x_mean,
    )
