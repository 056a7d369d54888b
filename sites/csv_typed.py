"""CSV tables read by pyarrow, giving the same normalised table as the text rules.

The text path (:func:`sites.bundle.read_table`) reads every cell as a Python ``str`` with pandas
and then applies :mod:`sites.normalise`: about 2.5 s and 1 GB per million rows, most of it
Python objects. This module reads the file with pyarrow's CSV reader, every column as Arrow
strings (so no type is guessed by the reader), and normalises column by column:

- a character column (by ADaM name): each distinct value is stripped once (Arrow's
  ``utf8_trim`` over exactly what ``str.strip()`` removes); the column refers to those shared
  ``str`` objects;
- any other column: when every cell is a missing token (:data:`sites.check.MISSING_TOKENS`) or
  matches :data:`NUMBER`, a strict subset of what ``float()`` accepts (no whitespace, no ``_``,
  ASCII digits), Arrow casts it to float64, which equals ``float()`` bit for bit
  (``tests/test_csv_typed.py``); otherwise that column goes through the text rules as before.

:func:`read_csv_typed` returns ``None`` where the whole file needs the text path: not UTF-8,
an empty or repeated header name, rows of another length than the header, no data rows, or any
reader error. The text path then gives the same table, or the precise error.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from numpy.typing import NDArray

from sites.check import MISSING_TOKENS, WHITESPACE
from sites.normalise import exact_zeros, is_character, numbers_or_text, text

NUMBER = r"^[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))$"
"""Cells that Arrow casts to float64 exactly as ``float()`` parses them (RE2 syntax)."""


def read_csv_typed(path: Path) -> pd.DataFrame | None:
    """The normalised table of CSV file ``path``, or ``None`` when the text path must decide."""
    names = _header(path)
    if names is None:
        return None
    try:
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                check_utf8=True,
            ),
        )
    except (pa.ArrowException, OSError, ValueError):
        return None
    if table.column_names != names or table.num_rows == 0:
        return None
    columns: dict[str, NDArray[Any]] = {}
    for position, original in enumerate(names):
        name = text(original).upper()
        cells = table.column(position).combine_chunks()
        if cells.null_count:
            return None
        if is_character(name):
            columns[name] = _stripped(cells)
            continue
        numbers = _numbers(cells)
        if numbers is None:  # some cell needs float()'s own rules: the text path for this column
            columns[name] = numbers_or_text(_stripped(cells))
        else:
            columns[name] = exact_zeros(numbers)
    return pd.DataFrame(columns)


def _header(path: Path) -> list[str] | None:
    """The header's names as pandas would take them, or ``None`` when pandas would rename any."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            names = next(csv.reader(handle))
    except (OSError, UnicodeDecodeError, StopIteration, csv.Error):
        return None
    if not names or any(n == "" for n in names) or len(set(names)) != len(names):
        return None  # pandas makes "Unnamed: 3" and "A.1" of these
    return names


def _stripped(cells: pa.Array) -> NDArray[np.object_]:
    """The cells as stripped ``str``, one Python object per distinct value."""
    encoded = cells.dictionary_encode()
    values = pc.utf8_trim(encoded.dictionary, characters=WHITESPACE)
    distinct = values.to_numpy(zero_copy_only=False)
    out: NDArray[np.object_] = distinct[encoded.indices.to_numpy(zero_copy_only=False)]
    return out


def _numbers(cells: pa.Array) -> NDArray[np.float64] | None:
    """float64 of a column of :data:`NUMBER` cells and missing tokens (NaN); else ``None``."""
    missing = pc.is_in(cells, value_set=pa.array(sorted(MISSING_TOKENS), pa.string()))
    number = pc.match_substring_regex(cells, NUMBER)
    if not pc.all(pc.or_(missing, number)).as_py():
        return None
    present = pc.if_else(missing, pa.scalar(None, pa.string()), cells)
    try:
        numbers = pc.cast(present, pa.float64())
    except pa.ArrowException:
        return None
    out: NDArray[np.float64] = numbers.to_numpy(zero_copy_only=False)
    return out
