"""Analysis plans: TOML (or the same tables built in Python) in, a validated immutable
:class:`Plan` out.

Every mistake is reported before anything is sent to a site, naming the analysis, the key, the
allowed values and the value received. The keys of each ``[[analysis]]`` table are declared by
its kind (:mod:`analysis.kinds`). Sites parse the plan with this same code and approve it by its
:attr:`Plan.sha256`, a hash of the validated content (every key, defaults included), so a plan
written as TOML and the same plan built in code have one hash, and comments or key order do not
change it.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import tomli_w

from analysis.errors import UserError
from analysis.kinds import REGISTRY
from analysis.kinds.base import (
    INVALID,
    NAME_PATTERN,
    AnalysisSpec,
    bool_key,
    number_key,
    one_of,
)
from analysis.terminology import default_study_levels, parse_study_levels

STUDY_KEYS = ("id", "title", "description", "sites", "language", "primary", "time_unit")
LANGUAGES = ("en", "ja", "ko")
RUN_KEYS = {
    "min_sites": number_key(0, 10_000, "sites that must answer (0 = all)", integer=True),
    "round_timeout": number_key(0, 86_400.000001, "seconds a round waits for the sites"),
    "max_rounds": number_key(1, 1000, "protocol rounds at most", integer=True),
    "tolerance": number_key(0, 1, "Cox Newton steps stop below this max |delta beta|"),
    # secure aggregation (docs/design.md, "Secure aggregation")
    "secure_aggregation": bool_key("sum every aggregate under SecAgg+ (coordinator sees totals)"),
    "time_unit": number_key(0, 1e6, "secure time grid step, in the data's time unit (default 1)"),
    "follow_up": number_key(0, 1e7, "secure time grid end (default: from the sites' max time)"),
}
SECURE_RUN_KEYS = ("secure_aggregation", "time_unit", "follow_up")
"""Left out of a plan's canonical form (and hash) while at their defaults, so plans written
before these keys existed keep their hashes."""


@dataclass(frozen=True)
class RunSettings:
    """The ``[run]`` table: how the coordinator drives the rounds."""

    min_sites: int = 0  # 0 = every site must answer
    round_timeout: float = 120.0
    max_rounds: int = 20
    tolerance: float = 1e-9
    secure_aggregation: bool = False
    time_unit: float = 1.0  # the secure grid's step
    follow_up: float = 0.0  # the secure grid's end; 0 = the sites' max time rounded up


@dataclass(frozen=True)
class Plan:
    """A validated analysis plan.

    Attributes
    ----------
    study_id, title, description : str
    sites : tuple of str
        Site ids the plan expects (empty: every site the coordinator enrolled).
    language, primary, time_unit : str
        The reports' default language (``en``, ``ja``, ``ko``), the analysis that leads the
        report's headline, and the time unit the axes name when the endpoint's label has none.
    analyses : tuple of AnalysisSpec
        One spec per ``[[analysis]]`` table, of its kind's spec class.
    run : RunSettings
    text : str
        The plan as written (provenance); :meth:`to_toml` is the canonical form.
    source : str
        Where it came from (a file name, ``"<code>"``), for messages.
    """

    study_id: str
    title: str
    analyses: tuple[AnalysisSpec, ...]
    run: RunSettings = field(default_factory=RunSettings)
    description: str = ""
    sites: tuple[str, ...] = ()
    language: str = ""
    primary: str = ""
    time_unit: str = ""
    levels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    text: str = ""
    source: str = "<plan>"

    @property
    def study_levels(self) -> dict[str, tuple[str, ...]]:
        """The levels the study expects per categorical variable: the plan's ``[levels]`` over
        CDISC controlled terminology (:mod:`analysis.terminology`)."""
        return {**default_study_levels(), **dict(self.levels)}

    def canonical(self) -> dict[str, Any]:
        """The validated content as TOML tables (``[run]`` in full, analysis keys at their
        default left out)."""
        study: dict[str, Any] = {"id": self.study_id, "title": self.title}
        if self.description:
            study["description"] = self.description
        if self.sites:
            study["sites"] = list(self.sites)
        for key in ("language", "primary", "time_unit"):
            if getattr(self, key):
                study[key] = getattr(self, key)
        out: dict[str, Any] = {
            "study": study,
            "run": _run_table(self.run),
            "analysis": [REGISTRY[a.kind].dump(a) for a in self.analyses],
        }
        if self.levels:
            out["levels"] = {name: list(values) for name, values in self.levels}
        return out

    @property
    def sha256(self) -> str:
        """Hash of :meth:`canonical` (what a site approves)."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_toml(self) -> str:
        """The canonical TOML text (parses back to an equal plan with the same hash)."""
        return tomli_w.dumps(self.canonical())

    def analysis(self, name: str) -> AnalysisSpec:
        """The analysis called ``name``."""
        for spec in self.analyses:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the validated plan."""
        return {**self.canonical(), "sha256": self.sha256}


def _run_table(run: RunSettings) -> dict[str, Any]:
    defaults = RunSettings()
    return {
        k: v
        for k, v in asdict(run).items()
        if k not in SECURE_RUN_KEYS or v != getattr(defaults, k)
    }


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    """Validate plan TOML text; raise UserError naming every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML: {exc}") from None
    return plan_from_tables(raw, source=source, text=text)


