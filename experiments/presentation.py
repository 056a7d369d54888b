"""Every analysis of a results.json rendered from its kind's declaration (no ``if kind``).

:func:`presentations` asks each analysis's kind (:mod:`analysis.kinds`) for its
:class:`~analysis.kinds.base.Presentation`, worded in the report's :class:`Locale`
(:func:`locale_for`); an analysis the sites refused gets a generic one. :func:`primary` picks the
headline. The console, report, plots and MLflow code render these.
"""

from __future__ import annotations

import inspect
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from analysis.kinds import REGISTRY
from analysis.kinds.base import Column, Effect, Presentation, Table
from analysis.kinds.format import LANGUAGES, Locale, split_param_label


def language(results: Mapping[str, Any], lang: str | None = None) -> str:
    """The report language: ``lang``, else the plan's ``[study] language``, else English."""
    chosen = lang or (results.get("study") or {}).get("language") or "en"
    if chosen not in LANGUAGES:
        raise ValueError(f"lang must be one of {set(LANGUAGES)}; got {chosen!r}")
    return str(chosen)


def _params(results: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """PARAMCD -> (label, unit) from what the sites report of their ADaM (``PARAM``,
    ``AVALU``), the unit read from a label like ``Overall survival (days)`` when not given."""
    found: dict[str, tuple[str, str]] = {}
    sources = [results.get("params") or {}]
    sources += [s.get("params") or {} for s in results.get("sites", []) if isinstance(s, Mapping)]
    for source in sources:
        for code, info in source.items():
            if not isinstance(info, Mapping) or code in found or not info.get("label"):
                continue
            label, unit = split_param_label(str(info["label"]))
            found[code] = (label, str(info.get("unit") or unit).lower())
    return found


def _references(results: Mapping[str, Any]) -> dict[str, str]:
    """Variable -> reference level from the plan's ``reference`` tables (first one wins)."""
    refs: dict[str, str] = {}
    for table in (results.get("plan") or {}).get("analysis", []):
        reference = table.get("reference") if isinstance(table, Mapping) else None
        if isinstance(reference, Mapping):
            for var, level in reference.items():
                refs.setdefault(str(var), str(level))
    return refs


def locale_for(results: Mapping[str, Any], lang: str | None = None) -> Locale:
    """The words of a results.json document in ``lang`` (see :func:`language`)."""
    study = results.get("study") or {}
    return Locale(
        lang=language(results, lang),
        params=_params(results),
        references=_references(results),
        sites={
            str(s["id"]): str(s["name"])
            for s in results.get("sites", [])
            if isinstance(s, Mapping) and s.get("id") and s.get("name")
        },
        time_unit=str(study.get("time_unit") or ""),
    )


def presentation(name: str, result: Mapping[str, Any], loc: Locale | None = None) -> Presentation:
    """The presentation of one results.json analysis."""
    loc = loc or Locale()
    if result.get("refused"):
        return refused(name, result, loc)
    kind = REGISTRY.get(str(result.get("kind")))
    if kind is None:
        return Presentation(heading=f"analysis of unknown kind {result.get('kind')!r}")
    if _takes_locale(kind.present):
        return kind.present(name, result, loc)
    return kind.present(name, result)  # a kind that words itself in English only


def _takes_locale(present: Any) -> bool:
    """The kind's bound ``present`` accepts the report's locale (``present(name, result,
    locale)``)."""
    return len(inspect.signature(present).parameters) >= 3


def presentations(results: Mapping[str, Any], loc: Locale | None = None) -> dict[str, Presentation]:
    """Analysis name -> presentation, in plan order."""
    loc = loc or locale_for(results)
    return {name: presentation(name, a, loc) for name, a in results.get("analyses", {}).items()}


@dataclass(frozen=True)
class Headline:
    """The primary analysis and its effects; ``chosen`` is False when the plan named none and
    the heaviest effect was taken (:attr:`analysis.kinds.base.Effect.weight`)."""

    analysis: str
    shown: Presentation
    effects: tuple[Effect, ...]
    chosen: bool


def primary(results: Mapping[str, Any], shown: Mapping[str, Presentation]) -> Headline | None:
    """The headline: the plan's ``[study] primary`` analysis, else the first analysis with the
    heaviest treatment effect; None when no analysis estimates one."""
    named = str((results.get("study") or {}).get("primary") or "")
    if named in shown and shown[named].effects:
        return Headline(named, shown[named], shown[named].effects, True)
    best: tuple[int, str] | None = None
    for name, item in shown.items():
        weight = max((e.weight for e in item.effects), default=0)
        if weight and (best is None or weight > best[0]):
            best = (weight, name)
    if best is None:
        return None
    return Headline(best[1], shown[best[1]], shown[best[1]].effects, False)


def effect_text(effect: Effect, loc: Locale, method: bool = False) -> str:
    """``Hazard ratio, Vaccine vs Placebo: 0.25 (95% CI 0.17, 0.37); p < 0.001`` (with the
    model in parentheses when ``method``)."""
    if effect.measure == "p" or (effect.value is None and effect.p is not None):
        text = loc.t("effect_p", label=effect.label, p=loc.p(effect.p))
    else:
        bounds = loc.fmt([effect.lower, effect.upper], f"{effect.format}_ci")[1:-1]
        text = loc.t(
            "effect",
            label=effect.label,
            value=loc.fmt(effect.value, effect.format),
            ci=loc.t("ci", conf=effect.conf),
            bounds=bounds,
            p=loc.p(effect.p),
        )
    if method and effect.method:
        return loc.t("effect_method", text=text, method=effect.method)
    return text


def notation(shown: Mapping[str, Presentation], loc: Locale) -> str:
    """The abbreviations footnote (VE only where an analysis reports vaccine efficacy)."""
    text = loc.t("report.notation")
    if any(e.measure == "ve" for item in shown.values() for e in item.effects):
        text += " " + loc.t("report.notation_ve")
    return text


def refused(name: str, result: Mapping[str, Any], loc: Locale | None = None) -> Presentation:
    """An analysis too few sites answered: who refused, by which rule."""
    loc = loc or Locale()
    rows = tuple(
        {"site": r.get("site"), "rule": r.get("rule"), "message": r.get("message")}
        for r in result.get("refusals", [])
    )
    table = Table(
        f"{name}_refusals",
        loc.t("refused.table"),
        (
            Column("site", loc.t("col.site")),
            Column("rule", loc.t("col.rule")),
            Column("message", loc.t("col.reason")),
        ),
        rows,
    )
    return Presentation(
        heading=loc.t("refused.heading", message=result.get("message", "")),
        tables=(table,),
        params={"kind": result.get("kind"), "refused": True},
    )


def cells(table: Table, loc: Locale | None = None) -> list[list[str]]:
    """The table's rows as formatted strings, one list per row."""
    loc = loc or Locale()
    return [[loc.fmt(row.get(c.key), c.format) for c in table.columns] for row in table.rows]


def width(text: str) -> int:
    """Terminal columns of ``text`` (East Asian wide and full-width characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, size: int, left: bool) -> str:
    fill = " " * max(size - width(text), 0)
    return text + fill if left else fill + text


def text_table(table: Table, indent: str = "  ", loc: Locale | None = None) -> list[str]:
    """A fixed-width text rendering (console), aligned for CJK text too."""
    loc = loc or Locale()
    header = [c.label for c in table.columns]
    body = cells(table, loc)
    widths = [max([width(h), *(width(r[i]) for r in body)]) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        parts = [_pad(v, w, i == 0) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return indent + "  ".join(parts).rstrip()

    out = [indent + table.title] if table.title else []
    out += [line(header)] + [line(r) for r in body]
    out += [f"{indent}{n}" for n in table.notes]
    return out
