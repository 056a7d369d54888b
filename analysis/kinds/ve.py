"""``kind = "ve"``: vaccine efficacy (1 - HR) of an arm, overall, by country and by site.

Models (see :mod:`analysis.kinds.cox_model`): the arm model, one copy per country, and the
arm-by-country interaction model when the federation spans two countries or more. The per-site
estimates of the forest plot are the sites' own round-1 fits, present only for sites whose policy
publishes them (``publish_site_estimates``; the site decides, before anything leaves it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from analysis.cox_result import pseudo_inverse
from analysis.distributions import normal_quantile
from analysis.kinds.base import (
    ALPHA,
    PARAM,
    TIES_KEY,
    AnalysisSpec,
    Column,
    Effect,
    Figure,
    Kind,
    Metric,
    Presentation,
    Table,
    bool_key,
    names_key,
    reference_key,
    register,
    text_key,
)
from analysis.kinds.context import EstimateContext, FittedModel
from analysis.kinds.cox import (
    cox_metrics,
    cox_section,
    forest_hr,
    model_line,
    present_cox,
)
from analysis.kinds.cox_model import CoxModelDef, arm_models
from analysis.kinds.format import Locale
from analysis.kinds.wording import conf_level, resolve, site_rows

MAX_FOREST_SITES = 40
"""Per-site rows in the forest plot at most; with more sites the report's table lists them."""


@dataclass(frozen=True)
class VEAnalysis(AnalysisSpec):
    """Efficacy of ``treatment`` against the reference level of ``arm`` on ``param``."""

    param: str = ""
    arm: str = "TRT01P"
    reference: tuple[tuple[str, str], ...] = ()
    treatment: str = ""
    covariates: tuple[str, ...] = ()
    strata: tuple[str, ...] = ()
    ties: str = "efron"
    by_country: bool = True
    alpha: float = 0.05

    kind: ClassVar[str] = "ve"

    @property
    def reference_map(self) -> dict[str, str]:
        """The reference levels as a dict."""
        return dict(self.reference)


