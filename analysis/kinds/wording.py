"""Small helpers that the kinds' ``present`` methods share (words, roles, conf levels)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from analysis.kinds.format import ENGLISH, Locale, is_arm, parse_term

REFERENCE_ROLE = "reference"
TREATMENT_ROLE = "treatment"


def resolve(locale: Any) -> Locale:
    """``locale`` when it is a :class:`Locale`, else English."""
    return locale if isinstance(locale, Locale) else ENGLISH


def conf_level(alpha: Any) -> int:
    """The confidence level in percent from ``alpha`` (0.05 -> 95)."""
    try:
        return int(round(100 * (1 - float(alpha))))
    except (TypeError, ValueError):
        return 95


def join(loc: Locale, items: Iterable[str]) -> str:
    """Items joined with the language's list separator."""
    return loc.t("list_sep").join(items)


def group_label(loc: Locale, var: str, level: str) -> str:
    """A group's label: ``All subjects`` for the one-curve group, else the level's words."""
    return loc.t("all_subjects") if not var or level == "all" else loc.level(var, level)


def roles(loc: Locale, var: str, levels: Sequence[str]) -> dict[str, str]:
    """Level -> ``reference`` or ``treatment`` for an arm variable (empty when unknown), so that
    a figure draws the reference arm in one colour in every trial."""
    if not var or not levels:
        return {}
    ref = loc.reference(var, levels)
    if ref is None or ref not in levels:
        return {}
    return {lv: REFERENCE_ROLE if lv == ref else TREATMENT_ROLE for lv in levels}


def model_variables(terms: Iterable[str]) -> list[str]:
    """The variables of a model's terms, in term order (interactions split)."""
    out: list[str] = []
    for term in terms:
        for part in term.split(":"):
            var = parse_term(part)[0]
            if var not in out:
                out.append(var)
    return out


def is_treatment_term(term: str) -> bool:
    """A term of an ADaM treatment variable, not an interaction."""
    return ":" not in term and is_arm(parse_term(term)[0])


def covariate_label(loc: Locale, term: str) -> str:
    """A covariate term in words; a numeric one says per what unit its hazard ratio is."""
    var, level = parse_term(term)
    if ":" in term or level is not None:
        return loc.term(term)
    key = "cox.per_year" if var == "AGE" else "cox.per_unit"
    return loc.t(key, var=loc.var(var))


def site_rows(
    loc: Locale, by_site: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, values) per site, labelled with the site's id and country."""
    out = []
    for site, values in by_site.items():
        country = values.get("country")
        where = (
            loc.t("site_country", site=site, country=loc.level("COUNTRY", country))
            if country
            else site
        )
        out.append((loc.t("ve.site", site=where), values))
    return out
