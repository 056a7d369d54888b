"""The report's data blocks: estimand, sites and countries, analysis set, data cut-off,
endpoints, the subject flow per site, and provenance (see :mod:`experiments.report`).

What it reads from results.json, each where present: ``sites[*]`` (``id``, ``name``,
``country``, ``n``, ``events`` per endpoint, ``params`` per endpoint with ``n``, ``label``,
``unit``, and ``data_cutoff``), ``sites_missing``, ``data_cutoff``, and the analyses'
presentations (the analysis set per arm of Table 1, the primary analysis's endpoint).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from analysis.kinds import messages
from analysis.kinds.base import Presentation
from analysis.kinds.format import Locale
from analysis.kinds.wording import join


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


_NUMERIC = re.compile(r"^[<>−-]?(\d[\d,]*(\.\d+)?%?|NA|NE|NR)( |$)")


def _cell(value: Any) -> str:
    """A table cell: numbers right-aligned; leading spaces (a sub-row) as indentation."""
    text = "" if value is None else str(value)
    indent = len(text) - len(text.lstrip(" "))
    style = f" style='padding-left:{0.6 + 0.6 * indent:.1f}em'" if indent else ""
    cls = " class='num'" if _NUMERIC.match(text.strip()) else ""
    return f"<td{cls}{style}>{_e(text.strip())}</td>"


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain HTML table (values escaped)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def merged_sites(
    results: Mapping[str, Any], sites: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Every site asked, by id: the launcher's description merged with what results.json says;
    entries without an id (never a site) are ignored."""
    by_id: dict[str, dict[str, Any]] = {}
    for s in [*sites, *results.get("sites", [])]:
        if isinstance(s, Mapping) and s.get("id") is not None:
            by_id.setdefault(str(s["id"]), {}).update(s)
    for m in results.get("sites_missing", []):
        sid = str(m.get("id") if isinstance(m, Mapping) else m)
        entry = by_id.setdefault(sid, {"id": sid})
        entry.update(m if isinstance(m, Mapping) else {})
        entry["contributed"] = False
    return [by_id[k] for k in sorted(by_id)]


def missing_ids(results: Mapping[str, Any]) -> list[str]:
    """Ids of the sites that did not contribute."""
    return [
        str(m.get("id") if isinstance(m, Mapping) else m) for m in results.get("sites_missing", [])
    ]


def primary_param(results: Mapping[str, Any], shown: Mapping[str, Presentation]) -> str:
    """The endpoint of the headline analysis (else the first analysis that names one)."""
    from experiments.presentation import primary

    head = primary(results, shown)
    analyses = results.get("analyses", {})
    order = ([head.analysis] if head else []) + list(analyses)
    for name in order:
        param = (analyses.get(name) or {}).get("param")
        if not param:
            param = ((analyses.get(name) or {}).get("cox") or {}).get("param")
        if param:
            return str(param)
    return ""


def _population(shown: Mapping[str, Presentation]) -> Mapping[str, Any]:
    return next((s.population for s in shown.values() if s.population), {})


def analysis_set_text(
    results: Mapping[str, Any], shown: Mapping[str, Presentation], loc: Locale
) -> str:
    """``All subjects in the sites' ADSL, N = 3,000 (Placebo 1,500, Vaccine 1,500)``."""
    population = _population(shown)
    groups = population.get("groups") or {}
    total = population.get("total")
    if total is None:
        total = sum(int(s.get("n") or 0) for s in results.get("sites", []))
    arms = join(loc, [f"{g} {loc.fmt(n, 'int')}" for g, n in groups.items()]) or "-"
    return loc.t("report.analysis_set_text", n=loc.fmt(total, "int"), arms=arms)


def data_cutoff(results: Mapping[str, Any]) -> str | None:
    """The data cut-off (ISO date): the run's, else the latest of the sites' cut-offs."""
    if results.get("data_cutoff"):
        return str(results["data_cutoff"])
    dates = [str(s["data_cutoff"]) for s in results.get("sites", []) if s.get("data_cutoff")]
    return max(dates) if dates else None


def _measure(loc: Locale, effect: Any) -> str:
    key = f"measure.{effect.measure}"
    return loc.t(key) if messages.has(key) else effect.label


def data_section(
    results: Mapping[str, Any], shown: Mapping[str, Presentation], loc: Locale, estimand_of: Any
) -> str:
    """The estimand of the headline analysis (ICH E9(R1) attributes) as a definition list."""
    effect = estimand_of.effects[0]
    param = primary_param(results, shown)
    unit = loc.unit(param)
    variable = loc.param(param) + (f" ({unit})" if unit and loc.lang == "en" else "")
    if unit and loc.lang != "en":
        variable = f"{loc.param(param)}（{unit}）" if loc.lang == "ja" else f"{variable} ({unit})"
    rows = [
        (loc.t("estimand.population"), analysis_set_text(results, shown, loc)),
        (loc.t("estimand.variable"), variable),
        (loc.t("estimand.treatment"), effect.comparison or "-"),
        (
            loc.t("estimand.summary"),
            loc.t("estimand.summary_value", measure=_measure(loc, effect), method=effect.method)
            if effect.method
            else effect.label,
        ),
    ]
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return f"<h4>{_e(loc.t('report.estimand'))}</h4><dl>{body}</dl>"