@register
class VEKind(Kind):
    """Vaccine efficacy."""

    name = "ve"
    title = "Vaccine efficacy"
    spec = VEAnalysis
    keys = {
        "param": PARAM,
        "arm": text_key("ADSL arm variable (default TRT01P)"),
        "reference": reference_key("reference level of the arm (and other covariates)", True),
        "treatment": text_key("the arm level whose efficacy is estimated"),
        "covariates": names_key("adjustment covariates"),
        "strata": names_key("SITE, COUNTRY or ADSL variables"),
        "ties": TIES_KEY,
        "by_country": bool_key("per-country estimates and the interaction test (default true)"),
        "alpha": ALPHA,
    }

    def check(self, values: dict[str, Any], where: str, problems: list[str]) -> None:
        arm = values.get("arm", "TRT01P")
        if "reference" in values and arm not in dict(values["reference"]):
            problems.append(
                f"{where}: reference must name the reference level of the arm variable {arm!r}, "
                f'e.g. reference = {{ {arm} = "Placebo" }}; got {dict(values["reference"])!r}'
            )

    def grouping(self, spec: VEAnalysis) -> tuple[str, ...]:
        return (spec.arm, *spec.strata)

    def covariates(self, spec: VEAnalysis) -> tuple[str, ...]:
        return (spec.arm, *[c for c in spec.covariates if c != spec.arm])

    def cox_models(self, spec: VEAnalysis) -> list[CoxModelDef]:
        return arm_models(
            spec.name,
            self.name,
            spec.param,
            spec.arm,
            spec.covariates,
            spec.reference,
            spec.strata,
            spec.ties,
            spec.by_country,
        )

    def estimate(self, spec: VEAnalysis, context: EstimateContext) -> dict[str, Any]:
        main = context.models[spec.name]
        cox = {**cox_section(main), "alpha": spec.alpha}
        treatment, note = _treatment(spec, main)
        if note:
            cox["message"] = note
        term = f"{spec.arm}[T.{treatment}]"
        out: dict[str, Any] = {
            "kind": self.name,
            "param": spec.param,
            "arm": spec.arm,
            "reference": spec.reference_map[spec.arm],
            "treatment": treatment,
            **efficacy(cox, term),
            "cox": cox,
            "by_country": {},
            "interaction_p": None,
        }
        for model in context.models.values():
            definition = model.definition
            if definition.analysis != spec.name:
                continue
            if definition.role == "country" and definition.country is not None:
                country = cox_section(model)
                out["by_country"][definition.country] = {
                    **efficacy(country, term),
                    "n": country.get("n"),
                    "events": country.get("events"),
                    "converged": country.get("converged"),
                }
            elif definition.role == "interaction" and model.result is not None:
                names = [t for t in model.result.terms if t.startswith(f"{term}:")]
                if names and model.result.converged:
                    out["interaction_p"] = model.result.wald_test(names)[2]
                out["interaction"] = {**model.result.to_dict(), "tested_terms": names}
        out["by_site"] = _by_site(main, term, spec.alpha, context.sites)
        return out

    def present(self, name: str, result: Mapping[str, Any], locale: Any = None) -> Presentation:
        loc = resolve(locale)
        arm = str(result.get("arm") or "TRT01P")
        if result.get("reference") is not None:  # the arm's reference names the comparison
            loc = replace(loc, references={**loc.references, arm: str(result["reference"])})
        cox = result.get("cox") or {}
        conf = conf_level(cox.get("alpha", result.get("alpha", 0.05)))
        vaccine = result.get("measure", "ve") != "hr"  # proposed plan key: measure = "ve" | "hr"
        comparison = loc.term(f"{arm}[T.{result.get('treatment')}]")
        param = loc.param(str(result.get("param") or ""))
        heading = loc.t(
            "ve.heading" if vaccine else "ve.hr_heading", param=param, comparison=comparison
        )
        base = present_cox(name, cox, loc.t("ve.model"), loc, f"{name}_cox", forest=False)
        rows = _subgroups(loc, result, cox)
        columns = [
            Column("group", loc.t("ve.subgroup")),
            Column("n", loc.t("n"), "int"),
            Column("events", loc.t("events"), "int"),
        ]
        if vaccine:
            columns.append(Column("ve", loc.t("ve.ve_ci", conf=conf), "est_pct"))
        columns += [
            Column("hr", loc.t("cox.hr_ci", conf=conf), "est_hr"),
            Column("p", loc.t("p"), "p"),
        ]
        notes = [loc.t("ve.definition", comparison=comparison, model=model_line(loc, cox, True))]
        if result.get("by_country"):
            notes.append(loc.t("ve.interaction", p=loc.p(result.get("interaction_p"))))
        if result.get("by_site"):
            notes.append(loc.t("ve.site_note"))
        table = Table(
            name,
            heading,
            tuple(columns),
            tuple({"group": label, **values} for label, values in rows),
            tuple(notes),
        )
        effects = [
            Effect(
                loc.t("cox.effect", comparison=comparison),
                "hr",
                result.get("hr"),
                result.get("hr_lower"),
                result.get("hr_upper"),
                result.get("p"),
                "hr",
                conf,
                3,
                comparison,
                loc.t("method.cox", model=model_line(loc, cox, short=True)),
            )
        ]
        if vaccine:
            effects.insert(
                0,
                Effect(
                    loc.t("ve.effect", comparison=comparison),
                    "ve",
                    result.get("ve"),
                    result.get("lower"),
                    result.get("upper"),
                    result.get("p"),
                    "pct",
                    conf,
                    3,
                    comparison,
                    loc.t("method.cox", model=model_line(loc, cox, short=True)),
                ),
            )
        return Presentation(
            heading=heading,
            lines=base.lines,
            tables=(table, *base.tables),
            figures=(_forest(loc, heading, rows, vaccine, conf, comparison, result), *base.figures),
            metrics=tuple(_metrics(result, cox)),
            params={
                "kind": self.name,
                "param": result.get("param"),
                "arm": result.get("arm"),
                "reference": result.get("reference"),
                "treatment": result.get("treatment"),
            },
            effects=tuple(effects),
        )


_HR_KEYS = ("hr", "hr_lower", "hr_upper", "p")


def _metrics(result: Mapping[str, Any], cox: Mapping[str, Any]) -> list[Metric]:
    metrics = [
        Metric(("ve",), result.get("ve"), headline=True, label="VE"),
        Metric(("ve_lower",), result.get("lower"), headline=True),
        Metric(("ve_upper",), result.get("upper"), headline=True),
        *(Metric((key,), result.get(key), headline=key == "p") for key in _HR_KEYS),
        Metric(("interaction_p",), result.get("interaction_p"), headline=True),
    ]
    for country, c in (result.get("by_country") or {}).items():
        for key in (*_HR_KEYS[:3], "ve", "lower", "upper", "n", "events"):
            metrics.append(Metric(("country", country, key), c.get(key)))
    return metrics + cox_metrics(cox, ("cox",))


def _cells(values: Mapping[str, Any]) -> dict[str, Any]:
    """VE and HR cells of a subgroup; a site's VE is 1 - its own HR."""
    hr = [values.get("hr"), values.get("hr_lower"), values.get("hr_upper")]
    if "ve" in values:
        ve = [values.get("ve"), values.get("lower"), values.get("upper")]
    else:
        ve = [None if h is None else 1.0 - h for h in (hr[0], hr[2], hr[1])]
    return {"ve": ve, "hr": hr, "p": values.get("p")}


