"""Validation rules for site bundles (``trialfed site check`` prints what they find).

The rule functions take parsed tables and return lists of problems (plain strings that name the
file, the column, the 1-based data row(s) and the offending value). :func:`sites.bundle.load_bundle`
runs them all and raises one :class:`analysis.errors.UserError` listing every problem, so the same
rules guard ``trialfed site check`` and every analysis that reads a bundle.

Errors (the bundle is refused):

- ``site.toml`` missing, not TOML, without ``[site]`` or its ``id``/``name``/``country``, with a
  country that is not an ISO 3166 alpha-2 or alpha-3 code, an encoding not in
  :data:`sites.encoding.ENCODINGS`, or another key in ``[site]``;
- a missing, duplicated, empty (0 bytes), header-only or unreadable ``adsl.*``/``adtte.*`` file;
- a missing required column (:data:`ADSL_REQUIRED`, :data:`ADTTE_REQUIRED`);
- blank USUBJID, PARAMCD or TRT01P; non-numeric or negative AGE;
- AVAL missing, non-numeric, negative or infinite; CNSR other than 0 (event) or 1 (censored);
- duplicated USUBJID in ADSL, duplicated USUBJID + PARAMCD in ADTTE;
- ADTTE subjects absent from ADSL; an ADSL ``COUNTRY`` naming another country than ``site.toml``
  (``JPN`` and ``JP`` name one country).

Warnings (the bundle is accepted): an arm with fewer than :data:`MIN_ARM_SIZE` subjects, ADSL
subjects without ADTTE rows, a PARAMCD without events.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from analysis.errors import UserError
from analysis.iso3166 import COUNTRIES
from analysis.terminology import country_alpha3
from sites.encoding import ENCODINGS, canonical_encoding
from sites.normalise import parse_numbers, to_numbers

ADSL_REQUIRED = ("STUDYID", "USUBJID", "SITEID", "TRT01P", "AGE", "SEX")
"""Columns every ADSL file must have."""
ADTTE_REQUIRED = ("USUBJID", "PARAMCD", "PARAM", "AVAL", "CNSR")
"""Columns every ADTTE file must have."""
MIN_ARM_SIZE = 5
"""Arms with fewer subjects at a site get a warning."""
MAX_PROBLEMS = 20
"""At most this many problems are listed in one error message."""
MAX_LINES_PER_RULE = 5
"""At most this many lines (values, subjects) per rule and column."""
_SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CNSR_ALLOWED = "(allowed: 0 = event, 1 = censored)"


SITE_KEYS = ("id", "name", "country", "encoding")
"""Keys of ``site.toml [site]``; the first three are required."""


def check_site_table(document: dict[str, Any], file: str = "site.toml") -> list[str]:
    """Rules for the parsed ``site.toml``: ``[site]`` with id, name, country, optional encoding."""
    site = document.get("site")
    if not isinstance(site, dict):
        return [f"{file}: missing [site] table (with keys id, name, country)"]
    problems = []
    unknown = sorted(set(site) - set(SITE_KEYS))
    if unknown:
        allowed = ", ".join(repr(k) for k in SITE_KEYS)
        problems.append(f"{file}: [site] keys must be among {{{allowed}}}; got {unknown}")
    for key in ("id", "name", "country", "encoding"):
        value = site.get(key)
        if key not in site:
            if key != "encoding":
                problems.append(f"{file}: [site] is missing key {key!r}")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"{file}: [site] {key} must be a non-empty string; got {value!r}")
    site_id = site.get("id")
    if isinstance(site_id, str) and site_id.strip() and not _SITE_ID.fullmatch(site_id):
        problems.append(
            f"{file}: [site] id must be letters, digits, '_', '.' or '-'; got {site_id!r}"
        )
    country = site.get("country")
    if isinstance(country, str) and country.strip() and country_alpha3(country) is None:
        problems.append(
            f"{file}: [site] country must be an ISO 3166 country code, alpha-2 or alpha-3 in "
            f"uppercase letters (e.g. 'JP' or 'JPN', 'KR' or 'KOR'); got {country!r}"
        )
    encoding = site.get("encoding")
    if isinstance(encoding, str) and encoding.strip() and canonical_encoding(encoding) is None:
        allowed = ", ".join(repr(e) for e in ENCODINGS)
        problems.append(f"{file}: [site] encoding must be one of {{{allowed}}}; got {encoding!r}")
    return problems


def site_country(code: str) -> str:
    """The form of a valid ISO 3166 ``code`` that a bundle reports: alpha-2 (``JPN`` -> ``JP``).

    The site's country is its ``COUNTRY`` covariate and the key of per-country results; one form
    for every site keeps ``JP`` and ``JPN`` one level.
    """
    alpha3 = country_alpha3(code)
    return COUNTRIES[alpha3][0] if alpha3 is not None else code


def check_adsl(frame: pd.DataFrame, file: str, country: str | None = None) -> list[str]:
    """Rules for a normalised ADSL table; ``country`` (from site.toml) checks a COUNTRY column."""
    if frame.empty:
        return [f"{file}: no data rows (the file has only a header)"]
    problems = _missing_columns(frame, file, ADSL_REQUIRED)
    problems += _blank(frame, file, "USUBJID", "missing subject identifier")
    problems += _blank(frame, file, "TRT01P", "missing planned treatment arm")
    if "USUBJID" in frame:
        problems += _duplicates(frame, file, ["USUBJID"], "one row per subject")
    if "AGE" in frame:
        age, bad = to_numbers(frame["AGE"])
        problems += by_value(frame, file, "AGE", bad, lambda v: f"non-numeric age {v}")
        problems += by_value(frame, file, "AGE", age < 0, lambda v: f"negative age {v}", True)
    if country is not None and "COUNTRY" in frame:
        # ADaM writes COUNTRY as alpha-3 (JPN), site.toml often alpha-2 (JP): one country
        expected = country_alpha3(country)
        same = [v for v in pd.unique(frame["COUNTRY"]) if country_alpha3(v) == expected]
        wrong = ~frame["COUNTRY"].isin(same)
        problems += by_value(
            frame,
            file,
            "COUNTRY",
            wrong,
            lambda v: f"{v} differs from site.toml country {country!r}",
        )
    return problems


def check_adtte(frame: pd.DataFrame, file: str) -> list[str]:
    """Rules for a normalised ADTTE table."""
    if frame.empty:
        return [f"{file}: no data rows (the file has only a header)"]
    problems = _missing_columns(frame, file, ADTTE_REQUIRED)
    problems += _blank(frame, file, "USUBJID", "missing subject identifier")
    problems += _blank(frame, file, "PARAMCD", "missing parameter code")
    if "AVAL" in frame:
        aval, bad = to_numbers(frame["AVAL"])
        missing = aval.isna() & ~bad
        problems += _rows_line(file, "AVAL", missing, "missing analysis value (time)")
        problems += by_value(frame, file, "AVAL", bad, lambda v: f"non-numeric time {v}")
        problems += by_value(
            frame, file, "AVAL", aval < 0, lambda v: f"negative time {v} (AVAL must be >= 0)", True
        )
        problems += by_value(
            frame,
            file,
            "AVAL",
            np.isinf(aval),
            lambda v: f"infinite time {v} (must be finite)",
            True,
        )
    if "CNSR" in frame:
        cnsr, bad = to_numbers(frame["CNSR"])
        missing = cnsr.isna() & ~bad
        problems += _rows_line(file, "CNSR", missing, f"missing censoring code {_CNSR_ALLOWED}")
        unknown = bad | (cnsr.notna() & ~cnsr.isin([0.0, 1.0]))
        problems += by_value(
            frame,
            file,
            "CNSR",
            unknown,
            lambda v: f"unknown censoring code {v} {_CNSR_ALLOWED}",
            True,
        )
    if "USUBJID" in frame and "PARAMCD" in frame:
        problems += _duplicates(
            frame, file, ["USUBJID", "PARAMCD"], "one row per subject and parameter"
        )
    return problems


def check_subjects(
    adsl: pd.DataFrame, adtte: pd.DataFrame, adsl_file: str, adtte_file: str
) -> list[str]:
    """Every ADTTE subject must be in ADSL."""
    if same_subjects(adtte["USUBJID"].to_numpy(), adsl["USUBJID"].to_numpy()):
        return []
    absent = ~adtte["USUBJID"].isin(adsl["USUBJID"])
    return by_value(
        adtte, adtte_file, "USUBJID", absent, lambda v: f"subject {v} is not in {adsl_file}"
    )


def site_warnings(
    adsl: pd.DataFrame, adtte: pd.DataFrame, adsl_file: str, adtte_file: str
) -> list[str]:
    """Warnings for a valid bundle: small arms, subjects without ADTTE rows, no events."""
    warnings = []
    for arm, count in adsl["TRT01P"].value_counts(sort=False).sort_index().items():
        if count < MIN_ARM_SIZE:
            warnings.append(
                f"{adsl_file}: arm {arm!r} has {count} subject(s) at this site (fewer than "
                f"{MIN_ARM_SIZE}); results by arm may disclose individual subjects"
            )
    subjects, ids = adsl["USUBJID"], adtte["USUBJID"]
    if not same_subjects(ids.to_numpy(), subjects.to_numpy()):
        without = ~subjects.isin(ids)
        if without.any():
            shown = ", ".join(repr(s) for s in subjects[without][:MAX_LINES_PER_RULE])
            more = ", ..." if without.sum() > MAX_LINES_PER_RULE else ""
            warnings.append(
                f"{adsl_file}: {int(without.sum())} subject(s) have no rows in {adtte_file} "
                f"({describe_rows(without)}): {shown}{more}"
            )
    for paramcd, cnsr in adtte.groupby("PARAMCD", sort=True)["CNSR"]:
        if not (cnsr == 0).any():
            warnings.append(
                f"{adtte_file}: parameter {paramcd!r} has no events at this site "
                f"({len(cnsr)} rows, all censored)"
            )
    return warnings


def same_subjects(ids: NDArray[Any], subjects: NDArray[Any]) -> bool:
    """True when ``ids`` lists ``subjects`` once or several times over, in their order.

    Then every ADTTE subject is in ADSL and every ADSL subject has ADTTE rows, found with one
    pass of comparisons and no hashing: the usual layout of ADTTE (sorted by PARAMCD, then in
    ADSL's order). False says nothing; the callers then match the ids by hashing.
    """
    n = len(subjects)
    if n == 0 or len(ids) % n:
        return False
    return bool((ids.reshape(-1, n) == subjects).all())


def raise_problems(folder: Path, problems: Sequence[str]) -> NoReturn:
    """Raise one UserError listing up to :data:`MAX_PROBLEMS` problems of bundle ``folder``."""
    if len(problems) == 1:
        raise UserError(f"site bundle {folder} is not valid: {problems[0]}")
    lines = [f"site bundle {folder} is not valid ({len(problems)} problems):"]
    lines += [f"  - {p}" for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"  - ... and {len(problems) - MAX_PROBLEMS} more")
    raise UserError("\n".join(lines))


def _missing_columns(frame: pd.DataFrame, file: str, required: Sequence[str]) -> list[str]:
    missing = [c for c in required if c not in frame.columns]
    if not missing:
        return []
    found = ", ".join(str(c) for c in frame.columns)
    plural = "s" if len(missing) > 1 else ""
    return [f"{file}: missing required column{plural} {', '.join(missing)} (found: {found})"]


def _blank(frame: pd.DataFrame, file: str, column: str, what: str) -> list[str]:
    if column not in frame:
        return []
    blank = _blank_cells(frame[column])
    return _rows_line(file, column, blank, what)


def _blank_cells(values: pd.Series) -> pd.Series:
    """Blank cells of a normalised text column, whose cells are stripped ``str``: the empty ones."""
    return values == ""


def _rows_line(file: str, column: str, mask: pd.Series, what: str) -> list[str]:
    if not mask.any():
        return []
    return [f"{file}: column {column}, {describe_rows(mask)}: {what}"]


def by_value(
    frame: pd.DataFrame,
    file: str,
    column: str,
    mask: pd.Series,
    what: Callable[[str], str],
    numeric: bool = False,
) -> list[str]:
    """One line per distinct offending value: ``file: column C, rows 3, 7: <what(value)>``.

    With ``numeric``, text cells that are numbers are shown as numbers (``2``, not ``'2'``).
    """
    if not mask.any():
        return []
    selected = mask.to_numpy(dtype=bool)
    cells = frame.loc[selected, column]
    shown = [_show(v) for v in (_as_number(v) for v in cells)] if numeric else map(_show, cells)
    groups: dict[str, list[int]] = {}
    for position, value in zip(np.flatnonzero(selected), shown, strict=True):
        groups.setdefault(value, []).append(int(position))
    lines = [
        f"{file}: column {column}, {describe_rows(positions)}: {what(value)}"
        for value, positions in list(groups.items())[:MAX_LINES_PER_RULE]
    ]
    if len(groups) > MAX_LINES_PER_RULE:
        lines.append(
            f"{file}: column {column}: {len(groups) - MAX_LINES_PER_RULE} more distinct values "
            "with the same problem"
        )
    return lines


def _as_number(value: Any) -> Any:
    """``value`` as a float when it is text that parses as a number, else unchanged."""
    if isinstance(value, str):
        number, bad = parse_numbers(np.array([value], dtype=object))
        if not bad[0] and not np.isnan(number[0]):
            return float(number[0])
    return value


def _duplicates(frame: pd.DataFrame, file: str, keys: list[str], rule: str) -> list[str]:
    columns = [frame[key].to_numpy() for key in keys]
    if _strictly_increasing(columns) or _strictly_increasing(columns[::-1]):
        return []  # sorted by the key (either order): no key repeats, found without hashing
    table = frame[keys].reset_index(drop=True)
    dup = table.duplicated(keep=False) & (table != "").all(axis=1)
    if not dup.any():
        return []
    lines = []
    groups = table[dup].groupby(keys, sort=False).groups
    for key, index in list(groups.items())[:MAX_LINES_PER_RULE]:
        values = key if isinstance(key, tuple) else (key,)
        what = ", ".join(f"{k} {_show(v)}" for k, v in zip(keys, values, strict=True))
        lines.append(
            f"{file}: column{'s' if len(keys) > 1 else ''} {', '.join(keys)}, "
            f"{describe_rows(list(index))}: duplicate record for {what} ({rule})"
        )
    if len(groups) > MAX_LINES_PER_RULE:
        lines.append(f"{file}: {len(groups) - MAX_LINES_PER_RULE} more duplicated keys")
    return lines


def _strictly_increasing(columns: Sequence[NDArray[Any]]) -> bool:
    """True when the rows, as tuples of ``columns``, strictly increase (so none repeats).

    ADaM data sets are sorted by their keys; values that do not compare (NaN, mixed types) make
    it False, and the caller then looks for repeats by hashing.
    """
    n = len(columns[0])
    if n < 2:
        return True
    increasing = np.zeros(n - 1, dtype=bool)
    tied = np.ones(n - 1, dtype=bool)  # rows i and i + 1 equal on the columns seen so far
    try:
        for position, column in enumerate(columns):
            earlier, later = column[:-1], column[1:]
            increasing |= tied & (later > earlier)
            if position < len(columns) - 1:
                tied &= later == earlier
    except TypeError:
        return False
    return bool(increasing.all())


def describe_rows(rows: pd.Series | Sequence[int]) -> str:
    """``row 3`` or ``rows 3, 7, 9`` (1-based data rows) from a mask or 0-based positions."""
    if isinstance(rows, pd.Series):
        positions = [int(p) for p in np.flatnonzero(rows.to_numpy(dtype=bool))]
    else:
        positions = [int(p) for p in rows]
    numbers = [str(p + 1) for p in positions]
    if len(numbers) == 1:
        return f"row {numbers[0]}"
    if len(numbers) > 10:
        return f"rows {', '.join(numbers[:10])}, ... ({len(numbers)} rows)"
    return f"rows {', '.join(numbers)}"


def _show(value: Any) -> str:
    """A value as written in messages: numbers plainly (2, -3.5), text quoted ('abc')."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, float | np.floating | int | np.integer):
        return repr(float(value)) if isinstance(value, float | np.floating) else str(value)
    return repr(str(value))
