"""Controlled terminology of a study: the levels its categorical variables may take.

The study declares the levels it expects for its categorical variables; by default the CDISC
controlled terminology for ``SEX``, ``RACE``, ``ETHNIC`` and ``COUNTRY`` (:data:`CDISC_LEVELS`),
which an analysis plan may replace or extend with a ``[levels]`` table
(:func:`parse_study_levels`). In round 1 the coordinator compares the level sets that the plan's
variables have at each site (level names, not patient data) with :func:`compare_level_sets`, and
stops before any analysis when a site holds a level the study does not know, or when sites write
one level in different ways.

Every comparison is made after Unicode NFKC normalisation (:func:`nfkc`): full-width letters,
half-width katakana and the ideographic space compare as their ordinary forms. ``COUNTRY`` is
compared as the ISO 3166-1 country it names, so ``JP`` and ``JPN`` are one level.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from analysis.iso3166 import ALPHA2_TO_ALPHA3, COUNTRIES

SEX_LEVELS = ("F", "M", "U", "UNDIFFERENTIATED")
"""CDISC codelist C66731 (Sex)."""
RACE_LEVELS = (
    "AMERICAN INDIAN OR ALASKA NATIVE",
    "ASIAN",
    "BLACK OR AFRICAN AMERICAN",
    "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER",
    "WHITE",
    "MULTIPLE",
    "OTHER",
    "NOT REPORTED",
    "UNKNOWN",
)
"""CDISC codelist C74457 (Race) with the SDTMIG's ``MULTIPLE`` and ``OTHER``."""
ETHNIC_LEVELS = ("HISPANIC OR LATINO", "NOT HISPANIC OR LATINO", "NOT REPORTED", "UNKNOWN")
"""CDISC codelist C66790 (Ethnic Group)."""
COUNTRY_LEVELS = tuple(sorted(COUNTRIES))
"""CDISC codelist C66729 (Country): every ISO 3166-1 alpha-3 code."""

CDISC_LEVELS: Mapping[str, tuple[str, ...]] = {
    "SEX": SEX_LEVELS,
    "RACE": RACE_LEVELS,
    "ETHNIC": ETHNIC_LEVELS,
    "COUNTRY": COUNTRY_LEVELS,
}
"""The study levels used when a plan declares none for these variables."""

MISSING_LEVEL = ""
"""A missing value (its own group, as everywhere in trialfed); never outside the study levels."""
SHOWN_LEVELS = 12
"""Longer level lists are abbreviated in messages."""
_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")
_SPACES = re.compile(r"\s+")


def nfkc(value: str) -> str:
    """``value`` in Unicode normalisation form NFKC (``ＡＳＩＡＮ`` -> ``ASIAN``)."""
    return unicodedata.normalize("NFKC", value)


def level_key(value: str) -> str:
    """What two spellings of one level share: NFKC, case folded, whitespace collapsed."""
    return _SPACES.sub(" ", nfkc(value).casefold()).strip()


def country_alpha3(code: str) -> str | None:
    """The ISO 3166-1 alpha-3 code of an alpha-2 or alpha-3 ``code``; ``None`` if it is neither."""
    if code in COUNTRIES:
        return code
    return ALPHA2_TO_ALPHA3.get(code)


def default_study_levels() -> dict[str, tuple[str, ...]]:
    """The levels a study expects when its plan declares none: :data:`CDISC_LEVELS`."""
    return dict(CDISC_LEVELS)


def parse_study_levels(table: Any, problems: list[str]) -> dict[str, tuple[str, ...]]:
    """The study's levels from a plan's ``[levels]`` table, over the CDISC defaults.

    Parameters
    ----------
    table : Any
        The parsed ``[levels]`` table (``{"RACE": ["ASIAN", "WHITE"], ...}``), or ``None`` when
        the plan has none. A variable listed replaces its default; others are added.
    problems : list of str
        Each problem found is appended, naming the key and the value received.

    Returns
    -------
    dict of str to tuple of str
        Variable -> its levels, each NFKC-normalised, in the order written.
    """
    levels = default_study_levels()
    if table is None:
        return levels
    if not isinstance(table, dict):
        problems.append(f"[levels] must be a table of VARIABLE = [levels]; got {table!r}")
        return levels
    for name, values in table.items():
        if not _VARIABLE.fullmatch(name):
            problems.append(
                f"[levels] variable names are upper-case ADaM names (letters, digits, '_'); "
                f"got {name!r}"
            )
            continue
        parsed = _parse_levels(name, values, problems)
        if parsed is not None:
            levels[name] = parsed
    return levels


