"""The Python API: build a plan in code, run it, read the results as DataFrames.

A plan built here is validated by the same code as a TOML plan (:mod:`analysis.plan`) and has
the same SHA-256 for the same content, so a site that approved the TOML plan answers it. Runs
go through the same engines as ``trialfed run``: Flower's simulation engine over local site
bundles, or a deployed federation. See docs/python-api.md for a worked example.

>>> plan = Plan("DEMO", [Analysis("km", "km", param="OS", by="TRT01P")])   # doctest: +SKIP
>>> results = plan.run(sites=["demo/sites/JP01", "demo/sites/KR01"])       # doctest: +SKIP
>>> results.km.head()                                                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.base import json_safe
from analysis.kinds.base import Presentation
from analysis.plan import Plan as ValidatedPlan
from analysis.plan import plan_from_tables
from experiments.presentation import presentation


@dataclass(frozen=True)
class Analysis:
    """One ``[[analysis]]`` table: its kind, its name and its keys (as in TOML).

    Parameters
    ----------
    kind : str
        One of the registered kinds (``summary``, ``km``, ``logrank``, ``cox``, ``ve``, ...).
    name : str
    **keys
        The kind's plan keys (docs/plans.md), e.g. ``param="OS", by="TRT01P"``.
    """

    kind: str
    name: str
    keys: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, kind: str, name: str, **keys: Any) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "keys", dict(keys))

    def table(self) -> dict[str, Any]:
        """The TOML table."""
        return {"name": self.name, "kind": self.kind, **_toml_values(self.keys)}


def _toml_values(keys: Mapping[str, Any]) -> dict[str, Any]:
    """Python values as TOML reads them (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in keys.items()}


class Plan:
    """An analysis plan built in code (validated on construction).

    Parameters
    ----------
    study : str
        ``[study] id``.
    analyses : iterable of Analysis
    title : str, optional
    sites : sequence of str, optional
        Site ids the plan expects.
    run : mapping, optional
        ``[run]`` keys (``min_sites``, ``round_timeout``, ``max_rounds``, ``tolerance``).

    Attributes
    ----------
    plan_ : analysis.plan.Plan
        The validated plan; ``sha256`` and ``to_toml()`` delegate to it.
    """

    def __init__(
        self,
        study: str,
        analyses: Iterable[Analysis],
        title: str = "",
        sites: Sequence[str] = (),
        run: Mapping[str, Any] | None = None,
    ) -> None:
        tables: dict[str, Any] = {
            "study": {"id": study, "title": title, **({"sites": list(sites)} if sites else {})},
            "analysis": [a.table() for a in analyses],
        }
        if run:
            tables["run"] = dict(run)
        self.plan_ = plan_from_tables(tables, source="<code>")

    @classmethod
    def from_toml(cls, text: str) -> ValidatedPlan:
        """A plan from TOML text (the same validation as ``trialfed run``)."""
        from analysis.plan import parse_plan

        return parse_plan(text)

    @property
    def sha256(self) -> str:
        """The content hash a site approves."""
        return self.plan_.sha256

    def to_toml(self) -> str:
        """The canonical TOML text (what ``trialfed site approve`` can be given)."""
        return self.plan_.to_toml()

    def run(self, **where: Any) -> Results:
        """Run this plan; see :func:`run`."""
        return run(self.plan_, **where)


def run(
    plan: ValidatedPlan | Plan,
    sites: Sequence[str | Path] | None = None,
    coordinator: str | None = None,
    ca: str | Path | None = None,
    progress: Any = None,
) -> Results:
    """Run ``plan`` over local site bundles (Flower's simulation engine) or a deployment.

    Parameters
    ----------
    plan : Plan or analysis.plan.Plan
    sites : sequence of path, optional
        Site bundle folders: one virtual SuperNode each.
    coordinator, ca : optional
        ``HOST:PORT`` of a deployed coordinator and its CA certificate.
    progress : callable, optional
        Receives one line per round.
    """
    validated = plan.plan_ if isinstance(plan, Plan) else plan
    from experiments.launch import build_results

    start = time.perf_counter()
    if sites is not None:
        from experiments.launch import check_bundle_paths
        from federation.simulation import run_simulated

        bundles = check_bundle_paths([Path(s) for s in sites])
        outcome = run_simulated(validated, bundles, progress=progress)
        engine = "simulation"
    elif coordinator is not None:
        from federation.deployment.control import run_deployed

        outcome = run_deployed(validated, coordinator, Path(ca) if ca else None, progress)
        engine = "deployment"
    else:
        raise ValueError("run needs sites=[bundle folders] or coordinator='HOST:PORT'")
    return Results(build_results(validated, outcome, engine, time.perf_counter() - start))