def flow(
    results: Mapping[str, Any], sites: Sequence[Mapping[str, Any]], param: str
) -> list[dict[str, Any]]:
    """Per site: id, name, country, subjects (ADSL), analysis set, events and censored for
    ``param``, and whether it contributed."""
    missing = missing_ids(results)
    out = []
    for s in merged_sites(results, sites):
        info = (s.get("params") or {}).get(param) or {}
        analysed = info.get("n", s.get("n"))
        reported = s.get("events")  # per endpoint, or one count
        events = info.get(
            "events", reported.get(param) if isinstance(reported, Mapping) else reported
        )
        censored = (
            analysed - events if isinstance(analysed, int) and isinstance(events, int) else None
        )
        out.append(
            {
                "id": s.get("id"),
                "name": s.get("name", ""),
                "country": s.get("country") or "",
                "subjects": s.get("n"),
                "analysed": analysed,
                "events": events,
                "censored": censored,
                "contributed": s.get("contributed", True) and s.get("id") not in missing,
            }
        )
    return out


def flow_rows(
    results: Mapping[str, Any], sites: Sequence[Mapping[str, Any]], param: str, loc: Locale
) -> list[list[Any]]:
    """:func:`flow` as table cells in ``loc``."""
    return [
        [
            r["id"],
            r["name"],
            loc.level("COUNTRY", r["country"]) if r["country"] else "",
            *(loc.fmt(r[k], "int") for k in ("subjects", "analysed", "events", "censored")),
            loc.t("yes") if r["contributed"] else loc.t("no"),
        ]
        for r in flow(results, sites, param)
    ]


def _flow_boxes(rows: list[dict[str, Any]], loc: Locale) -> str:
    """Totals as a CONSORT-style chain of boxes: subjects -> analysis set -> outcome."""

    def total(key: str) -> str:
        values = [r[key] for r in rows if isinstance(r[key], int)]
        return loc.fmt(sum(values), "int") if len(values) == len(rows) and rows else "NA"

    sep = loc.t("list_sep")
    boxes = [
        f"{loc.t('flow.subjects')}: {total('subjects')} ({loc.t('col.site')}: {len(rows)})",
        f"{loc.t('flow.analysis_set')}: {total('analysed')}",
        f"{loc.t('flow.events')}: {total('events')}{sep}"
        f"{loc.t('flow.censored')}: {total('censored')}",
    ]
    arrow = "<span class='arrow'>→</span>"
    inner = arrow.join(f"<div class='box'>{_e(b)}</div>" for b in boxes)
    return f"<div class='flow'>{inner}</div>"


def sites_section(
    results: Mapping[str, Any],
    sites: Sequence[Mapping[str, Any]],
    shown: Mapping[str, Presentation],
    loc: Locale,
) -> str:
    """Sites and countries, analysis set, data cut-off, endpoints and the subject flow."""
    everyone = merged_sites(results, sites)
    countries = sorted({str(s["country"]) for s in everyone if s.get("country")})
    listed = join(loc, [f"{s['id']} {s.get('name') or ''}".strip() for s in everyone])
    cutoff = data_cutoff(results)
    codes = list(
        dict.fromkeys(str(p.params["param"]) for p in shown.values() if p.params.get("param"))
    )
    rows = [
        (
            loc.t("report.sites_countries"),
            loc.t(
                "report.sites_line",
                n=len(everyone),
                countries=join(loc, [loc.level("COUNTRY", c) for c in countries]),
                sites=listed,
            ),
        ),
        (loc.t("report.analysis_set"), analysis_set_text(results, shown, loc)),
        (loc.t("report.cutoff"), loc.date(cutoff) if cutoff else loc.t("report.cutoff_missing")),
        (
            loc.t("report.endpoints"),
            join(loc, [_endpoint(loc, c) for c in codes]),
        ),
    ]
    out = "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"
    param = primary_param(results, shown)
    out += f"<h3>{_e(loc.t('report.flow'))}</h3>"
    out += _flow_boxes(flow(results, sites, param), loc)
    header = [
        loc.t("col.site"),
        loc.t("col.name"),
        loc.t("col.country"),
        loc.t("flow.subjects"),
        loc.t("flow.analysis_set"),
        loc.t("flow.events"),
        loc.t("flow.censored"),
        loc.t("flow.contributed"),
    ]
    out += html_table(header, flow_rows(results, sites, param, loc))
    out += f"<p class='note'>{_e(loc.t('flow.note', param=loc.param(param) or '-'))}</p>"
    missing = missing_ids(results)
    if missing:
        out += (
            f"<p class='missing'>{_e(loc.t('report.sites_missing', sites=', '.join(missing)))}</p>"
        )
    return out


def _endpoint(loc: Locale, code: str) -> str:
    unit = loc.unit(code)
    label = loc.param(code)
    inner = ", ".join(x for x in (code if label != code else "", unit) if x)
    return f"{label} ({inner})" if inner else label


def provenance_rows(
    results: Mapping[str, Any], extra: Mapping[str, Any], loc: Locale, now: datetime
) -> list[tuple[str, Any]]:
    """(label, value) rows: study, plan hash, engine, MLflow run, rounds, time, ``extra``
    (keys that are message keys, e.g. ``prov.versions``, are translated)."""
    study = results.get("study", {})
    rows: list[tuple[str, Any]] = [
        (loc.t("prov.study"), study.get("id")),
        (loc.t("prov.plan_sha"), results.get("plan_sha256")),
        (loc.t("prov.engine"), results.get("engine")),
        (loc.t("prov.run_id"), results.get("mlflow_run_id") or loc.t("report.not_tracked")),
        (loc.t("prov.rounds"), results.get("rounds")),
        (loc.t("prov.seconds"), loc.fmt(results.get("seconds"), "num1")),
        (loc.t("prov.date"), now.strftime("%Y-%m-%d %H:%M:%S")),
        (loc.t("prov.language"), loc.lang),
    ]
    rows += [(loc.t(k) if messages.has(k) else k, v) for k, v in extra.items()]
    return rows
