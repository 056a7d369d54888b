"""What an analysis kind declares, and the registry that holds the kinds.

An analysis kind is one module under :mod:`analysis.kinds` holding, side by side:

- its plan keys and their validation (:class:`Key` parsers; a frozen spec dataclass whose
  fields are the keys);
- the site queries it needs (:class:`Query`; the site derives the same list from the plan with
  the same code, so it answers nothing the plan does not ask for) and, for Cox-type kinds, the
  models it iterates (:mod:`analysis.kinds.cox_model`);
- its coordinator estimator (``estimate``), from the sites' summed answers;
- its results as data (``present``): tables, figure specifications and metrics that the
  console, report, plot and MLflow code in ``experiments`` render without knowing the kind.

Registering a kind is importing its module (see :mod:`analysis.kinds`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from analysis.cox_design import TIES

INVALID: Any = object()
"""What a key parser returns when it recorded a problem."""


def one_of(values: Sequence[str] | set[str] | frozenset[str]) -> str:
    """Allowed values as a stable, readable set: ``{'a', 'b'}``."""
    return "{" + ", ".join(repr(v) for v in sorted(values)) + "}"


Parser = Callable[[Any, str, str, list[str]], Any]


@dataclass(frozen=True)
class Key:
    """One plan key: how to read it from TOML and how to write it back.

    Parameters
    ----------
    parse : callable
        ``parse(value, where, key, problems)``: the validated value, or :data:`INVALID` after
        appending a message to ``problems``.
    dump : callable
        Field value to the TOML value (the inverse of ``parse``).
    required : bool
        The key must be present.
    doc : str
        One line for docs/plans.md and error messages.
    """

    parse: Parser
    dump: Callable[[Any], Any] = lambda value: value
    required: bool = False
    doc: str = ""


def text_key(doc: str = "", required: bool = False, pattern: str | None = None) -> Key:
    """A non-empty string (optionally matching ``pattern``)."""
    compiled = re.compile(pattern) if pattern else None

    def parse(value: Any, where: str, key: str, problems: list[str]) -> Any:
        if not isinstance(value, str) or not value or (compiled and not compiled.match(value)):
            problems.append(f"{where}: {key} must be a non-empty string; got {value!r}")
            return INVALID
        return value

    return Key(parse, required=required, doc=doc)


def names_key(doc: str = "", required: bool = False, allow_empty: bool = True) -> Key:
    """A list of distinct variable names, kept as a tuple."""

    def parse(value: Any, where: str, key: str, problems: list[str]) -> Any:
        if (
            not isinstance(value, list)
            or not all(isinstance(v, str) and v for v in value)
            or (not value and not allow_empty)
            or len(set(value)) != len(value)
        ):
            need = "a list of distinct variable names" + ("" if allow_empty else " (at least one)")
            problems.append(f"{where}: {key} must be {need}; got {value!r}")
            return INVALID
        return tuple(value)

    return Key(parse, dump=list, required=required, doc=doc)


def choice_key(options: Sequence[str], doc: str = "", required: bool = False) -> Key:
    """One of ``options``."""

    def parse(value: Any, where: str, key: str, problems: list[str]) -> Any:
        if value not in options:
            problems.append(f"{where}: {key} must be one of {one_of(options)}; got {value!r}")
            return INVALID
        return value

    return Key(parse, required=required, doc=doc)


def bool_key(doc: str = "") -> Key:
    """``true`` or ``false`` (never a string or a number)."""

    def parse(value: Any, where: str, key: str, problems: list[str]) -> Any:
        if not isinstance(value, bool):
            problems.append(f"{where}: {key} must be true or false; got {value!r}")
            return INVALID
        return value

    return Key(parse, doc=doc)


def number_key(low: float, high: float, doc: str = "", integer: bool = False) -> Key:
    """A number in the open interval (low, high), or an integer in [low, high]."""

    def parse(value: Any, where: str, key: str, problems: list[str]) -> Any:
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        ok = isinstance(value, kinds) and not isinstance(value, bool)
        if ok and integer:
            ok = low <= value <= high
        elif ok:
            ok = math.isfinite(value) and low < value < high
        if not ok:
            allowed = (
                f"an integer in [{low:g}, {high:g}]"
                if integer
                else f"a number in ({low:g}, {high:g})"
            )
            problems.append(f"{where}: {key} must be {allowed}; got {value!r}")
            return INVALID
        return value if integer else float(value)

    return Key(parse, doc=doc)


def times_key(doc: str = "") -> Key:
    """A list of times >= 0, kept sorted and unique."""

    def parse(value: Any, where: str, key: str, problems: list[str]) -> Any:
        if not isinstance(value, list) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
            for t in value
        ):
            problems.append(f"{where}: {key} must be a list of numbers >= 0; got {value!r}")
            return INVALID
        return tuple(float(t) for t in sorted(set(value)))

    return Key(parse, dump=list, doc=doc)


def level_text(value: str | int | float) -> str:
    """Reference levels compare as strings, as the sites encode categorical values."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def reference_key(doc: str = "", required: bool = False) -> Key:
    """A table ``VARIABLE = "level"``, kept as sorted (variable, level) pairs."""

    def parse(value: Any, where: str, key: str, problems: list[str]) -> Any:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            problems.append(f'{where}: {key} must be a table VARIABLE = "level"; got {value!r}')
            return INVALID
        return tuple(sorted((k, level_text(v)) for k, v in value.items()))

    return Key(parse, dump=dict, required=required, doc=doc)


