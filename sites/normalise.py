"""Normalisation of ADaM tables: the same columns and values whatever the file format.

- Column names are stripped and upper-cased (SAS names are case-insensitive).
- Numeric columns become float64; values within 1e-70 of zero become exactly 0.0 (pandas reads
  some XPT zeros as 5.397605e-79, the smallest IBM float).
- Other columns become object arrays of ``str``: whitespace is stripped and missing values become
  ``""``; datetimes become ISO strings. Bytes were decoded before, strictly, in the encoding the
  site declares (:mod:`sites.encoding`).
- Columns that are character by ADaM naming convention (``*ID``, ``*FL``, ``*DTC``, ``*GRn`` and
  the identifiers in :data:`CHARACTER_COLUMNS`) are always text, so ``SITEID = 701`` in a CSV
  reads as ``"701"`` exactly as in the XPT file.
- CSV cells are text; any other column whose non-blank cells all parse as numbers becomes
  numeric (blank, ``NA``, ``NaN`` and SAS ``.`` count as missing), an entirely blank one too
  (all NaN), since CSV cannot tell an empty text column from an empty numeric one.
- Categorical text (every text column except identifiers and codes, :func:`is_code`) is put in
  Unicode NFKC form (:func:`nfkc_cells`): ``ＡＳＩＡＮ`` reads ``ASIAN``, ``ｱｼﾞｱ人`` reads
  ``アジア人``. Identifiers and codes are kept exactly as written.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

# fmt: off
CHARACTER_COLUMNS = frozenset({
    "STUDYID", "USUBJID", "SUBJID", "SITEID", "TRT01P", "TRT01A", "TRTP", "TRTA", "ARM", "ARMCD",
    "ACTARM", "ACTARMCD", "SEX", "RACE", "ETHNIC", "COUNTRY", "AGEU", "PARAMCD", "PARAM",
    "EVNTDESC", "CNSDTDSC", "SRCDOM", "SRCVAR",
})
# fmt: on
"""ADaM variables that are always text, whatever the file format stored."""

MISSING_TOKENS = frozenset({"", "NA", "NaN", "nan", "."})
"""Text cells read as a missing number (SAS writes missing numerics as ``.``)."""
WHITESPACE = (
    "\u0009\u000a\u000b\u000c\u000d"
    "\u001c\u001d\u001e\u001f \u0085\u00a0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
"""What ``str.strip()`` removes (every ``c`` with ``c.isspace()``), for Arrow's ``utf8_trim``."""

_CHARACTER_PATTERN = re.compile(r"(ID|FL|DTC|GR\d+)$")
_CODE_PATTERN = re.compile(r"(ID|CD|DTC|DTM|DT|TM)$")
ASCII_COLUMNS = "trialfed_ascii_columns"
"""``DataFrame.attrs`` key: text columns a reader found to be all ASCII (may be absent)."""
ZERO_ATOL = 1e-70
"""Numbers this close to zero are zero (XPT's smallest IBM float is 5.4e-79)."""


def exact_zeros(numbers: NDArray[np.float64]) -> NDArray[np.float64]:
    """``numbers`` with values within :data:`ZERO_ATOL` of zero (and -0.0) set to 0.0.

    ``abs(x) <= atol`` is what ``np.isclose(x, 0.0, rtol=0.0, atol=atol)`` tests (False for NaN
    and infinities), without its general broadcasting machinery (10x slower at 1e6 rows).
    """
    return np.where(np.abs(numbers) <= ZERO_ATOL, 0.0, numbers)


def is_character(name: str) -> bool:
    """True for ADaM variables that are text by convention (``*ID``, ``*FL``, ``*DTC``, ...)."""
    return name in CHARACTER_COLUMNS or _CHARACTER_PATTERN.search(name) is not None


def is_code(name: str) -> bool:
    """True for identifiers and codes (``*ID``, ``*CD``, dates and times, ``COUNTRY``).

    They are never changed when read; every other text column holds categorical values.
    """
    return name == "COUNTRY" or _CODE_PATTERN.search(name) is not None


def nfkc_cells(strings: NDArray[np.object_]) -> NDArray[np.object_]:
    """Text cells in Unicode NFKC form, stripped again; ``strings`` itself when all are ASCII.

    ASCII text is already in NFKC form, so the usual column costs one ``isascii`` per cell.
    """
    try:
        if all(map(str.isascii, strings)):
            return strings
    except TypeError:  # a cell that is not a str (NaN in an object column)
        pass
    out = strings.copy()
    for i, cell in enumerate(strings):
        if isinstance(cell, str) and not cell.isascii():
            out[i] = unicodedata.normalize("NFKC", cell).strip()
    return out


