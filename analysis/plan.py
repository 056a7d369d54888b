"""Analysis plans: TOML in, a validated immutable :class:`Plan` out.

Every mistake is reported before anything is sent to a site, naming the analysis, the key, the
allowed values and the value received.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from analysis.errors import UserError

KINDS = ("summary", "km", "logrank", "cox", "ve")
TIES = ("efron", "breslow")
_COMMON = {"name", "kind", "alpha"}
ALLOWED_KEYS: dict[str, set[str]] = {
    "summary": _COMMON | {"by", "param"},
    "km": _COMMON | {"param", "by", "times"},
    "logrank": _COMMON | {"param", "by", "strata"},
    "cox": _COMMON | {"param", "covariates", "reference", "strata", "ties", "interactions"},
    "ve": _COMMON
    | {"param", "arm", "reference", "treatment", "covariates", "strata", "ties", "by_country"},
}
REQUIRED_KEYS: dict[str, set[str]] = {
    "summary": set(),
    "km": {"param"},
    "logrank": {"param", "by"},
    "cox": {"param", "covariates"},
    "ve": {"param", "reference"},
}
RUN_KEYS = {"min_sites", "round_timeout", "max_rounds", "tolerance"}


def one_of(values: tuple[str, ...] | set[str]) -> str:
    """Allowed values as a stable, readable set: {'a', 'b'}."""
    return "{" + ", ".join(repr(v) for v in sorted(values)) + "}"


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class AnalysisSpec:
    """One ``[[analysis]]`` table, validated; unused keys keep their defaults."""

    name: str
    kind: str
    param: str = ""
    by: str = ""
    times: tuple[float, ...] = ()
    strata: tuple[str, ...] = ()
    covariates: tuple[str, ...] = ()
    reference: tuple[tuple[str, str], ...] = ()
    interactions: tuple[tuple[str, str], ...] = ()
    ties: str = "efron"
    alpha: float = 0.05
    arm: str = "TRT01P"
    treatment: str = ""
    by_country: bool = True

    @property
    def reference_map(self) -> dict[str, str]:
        """The reference levels as a dict."""
        return dict(self.reference)


@dataclass(frozen=True)
class RunSettings:
    """The ``[run]`` table: how the coordinator drives the rounds."""

    min_sites: int = 0  # 0 = every site must answer
    round_timeout: float = 120.0
    max_rounds: int = 20
    tolerance: float = 1e-9


@dataclass(frozen=True)
class Plan:
    """A validated analysis plan."""

    study_id: str
    title: str
    analyses: tuple[AnalysisSpec, ...]
    run: RunSettings = field(default_factory=RunSettings)
    text: str = ""
    source: str = "<plan>"

    @property
    def sha256(self) -> str:
        """Hash of the plan text as written, for provenance."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the validated plan."""
        return asdict(self)


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    """Validate plan TOML text; raise UserError naming every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML: {exc}") from None
    problems: list[str] = []
    unknown = set(raw) - {"study", "analysis", "run"}
    if unknown:
        problems.append(
            f"unknown top-level table(s) {sorted(unknown)}; allowed: study, run, analysis"
        )
    study = raw.get("study")
    study_id, title = "", ""
    if not isinstance(study, dict) or not isinstance(study.get("id"), str) or not study["id"]:
        problems.append("[study] id is required (a non-empty string)")
    else:
        study_id = study["id"]
        title = str(study.get("title", ""))
        extra = set(study) - {"id", "title", "description"}
        if extra:
            problems.append(
                f"[study]: unknown key(s) {sorted(extra)}; allowed: id, title, description"
            )
    run = _parse_run(raw.get("run", {}), problems)
    tables = raw.get("analysis", [])
    if not isinstance(tables, list) or not tables:
        problems.append("the plan needs at least one [[analysis]] table")
        tables = []
    analyses: list[AnalysisSpec] = []
    names: set[str] = set()
    for index, table in enumerate(tables, start=1):
        spec = _parse_analysis(table, index, problems)
        if spec is None:
            continue
        if spec.name in names:
            problems.append(
                f"analysis #{index}: name {spec.name!r} is used twice; names must be unique"
            )
        names.add(spec.name)
        analyses.append(spec)
    if problems:
        raise UserError(f"{source}: invalid analysis plan:\n  - " + "\n  - ".join(problems))
    return Plan(study_id, title, tuple(analyses), run, text=text, source=source)


def _parse_run(table: Any, problems: list[str]) -> RunSettings:
    if not isinstance(table, dict):
        problems.append("[run] must be a table")
        return RunSettings()
    unknown = set(table) - RUN_KEYS
    if unknown:
        problems.append(f"[run]: unknown key(s) {sorted(unknown)}; allowed: {sorted(RUN_KEYS)}")
    settings = RunSettings()
    values: dict[str, Any] = {}
    checks: dict[str, tuple[type | tuple[type, ...], Callable[[Any], bool], str]] = {
        "min_sites": (int, lambda v: v >= 0, "an integer >= 0"),
        "round_timeout": (
            (int, float),
            lambda v: 0 < v <= 86400,
            "a number of seconds in (0, 86400]",
        ),
        "max_rounds": (int, lambda v: 1 <= v <= 1000, "an integer in [1, 1000]"),
        "tolerance": ((int, float), lambda v: 0 < v < 1, "a number in (0, 1)"),
    }
    for key, (types, ok, allowed) in checks.items():
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, types) or not ok(value):
            problems.append(f"[run] {key} must be {allowed}; got {value!r}")
        else:
            values[key] = value
    return RunSettings(**{**asdict(settings), **values})


def _parse_analysis(table: Any, index: int, problems: list[str]) -> AnalysisSpec | None:
    where = f"analysis #{index}"
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table")
        return None
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(
            f"{where}: name must be a string of letters, digits, '_' or '-' starting with a "
            f"letter; got {name!r}"
        )
        return None
    where = f"analysis {name!r}"
    kind = table.get("kind")
    if kind not in KINDS:
        problems.append(f"{where}: kind must be one of {one_of(KINDS)}; got {kind!r}")
        return None
    before = len(problems)
    unknown = set(table) - ALLOWED_KEYS[kind]
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {sorted(unknown)} for kind {kind!r}; "
            f"allowed: {sorted(ALLOWED_KEYS[kind])}"
        )
    missing = REQUIRED_KEYS[kind] - set(table)
    if missing:
        problems.append(f"{where}: missing required key(s) {sorted(missing)} for kind {kind!r}")
    values: dict[str, Any] = {"name": name, "kind": kind}
    for key in ("param", "by", "arm", "treatment"):
        if key in table:
            values[key] = _string(table[key], where, key, problems)
    for key in ("strata", "covariates"):
        if key in table:
            values[key] = _strings(table[key], where, key, problems, allow_empty=key == "strata")
    if "times" in table:
        times = table["times"]
        if not isinstance(times, list) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
            for t in times
        ):
            problems.append(f"{where}: times must be a list of numbers >= 0; got {times!r}")
        else:
            values["times"] = tuple(float(t) for t in sorted(set(times)))
    if "reference" in table:
        ref = table["reference"]
        if not isinstance(ref, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) for k, v in ref.items()
        ):
            problems.append(f'{where}: reference must be a table VARIABLE = "level"; got {ref!r}')
        else:
            values["reference"] = tuple(sorted((k, _level(v)) for k, v in ref.items()))
    if "interactions" in table:
        pairs = []
        for item in table["interactions"] if isinstance(table["interactions"], list) else [None]:
            if not isinstance(item, str) or item.count(":") != 1 or "" in item.split(":"):
                problems.append(f'{where}: interactions must be strings "A:B"; got {item!r}')
                continue
            a, b = item.split(":")
            pairs.append((a, b))
        values["interactions"] = tuple(pairs)
    if "ties" in table:
        if table["ties"] not in TIES:
            problems.append(f"{where}: ties must be one of {one_of(TIES)}; got {table['ties']!r}")
        else:
            values["ties"] = table["ties"]
    if "alpha" in table:
        alpha = table["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 0.5:
            problems.append(f"{where}: alpha must be a number in (0, 0.5); got {alpha!r}")
        else:
            values["alpha"] = float(alpha)
    if "by_country" in table:
        if not isinstance(table["by_country"], bool):
            problems.append(
                f"{where}: by_country must be true or false; got {table['by_country']!r}"
            )
        else:
            values["by_country"] = table["by_country"]
    if kind == "ve" and "reference" in values:
        arm = values.get("arm", "TRT01P")
        if arm not in dict(values["reference"]):
            problems.append(
                f"{where}: reference must name the reference level of the arm variable {arm!r}, "
                f'e.g. reference = {{ {arm} = "Placebo" }}; got {table["reference"]!r}'
            )
    if len(problems) > before:
        return None
    return AnalysisSpec(**values)


def _level(value: str | int | float) -> str:
    """Reference levels compare as strings, as the sites encode categorical values."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _string(value: Any, where: str, key: str, problems: list[str]) -> str:
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: {key} must be a non-empty string; got {value!r}")
        return ""
    return value


def _strings(
    value: Any, where: str, key: str, problems: list[str], allow_empty: bool
) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not all(isinstance(v, str) and v for v in value)
        or (not value and not allow_empty)
        or len(set(value)) != len(value)
    ):
        need = "a list of distinct variable names" + ("" if allow_empty else " (at least one)")
        problems.append(f"{where}: {key} must be {need}; got {value!r}")
        return ()
    return tuple(value)