def plan_from_tables(raw: Mapping[str, Any], source: str = "<code>", text: str = "") -> Plan:
    """Validate a plan given as TOML tables (a dict); the plan text defaults to its TOML."""
    problems: list[str] = []
    unknown = set(raw) - {"study", "analysis", "run", "levels"}
    if unknown:
        problems.append(
            f"unknown top-level table(s) {sorted(unknown)}; allowed: study, run, analysis, levels"
        )
    declared = raw.get("levels")
    merged = parse_study_levels(declared, problems)
    levels = tuple((k, merged[k]) for k in sorted(declared)) if isinstance(declared, dict) else ()
    study = _parse_study(raw.get("study"), problems)
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
    primary = study.get("primary", "")
    if primary and primary not in names:
        problems.append(
            f"[study] primary must name one of the analyses {sorted(names)}; got {primary!r}"
        )
    if problems:
        raise UserError(f"{source}: invalid analysis plan:\n  - " + "\n  - ".join(problems))
    plan = Plan(analyses=tuple(analyses), run=run, levels=levels, source=source, text=text, **study)
    return plan if text else replace(plan, text=plan.to_toml())


def _parse_study(study: Any, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"study_id": "", "title": ""}
    if not isinstance(study, dict) or not isinstance(study.get("id"), str) or not study["id"]:
        problems.append("[study] id is required (a non-empty string)")
        return out
    extra = set(study) - set(STUDY_KEYS)
    if extra:
        problems.append(f"[study]: unknown key(s) {sorted(extra)}; allowed: {list(STUDY_KEYS)}")
    out["study_id"] = study["id"]
    for key in ("title", "description", "primary", "time_unit"):
        value = study.get(key, "")
        if not isinstance(value, str):
            problems.append(f"[study] {key} must be a string; got {value!r}")
        else:
            out[key] = value
    language = study.get("language", "")
    if language and language not in LANGUAGES:
        problems.append(f"[study] language must be one of {one_of(LANGUAGES)}; got {language!r}")
    elif isinstance(language, str):
        out["language"] = language
    sites = study.get("sites", [])
    if (
        not isinstance(sites, list)
        or not all(isinstance(s, str) and s for s in sites)
        or len(set(sites)) != len(sites)
    ):
        problems.append(f"[study] sites must be a list of distinct site ids; got {sites!r}")
    else:
        out["sites"] = tuple(sites)
    return out


def _parse_run(table: Any, problems: list[str]) -> RunSettings:
    if not isinstance(table, dict):
        problems.append("[run] must be a table")
        return RunSettings()
    unknown = set(table) - set(RUN_KEYS)
    if unknown:
        problems.append(f"[run]: unknown key(s) {sorted(unknown)}; allowed: {sorted(RUN_KEYS)}")
    values = {}
    for key, rule in RUN_KEYS.items():
        if key in table:
            value = rule.parse(table[key], "[run]", key, problems)
            if value is not INVALID:
                values[key] = value
    return RunSettings(**values)


def _parse_analysis(table: Any, index: int, problems: list[str]) -> AnalysisSpec | None:
    where = f"analysis #{index}"
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table")
        return None
    name = table.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.append(
            f"{where}: name must be a string of letters, digits, '_' or '-' starting with a "
            f"letter; got {name!r}"
        )
        return None
    where = f"analysis {name!r}"
    kind_name = table.get("kind")
    kind = REGISTRY.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        problems.append(
            f"{where}: kind must be one of {one_of(tuple(REGISTRY))}; got {kind_name!r}"
        )
        return None
    spec: AnalysisSpec | None = kind.parse(table, where, problems)
    return spec