def _parse_levels(name: str, values: Any, problems: list[str]) -> tuple[str, ...] | None:
    where = f"[levels] {name}"
    if not isinstance(values, list) or not values:
        problems.append(f"{where} must be a non-empty list of strings; got {values!r}")
        return None
    bad = [v for v in values if not isinstance(v, str) or not nfkc(v).strip()]
    if bad:
        problems.append(f"{where}: every level must be a non-empty string; got {bad[0]!r}")
        return None
    parsed = tuple(nfkc(v).strip() for v in values)
    seen: dict[str, str] = {}
    for written, level in zip(values, parsed, strict=True):
        if level_key(level) in seen:
            problems.append(
                f"{where}: {written!r} repeats {seen[level_key(level)]!r} (levels are compared "
                "after NFKC normalisation and case folding)"
            )
            return None
        seen[level_key(level)] = written
    return parsed


def compare_level_sets(
    per_site: Mapping[str, Mapping[str, Iterable[str]]],
    expected: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Problems with the level sets that the plan's variables have at each site.

    Parameters
    ----------
    per_site : mapping of str to mapping of str to iterable of str
        Site id -> variable -> the distinct values the variable takes there (after the site's
        terminology mapping); what :func:`sites.terminology.site_level_sets` returns.
    expected : mapping of str to sequence of str, optional
        The study's levels (:func:`parse_study_levels`); ``None`` means :data:`CDISC_LEVELS`.

    Returns
    -------
    list of str
        One problem per site and variable with values outside the study's levels (naming the
        site, the variable and the values), and one per variable without study levels whose
        sites write one level in different ways (``Placebo``/``PLACEBO``). Empty when the level
        sets agree. A missing value (``""``) is never a problem.
    """
    study = default_study_levels() if expected is None else dict(expected)
    problems: list[str] = []
    variables = sorted({v for levels in per_site.values() for v in levels})
    for variable in variables:
        if variable in study:
            for site in sorted(per_site):
                values = per_site[site].get(variable)
                if values is not None:
                    problems += _outside(site, variable, values, study[variable])
        else:
            problems += _spellings(variable, per_site)
    return problems


def outside_levels(variable: str, values: Iterable[str], levels: Sequence[str]) -> list[str]:
    """The values (NFKC-normalised) that are not among ``levels``, sorted; ``""`` never is.

    ``COUNTRY`` values count as the country they name (``JP`` is ``JPN``).
    """
    known = {nfkc(level) for level in levels}
    out = set()
    for value in values:
        written = nfkc(value)
        if written == MISSING_LEVEL or written in known:
            continue
        if variable == "COUNTRY" and country_alpha3(written) in known:
            continue
        out.add(written)
    return sorted(out)


def show_levels(levels: Sequence[str]) -> str:
    """Levels as listed in messages, abbreviated past :data:`SHOWN_LEVELS`."""
    if tuple(levels) == COUNTRY_LEVELS:
        return f"the {len(levels)} ISO 3166-1 alpha-3 country codes (e.g. 'JPN', 'KOR')"
    shown = ", ".join(repr(v) for v in levels[:SHOWN_LEVELS])
    more = f", ... ({len(levels)} levels)" if len(levels) > SHOWN_LEVELS else ""
    return shown + more


def suggestion(value: str, levels: Sequence[str]) -> str:
    """`` (the study writes 'ASIAN')`` when ``value`` differs from a level only in case or width."""
    key = level_key(value)
    for level in levels:
        if level_key(level) == key:
            return f" (the study writes {level!r})"
    return ""


def _outside(site: str, variable: str, values: Iterable[str], levels: Sequence[str]) -> list[str]:
    unknown = outside_levels(variable, values, levels)
    if not unknown:
        return []
    shown = ", ".join(f"{v!r}{suggestion(v, levels)}" for v in unknown)
    return [
        f"site {site}: {variable} has value(s) outside the study's levels: {shown}; the study's "
        f"levels are {show_levels(levels)}. Map the site's local values to them in its "
        "terminology.toml, or declare the levels in the plan's [levels] table"
    ]


def _spellings(variable: str, per_site: Mapping[str, Mapping[str, Iterable[str]]]) -> list[str]:
    """Levels of ``variable`` written differently at different sites (case, width, spaces)."""
    written: dict[str, dict[str, set[str]]] = {}  # key -> spelling -> sites
    for site, variables in per_site.items():
        for value in variables.get(variable, ()):
            spelling = nfkc(value)
            if spelling != MISSING_LEVEL:
                written.setdefault(level_key(spelling), {}).setdefault(spelling, set()).add(site)
    problems = []
    for _, spellings in sorted(written.items()):
        if len(spellings) > 1:
            shown = " and ".join(
                f"{s!r} ({', '.join(sorted(sites))})" for s, sites in sorted(spellings.items())
            )
            problems.append(
                f"{variable}: one level is written {shown}; the sites must write it the same way "
                "(map it in their terminology.toml, or declare the levels in the plan's "
                "[levels] table)"
            )
    return problems