def pairs_key(doc: str = "") -> Key:
    """A list of ``"A:B"`` strings, kept as (A, B) pairs."""

    def parse(value: Any, where: str, key: str, problems: list[str]) -> Any:
        items = value if isinstance(value, list) else [value]
        pairs = []
        for item in items:
            if not isinstance(item, str) or item.count(":") != 1 or "" in item.split(":"):
                problems.append(f'{where}: {key} must be strings "A:B"; got {item!r}')
                return INVALID
            a, b = item.split(":")
            pairs.append((a, b))
        return tuple(pairs)

    return Key(parse, dump=lambda pairs: [f"{a}:{b}" for a, b in pairs], doc=doc)


ALPHA = number_key(0.0, 0.5, "two-sided level of the confidence intervals (default 0.05)")
PARAM = text_key("ADTTE endpoint (PARAMCD)", required=True)
TIES_KEY = choice_key(TIES, "tie handling (default efron)")
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class AnalysisSpec:
    """Base of every kind's spec: the ``[[analysis]]`` table, validated and immutable."""

    name: str

    kind: ClassVar[str] = ""


# ---------------------------------------------------------------------------------------------
# Queries: what a site computes in round 1 (derived from the plan at both ends)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One site aggregate of round 1.

    ``op`` names the site computation: ``"summary"`` (Table 1 sums), ``"event_table"`` (event
    and censoring counts per group and time) or ``"cox_local"`` (a Cox model's levels, size and,
    where the site publishes it, its own fit). ``id`` is unique within the round.
    """

    id: str
    analysis: str
    op: str
    param: str = ""
    by: tuple[str, ...] = ()
    model: str = ""


# ---------------------------------------------------------------------------------------------
# Results as data: what experiments renders for any kind
# ---------------------------------------------------------------------------------------------

FORMATS = (
    "text",
    "int",
    "num",
    "num1",
    "pct",
    "hr",
    "p",
    "time",
    "ci",
    "hr_ci",
    "pct_ci",
    "est_time",
    "est_hr",
    "est_pct",
)
"""How a table cell is written (:func:`analysis.kinds.format.fmt`); ``est_*`` cells hold
``[estimate, lower, upper]``."""


@dataclass(frozen=True)
class Column:
    """A table column: the row key, its heading and how its values are written."""

    key: str
    label: str
    format: str = "text"


@dataclass(frozen=True)
class Table:
    """A results table: rows are mappings from column keys to values (None = not available).

    ``id`` names its CSV file; a ``detail`` table (e.g. a whole survival curve) is written as CSV
    but not shown in the console or the report.
    """

    id: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Mapping[str, Any], ...]
    notes: tuple[str, ...] = ()
    detail: bool = False


@dataclass(frozen=True)
class Figure:
    """A figure specification: ``type`` names the renderer (``km``, ``forest``,
    ``convergence``), ``data`` holds what it draws."""

    id: str
    type: str
    title: str
    data: Mapping[str, Any]
    diagnostic: bool = False


@dataclass(frozen=True)
class Metric:
    """A number logged to MLflow (``key`` parts are joined with ``/``); ``headline`` marks the
    few that summarise the analysis (logged on the parent run); ``step`` is the protocol round
    of a per-round value."""

    key: tuple[str, ...]
    value: float | None
    headline: bool = False
    label: str = ""
    step: int | None = None


@dataclass(frozen=True)
class Artifact:
    """Something logged with the run besides tables and figures; ``type`` names the logger in
    ``experiments`` (e.g. ``torch-model``: a trained model, loadable with mlflow.pyfunc)."""

    type: str
    name: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Effect:
    """A treatment effect as a reader quotes it: ``label`` (in the report's language), the
    estimate with its interval and p-value, written with format code ``format`` (``hr`` or
    ``pct``).

    ``measure`` names it for MLflow (``hr``, ``ve``, ``p``); ``weight`` says how specific an
    estimate of the trial's estimand it is (3 an efficacy estimand, 2 a model's treatment term,
    1 a test): without a plan-marked primary analysis the report leads with the heaviest.
    ``comparison`` (``Vaccine vs Placebo``) and ``method`` (model, adjustment, strata) fill the
    estimand's treatment and population-level summary.
    """

    label: str
    measure: str
    value: float | None
    lower: float | None = None
    upper: float | None = None
    p: float | None = None
    format: str = "hr"
    conf: int = 95
    weight: int = 1
    comparison: str = ""
    method: str = ""


@dataclass(frozen=True)
class Presentation:
    """Everything the renderers need for one analysis.

    ``effects`` are its treatment effects (headline, MLflow parent run); ``population`` the
    analysis set it describes, ``{"by": label, "groups": {level: n}, "total": n}`` (Table 1).
    """

    heading: str
    lines: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()
    metrics: tuple[Metric, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    effects: tuple[Effect, ...] = ()
    population: Mapping[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The kind interface and the registry
# ---------------------------------------------------------------------------------------------


class Kind:
    """One analysis kind; subclasses set the class attributes and override the methods.

    ``engine`` says who runs it: ``"rounds"`` (the survival protocol: round-1 queries and Cox
    iterations, :mod:`federation.protocol`) or ``"training"`` (Flower's training strategies,
    :mod:`federation.training`).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    spec: ClassVar[type[AnalysisSpec]]
    keys: ClassVar[Mapping[str, Key]]
    engine: ClassVar[str] = "rounds"

    def parse(self, table: Mapping[str, Any], where: str, problems: list[str]) -> Any:
        """The validated spec of one ``[[analysis]]`` table, or None after adding problems."""
        before = len(problems)
        allowed = {"name", "kind", *self.keys}
        unknown = set(table) - allowed
        if unknown:
            problems.append(
                f"{where}: unknown key(s) {sorted(unknown)} for kind {self.name!r}; "
                f"allowed: {sorted(allowed)}"
            )
        missing = {k for k, rule in self.keys.items() if rule.required} - set(table)
        if missing:
            problems.append(
                f"{where}: missing required key(s) {sorted(missing)} for kind {self.name!r}"
            )
        values: dict[str, Any] = {"name": table["name"]}
        for key, rule in self.keys.items():
            if key in table:
                value = rule.parse(table[key], where, key, problems)
                if value is not INVALID:
                    values[key] = value
        if len(problems) == before:
            self.check(values, where, problems)
        if len(problems) > before:
            return None
        return self.spec(**values)

    def check(self, values: dict[str, Any], where: str, problems: list[str]) -> None:
        """Rules that involve several keys (after each key parsed on its own)."""

    def grouping(self, spec: Any) -> tuple[str, ...]:
        """Variables whose levels split the rows into reported groups or strata."""
        return ()

    def covariates(self, spec: Any) -> tuple[str, ...]:
        """Model covariates (numeric or categorical, judged from the data at the site)."""
        return ()

    def level_variables(self, spec: Any) -> tuple[str, ...]:
        """Variables whose level names the sites compare in round 1 (default: the grouping
        variables and covariates; a kind that counts other categories adds them)."""
        return (*self.grouping(spec), *self.covariates(spec))

    def queries(self, spec: Any) -> list[Query]:
        """Round-1 queries of this analysis."""
        return []

    def cox_models(self, spec: Any) -> list[Any]:
        """Cox models this analysis iterates (see :mod:`analysis.kinds.cox_model`)."""
        return []

    def estimate(self, spec: Any, context: Any) -> dict[str, Any]:
        """The results.json section from the sites' answers (see :mod:`analysis.rounds`)."""
        raise NotImplementedError

    def present(self, name: str, result: Mapping[str, Any], locale: Any = None) -> Presentation:
        """Tables, figures and metrics of a results.json section, worded in ``locale`` (an
        :class:`analysis.kinds.format.Locale`; None: English)."""
        raise NotImplementedError

    def dump(self, spec: AnalysisSpec) -> dict[str, Any]:
        """The spec as a TOML table: the canonical form, keys at their default left out (so
        ``ties = "efron"`` written or not is one plan)."""
        table: dict[str, Any] = {"name": spec.name, "kind": self.name}
        for item in fields(spec):
            value = getattr(spec, item.name)
            if item.name != "name" and value != item.default:
                table[item.name] = self.keys[item.name].dump(value)
        return table


REGISTRY: dict[str, Kind] = {}


def register(kind: type[Kind]) -> type[Kind]:
    """Class decorator: add an instance of ``kind`` to :data:`REGISTRY` under its name."""
    REGISTRY[kind.name] = kind()
    return kind