def _subgroups(
    loc: Locale, result: Mapping[str, Any], cox: Mapping[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """(label, cells) of the overall estimate, each country and each publishing site."""
    rows = [
        (
            loc.t("overall"),
            {"n": cox.get("n"), "events": cox.get("events"), "level": 0, **_cells(result)},
        )
    ]
    for country, c in (result.get("by_country") or {}).items():
        cells = {"n": c.get("n"), "events": c.get("events"), "level": 1, **_cells(c)}
        rows.append((loc.level("COUNTRY", country), cells))
    for label, c in site_rows(loc, result.get("by_site") or {}):
        rows.append((label, {"n": c.get("n"), "events": c.get("events"), "level": 2, **_cells(c)}))
    return rows


def _forest(
    loc: Locale,
    heading: str,
    rows: list[tuple[str, dict[str, Any]]],
    vaccine: bool,
    conf: int,
    comparison: str,
    result: Mapping[str, Any],
) -> Figure:
    """Treatment effect overall, per country and per publishing site (VE in vaccine trials)."""
    sites = [r for r in rows if r[1]["level"] == 2]
    shown = [r for r in rows if r[1]["level"] < 2]
    if len(sites) <= MAX_FOREST_SITES:  # a row per site would be unreadable beyond that
        shown += sites
    out: list[dict[str, Any]] = [{"label": heading, "header": True}]
    for label, c in shown:
        values = c["ve"] if vaccine else c["hr"]
        out.append(
            {
                "label": label,
                "indent": c["level"],
                "hr": values[0],
                "lower": values[1],
                "upper": values[2],
                "n": c.get("n"),
                "events": c.get("events"),
                "p": c.get("p"),
            }
        )
    if len(sites) > MAX_FOREST_SITES:
        out.append({"label": loc.t("ve.many_sites", n=len(sites)), "header": True})
    notes = []
    if result.get("by_country"):
        notes.append(loc.t("ve.interaction", p=loc.p(result.get("interaction_p"))))
    if not vaccine:
        figure = forest_hr(loc, heading, result.get("cox") or {}, out[1:])
        return replace(figure, data={**figure.data, "notes": notes})
    return Figure(
        "forest_ve",
        "forest",
        loc.t("forest.title_ve", conf=conf),
        {
            "scale": "ve",
            "axis": loc.t("forest.axis_ve"),
            "favours": [],
            "columns": [loc.t("forest.n_events"), loc.t("forest.ve_col", conf=conf), loc.t("p")],
            "rows": out,
            "notes": notes,
            "comparison": comparison,
        },
    )


def _treatment(spec: VEAnalysis, main: FittedModel) -> tuple[str, str]:
    """The treated arm level and a note when it cannot be determined."""
    levels = main.levels.get(spec.arm, ())
    treated = list(levels[1:])
    treatment = spec.treatment or (treated[0] if len(treated) == 1 else "")
    if treatment and treatment in treated:
        return treatment, ""
    found = ", ".join(map(repr, treated)) or "none"
    return treatment, (
        f"treatment must be one of the arm's non-reference levels {{{found}}}; got "
        f"{treatment or 'nothing'}: set `treatment` in the plan"
    )


def efficacy(cox: Mapping[str, Any], term: str) -> dict[str, Any]:
    """VE = 1 - HR of ``term`` with its interval, from a Cox results section."""
    row = (cox.get("terms") or {}).get(term)
    if row is None or row.get("hr") is None:
        return dict.fromkeys(("ve", "lower", "upper", "hr", "hr_lower", "hr_upper", "p"))
    return {
        "ve": 1.0 - row["hr"],
        "lower": None if row["hr_upper"] is None else 1.0 - row["hr_upper"],
        "upper": None if row["hr_lower"] is None else 1.0 - row["hr_lower"],
        "hr": row["hr"],
        "hr_lower": row["hr_lower"],
        "hr_upper": row["hr_upper"],
        "p": row["p"],
    }


def _by_site(
    main: FittedModel, term: str, alpha: float, sites: tuple[Mapping[str, Any], ...]
) -> dict[str, Any]:
    """Each publishing site's own estimate of the arm effect (its round-1 local fit)."""
    z = normal_quantile(1 - alpha / 2)
    out: dict[str, Any] = {}
    for site in sites:
        fit = main.local_fits.get(site["id"])
        if fit is None or term not in fit.terms:
            continue
        i = fit.terms.index(term)
        variance = pseudo_inverse(fit.information)[i, i]
        entry: dict[str, Any] = {"n": fit.n, "events": fit.events, "country": site.get("country")}
        if not variance > 0 or fit.events == 0:
            out[site["id"]] = {**dict.fromkeys(("hr", "hr_lower", "hr_upper")), **entry}
            continue
        coef, se = float(fit.beta[i]), float(np.sqrt(variance))
        out[site["id"]] = {
            "hr": float(np.exp(coef)),
            "hr_lower": float(np.exp(coef - z * se)),
            "hr_upper": float(np.exp(coef + z * se)),
            **entry,
        }
    return out