class AnalysisResult:
    """One analysis of a run: its results.json section and its tables as DataFrames."""

    def __init__(self, name: str, section: Mapping[str, Any]) -> None:
        self.name = name
        self.section = dict(section)
        self.presentation: Presentation = presentation(name, section)

    @property
    def kind(self) -> str:
        """The analysis kind."""
        return str(self.section.get("kind"))

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table the kind declares, by table id (raw values, columns by key)."""
        return {
            t.id: pd.DataFrame([{c.key: row.get(c.key) for c in t.columns} for row in t.rows])
            for t in self.presentation.tables
        }

    @property
    def summary(self) -> pd.DataFrame:
        """The analysis's main table. A model with ``terms`` (Cox, and the Cox model behind VE):
        one row per model term (``coef``, ``se``, ``hr``, ``hr_lower``, ``hr_upper``, ``z``,
        ``p``), as lifelines' ``summary``; otherwise the kind's first table (raw values)."""
        terms = self.section.get("terms") or (self.section.get("cox") or {}).get("terms")
        if terms:
            frame = pd.DataFrame.from_dict(terms, orient="index")
            frame.index.name = "term"
            return frame
        main = next(
            (t for t in self.presentation.tables if t.id == self.name),
            self.presentation.tables[0] if self.presentation.tables else None,
        )
        if main is None:
            return pd.DataFrame()
        frame = pd.DataFrame([{c.key: row.get(c.key) for c in main.columns} for row in main.rows])
        first = main.columns[0].key if main.columns else None
        return frame.set_index(first) if first and not frame.empty else frame

    def __repr__(self) -> str:
        return f"<AnalysisResult {self.name!r} ({self.kind})>"


class Results:
    """What a run produced (the results.json document), with DataFrames and plots.

    Attributes
    ----------
    results_ : dict
        The results.json document.
    """

    def __init__(self, results: Mapping[str, Any]) -> None:
        self.results_ = dict(results)

    def __getitem__(self, name: str) -> AnalysisResult:
        return AnalysisResult(name, self.results_["analyses"][name])

    def _first(self, kind: str) -> AnalysisResult:
        for name, section in self.results_["analyses"].items():
            if section.get("kind") == kind:
                return AnalysisResult(name, section)
        raise KeyError(f"the plan has no analysis of kind {kind!r}")

    @property
    def analyses(self) -> list[str]:
        """Analysis names, in plan order."""
        return list(self.results_["analyses"])

    @property
    def summary(self) -> pd.DataFrame:
        """Table 1 of the first ``summary`` analysis: one column per group and ``Overall``;
        rows ``n``, ``age_mean``, ``age_sd``, ``sex: <level>``, ``events: <PARAMCD>`` and
        ``censored: <PARAMCD>``."""
        section = self._first("summary").section
        groups = {**(section.get("groups") or {}), "Overall": section.get("overall") or {}}
        columns: dict[str, dict[str, Any]] = {}
        for group, values in groups.items():
            column: dict[str, Any] = {k: values.get(k) for k in ("n", "age_mean", "age_sd")}
            for part in ("sex", "events", "censored"):
                for level, count in (values.get(part) or {}).items():
                    column[f"{part}: {level}"] = count
            columns[group] = column
        return pd.DataFrame(columns)

    @property
    def km(self) -> pd.DataFrame:
        """The curves of the first ``km`` analysis: one row per group and time."""
        result = self._first("km")
        return result.tables[result.name]

    @property
    def cox(self) -> AnalysisResult:
        """The first ``cox`` analysis (``.summary``: one row per term)."""
        return self._first("cox")

    def plot_km(self, name: str | None = None) -> Any:
        """The Kaplan–Meier figure of analysis ``name`` (default the first); its axes."""
        from experiments.plots import plot_km
        from experiments.presentation import locale_for

        result = self[name] if name else self._first("km")
        loc = locale_for(self.results_)
        shown = presentation(result.name, result.section, loc)
        spec = next(f for f in shown.figures if f.type == "km")
        return plot_km(spec).axes[0]

    def plot_forest(self) -> Any:
        """The forest plot of the treatment effects the analyses declare; its axes (or None
        when fewer than two estimates are declared)."""
        from experiments.plots import plot_forest
        from experiments.presentation import locale_for, presentations

        loc = locale_for(self.results_)
        specs = [
            f
            for shown in presentations(self.results_, loc).values()
            for f in shown.figures
            if f.type == "forest"
        ]
        figure = plot_forest(specs, loc) if specs else None
        return None if figure is None else figure.axes[0]

    def to_json(self) -> str:
        """The results.json text."""
        return json.dumps(json_safe(self.results_), indent=2, allow_nan=False)

    def __repr__(self) -> str:
        study = self.results_.get("study", {}).get("id")
        return f"<Results {study}: {', '.join(self.analyses)}>"