def normalise(frame: pd.DataFrame, infer_numbers: bool = False) -> pd.DataFrame:
    """Normalise column names and values (see the module notes); returns a new DataFrame."""
    columns: dict[str, NDArray[Any]] = {}
    for position, original in enumerate(frame.columns):
        name = text(original).upper()
        values = frame.iloc[:, position]
        fast = None
        if infer_numbers and values.dtype.kind == "O" and not is_character(name):
            fast = _numbers_from_cells(values.to_numpy(dtype=object))
        if values.dtype.kind in "biuf" and not is_character(name):
            numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        elif fast is not None:
            numbers = fast
        else:
            strings = as_text(values)
            if not is_character(name) and infer_numbers:
                strings = numbers_or_text(strings)
            columns[name] = categorical(name, strings)
            continue
        columns[name] = exact_zeros(numbers)
    return pd.DataFrame(columns)


def categorical(name: str, cells: NDArray[Any]) -> NDArray[Any]:
    """``cells`` of column ``name`` with text in NFKC form, unless it is numeric or a code."""
    if cells.dtype != object or is_code(name):
        return cells
    return nfkc_cells(cells)


def numbers_or_text(strings: NDArray[np.object_]) -> NDArray[Any]:
    """A column of stripped text cells: float64 when every cell reads as a number, else the text."""
    numbers, bad = parse_text_numbers(strings)
    return strings if bad.any() else exact_zeros(numbers)


def _numbers_from_cells(cells: NDArray[np.object_]) -> NDArray[np.float64] | None:
    """A column of ``str`` cells that all read as numbers, parsed without stripping first.

    ``float()`` ignores the same surrounding whitespace that ``str.strip()`` removes, so the
    result equals :func:`parse_text_numbers` of the stripped text; ``None`` when any cell is not a
    ``str``, is not a number (a missing token included) or holds ``_``: the caller then takes
    the cell-by-cell path.
    """
    if not set(map(type, cells)) <= {str}:
        return None
    try:
        numbers = cells.astype(np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if "_" in "".join(cells.tolist()):
        return None
    return numbers


def parse_text_numbers(
    strings: NDArray[np.object_],
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """:func:`sites.parse_numbers` of stripped text cells, vectorised when it can be.

    Casting an object array of ``str`` to float64 calls ``float()`` on every cell, as
    ``parse_numbers`` does; it fails on the first cell that is not a number (missing tokens
    included, except ``NaN``/``nan``, which ``float()`` also reads as NaN), and then, or when a
    cell holds ``_`` (which ``float()`` accepts and ``parse_numbers`` refuses), the cell-by-cell
    rules decide.
    """
    try:
        numbers = strings.astype(np.float64)
    except (ValueError, TypeError, OverflowError):
        return parse_numbers(strings)
    if "_" in "".join(strings.tolist()):
        return parse_numbers(strings)
    return numbers, np.zeros(len(strings), dtype=bool)


def as_text(values: pd.Series) -> NDArray[np.object_]:
    """A column as stripped ``str`` cells (:func:`text` of each; datetimes as ISO strings)."""
    if values.dtype.kind == "M":
        values = values.dt.strftime("%Y-%m-%dT%H:%M:%S")
    cells = values.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    if set(map(type, cells)) <= {str}:  # every cell a str (CSV): strip only
        out[:] = [v.strip() for v in cells]
    else:
        out[:] = [text(v) for v in cells]
    return out


def text(value: Any) -> str:
    """One cell as stripped text: bytes decoded, missing -> "", 701.0 -> "701"."""
    if value is None or value is pd.NaT or value is pd.NA:
        return ""
    if isinstance(value, bytes):  # column names; cells were decoded by sites.encoding
        return value.decode("utf-8").strip()
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        if float(value).is_integer():
            return str(int(value))
    return str(value).strip()


def to_numbers(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse a column as float64 (see :func:`parse_numbers`), keeping its index."""
    numbers, bad = parse_numbers(values)
    return pd.Series(numbers, index=values.index), pd.Series(bad, index=values.index)


def parse_numbers(
    values: pd.Series | NDArray[Any],
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Parse cells as float64.

    Returns
    -------
    numbers : ndarray of float64
        Parsed values; NaN where missing (:data:`MISSING_TOKENS`) or not a number.
    bad : ndarray of bool
        True where a cell is present but is not a number.
    """
    if values.dtype.kind in "biuf":
        if isinstance(values, pd.Series):
            return values.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(values), bool)
        return values.astype(np.float64), np.zeros(len(values), dtype=bool)
    numbers = np.full(len(values), np.nan)
    bad = np.zeros(len(values), dtype=bool)
    for i, cell in enumerate(values):
        text = "" if cell is None else str(cell).strip()
        if text in MISSING_TOKENS:
            continue
        try:
            numbers[i] = float(text) if "_" not in text else float("invalid")
        except ValueError:
            bad[i] = True
    return numbers, bad
