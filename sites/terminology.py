"""A site's local terminology: the ``terminology.toml`` mapping and the checks on levels.

When a bundle is loaded (:func:`sites.bundle.load_bundle`):

1. the reading rules put every categorical text column (a text column that is not an identifier
   or code, :func:`sites.normalise.is_code`) in Unicode NFKC form, so ``ＡＳＩＡＮ`` reads
   ``ASIAN`` and ``ｱｼﾞｱ人`` reads ``アジア人``;
2. the site's ``terminology.toml`` (optional, in the bundle folder) maps local values to the
   study's levels, one table per variable::

       [SEX]
       "男" = "M"
       "女" = "F"

       [RACE]
       "アジア人" = "ASIAN"

   Keys and values are NFKC-normalised too; a value the file does not list is kept as it is.

Identifiers and codes (``USUBJID``, ``SITEID``, ``PARAMCD``, ``COUNTRY``, dates) are never
changed: :func:`width_warnings` reports those whose NFKC form differs (full-width letters, the
ideographic space, half-width katakana, decomposed characters) with row and column.
:func:`level_warnings` reports values outside the study's levels with their counts, and
:func:`site_level_sets` gives the coordinator the level sets it compares in round 1.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from analysis.terminology import (
    level_key,
    nfkc,
    outside_levels,
    show_levels,
    suggestion,
)
from sites.check import MAX_LINES_PER_RULE, by_value
from sites.normalise import ASCII_COLUMNS, is_code


class BundleLike(Protocol):
    """What :func:`site_level_sets` reads of a :class:`sites.bundle.SiteBundle` (which imports
    this module, so it is not imported here)."""

    @property
    def site_id(self) -> str: ...

    @property
    def country(self) -> str: ...

    @property
    def adsl(self) -> pd.DataFrame: ...


TERMINOLOGY_FILE = "terminology.toml"
"""The optional mapping of local values to study levels, in the bundle folder."""
_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")
Terms = dict[str, dict[str, str]]
"""Variable -> local value -> study level."""


def read_terminology(path: Path) -> tuple[Terms, list[str]]:
    """Parse ``terminology.toml``; return ``{VARIABLE: {local: study level}}`` and its problems.

    A missing file is an empty mapping. Keys and values are NFKC-normalised.
    """
    if not path.is_file():
        return {}, []
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return {}, [f"{path.name}: TOML syntax error (the file must be UTF-8): {exc}"]
    mapping: Terms = {}
    problems: list[str] = []
    for variable, table in document.items():
        where = f"{path.name}: [{variable}]"
        if not _VARIABLE.fullmatch(variable) or is_code(variable) and variable.endswith("ID"):
            problems.append(
                f"{where}: tables are named by an upper-case ADaM variable that is not an "
                f"identifier (e.g. [SEX], [RACE]); got {variable!r}"
            )
            continue
        if not isinstance(table, dict):
            problems.append(f'{where} must be a table of "local value" = "study level"')
            continue
        mapping[variable] = _parse_table(where, table, problems)
    return mapping, problems


def _parse_table(where: str, table: dict[str, Any], problems: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for local, level in table.items():
        if not isinstance(level, str) or not nfkc(level).strip():
            problems.append(f"{where}: {local!r} must map to a non-empty string; got {level!r}")
            continue
        key = nfkc(local).strip()
        if key in out:
            problems.append(
                f"{where}: {local!r} is listed twice (keys are compared after NFKC normalisation)"
            )
            continue
        out[key] = nfkc(level).strip()
    return out


def apply_terminology(
    frame: pd.DataFrame, mapping: Mapping[str, Mapping[str, str]]
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """``frame`` with the site's mapping applied to the columns it names.

    Values are compared in the form the reading rules left them (NFKC for categorical text,
    as written for codes); a value the mapping does not list is kept.

    Returns
    -------
    frame : DataFrame
        The table with its mapped columns replaced (``frame`` itself when nothing changed).
    mapped : dict
        Variable -> local value -> rows mapped, for the ``site check`` report.
    """
    changed: dict[str, NDArray[np.object_]] = {}
    mapped: dict[str, dict[str, int]] = {}
    for name, table in mapping.items():
        if name not in frame or frame[name].dtype != object:
            continue
        codes, uniques = pd.factorize(frame[name].to_numpy(), use_na_sentinel=False)
        counts = np.bincount(codes, minlength=len(uniques))
        final = np.empty(len(uniques), dtype=object)
        final[:] = [table.get(u, u) if isinstance(u, str) else u for u in uniques]
        hits = {u: int(counts[i]) for i, u in enumerate(uniques) if final[i] is not u}
        if hits:
            mapped[name] = hits
            changed[name] = final[codes]
    if not changed:
        return frame, mapped
    out = frame.assign(**changed)
    ascii_text = out.attrs.get(ASCII_COLUMNS)
    if ascii_text is not None:  # mapped values may not be ASCII
        out.attrs[ASCII_COLUMNS] = [n for n in ascii_text if n not in changed]
    return out, mapped


def width_warnings(frame: pd.DataFrame, file: str) -> list[str]:
    """Identifiers and codes whose NFKC form differs, with rows, column and the NFKC form."""
    warnings: list[str] = []
    known = set(frame.attrs.get(ASCII_COLUMNS, ()))  # the CSV reader saw these bytes already
    for name in frame.columns:
        cells = frame[name].to_numpy()
        if cells.dtype != object or not is_code(str(name)) or name in known or _ascii(cells):
            continue
        odd = [isinstance(c, str) and nfkc(c) != c for c in cells]
        if any(odd):
            warnings += by_value(
                frame,
                file,
                str(name),
                pd.Series(odd, index=frame.index),
                lambda v: (
                    f"{v} has full-width, half-width or combining characters (NFKC form "
                    f"{nfkc(v.strip(chr(39)))!r}); identifiers and codes are kept as written, "
                    "so other files and sites must write them the same way"
                ),
            )
    return warnings


def level_warnings(
    frame: pd.DataFrame, file: str, levels: Mapping[str, Sequence[str]], has_mapping: bool
) -> list[str]:
    """Values of variables with study levels that are outside them, with their counts.

    In a pooled analysis such a value would be a group of its own, so round 1 refuses it
    (:func:`analysis.terminology.compare_level_sets`); ``site check`` says how to map it.
    """
    warnings = []
    for variable, expected in levels.items():
        if variable not in frame or frame[variable].dtype != object:
            continue
        distinct = pd.unique(frame[variable])
        unknown = set(outside_levels(variable, (str(v) for v in distinct), expected))
        if not unknown:
            continue
        counts = frame[variable].value_counts(sort=False)
        found = sorted((v for v in counts.index if nfkc(str(v)) in unknown), key=str)
        shown = ", ".join(
            f"{v!r} ({_rows(int(counts[v]))}){suggestion(v, expected)}"
            for v in found[:MAX_LINES_PER_RULE]
        )
        more = f", and {len(found) - MAX_LINES_PER_RULE} more" if len(found) > 5 else ""
        example = f'[{variable}] "{found[0]}" = "{_closest(str(found[0]), expected)}"'
        where = "in its terminology.toml" if has_mapping else "in a terminology.toml"
        warnings.append(
            f"{file}: column {variable}: {len(found)} value(s) outside the study's levels: "
            f"{shown}{more}. The study's levels are {show_levels(expected)}; map local values "
            f"{where} (e.g. {example}), or the run stops in round 1"
        )
    return warnings


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _closest(value: str, levels: Sequence[str]) -> str:
    """The level ``value`` differs from only in case or width, else a placeholder."""
    matches = [level for level in levels if level_key(level) == level_key(value)]
    return matches[0] if matches else "<study level>"


def site_level_sets(bundle: BundleLike, variables: Iterable[str]) -> dict[str, set[str]]:
    """The distinct values each categorical variable in ``variables`` takes at this site.

    ``SITE`` and ``COUNTRY`` are the site's id and country (as in every analysis); ADSL text
    columns give their values after NFKC and the site's mapping; numeric and absent variables
    are left out. Level names are not patient data: the coordinator compares these sets
    across sites in round 1 (:func:`analysis.terminology.compare_level_sets`).
    """
    out: dict[str, set[str]] = {}
    for variable in variables:
        if variable == "SITE":
            out[variable] = {bundle.site_id}
        elif variable == "COUNTRY":
            out[variable] = {bundle.country}
        elif variable in bundle.adsl and bundle.adsl[variable].dtype == object:
            out[variable] = {str(v) for v in pd.unique(bundle.adsl[variable])}
    return out


def _ascii(cells: NDArray[Any]) -> bool:
    """True when every cell is an ASCII ``str`` (then NFKC changes nothing)."""
    try:
        return all(map(str.isascii, cells))
    except TypeError:  # a cell that is not a str
        return False
