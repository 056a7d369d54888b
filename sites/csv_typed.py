"""CSV tables read by pyarrow, giving the same normalised table as the text rules.

The text path (:func:`sites.bundle.read_table`) reads every cell as a Python ``str`` with pandas
and then applies :mod:`sites.normalise`: about 2.5 s and 1 GB per million rows, most of it
Python objects. This module reads the file with pyarrow's CSV reader, every column as Arrow
strings (so no type is guessed by the reader), and normalises column by column:

- a character column (by ADaM name): each distinct value is stripped once (Arrow's
  ``utf8_trim`` over exactly what ``str.strip()`` removes); the column refers to those shared
  ``str`` objects, except where the column's first cells are mostly distinct (USUBJID): then
  every cell is stripped as it comes, with no hashing;
- any other column: when every byte is in :data:`PLAIN_ALPHABET` and Arrow casts the column
  to float64, that cast is the column (no regular expression per cell). Else, when every cell is
  a missing token (:data:`sites.normalise.MISSING_TOKENS`) or matches :data:`NUMBER`, a strict
  subset of what ``float()`` accepts (no whitespace, no ``_``, ASCII digits), Arrow casts it to
  float64, which equals ``float()`` bit for bit (``tests/test_csv_typed.py``); otherwise that
  column goes through the text rules as before.

:func:`read_csv_typed` returns ``None`` where the whole file needs the text path: not UTF-8,
an empty or repeated header name, rows of another length than the header, no data rows, or any
reader error. The text path then gives the same table, or the precise error.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from numpy.typing import NDArray

from sites.normalise import (
    ASCII_COLUMNS,
    MISSING_TOKENS,
    WHITESPACE,
    categorical,
    exact_zeros,
    is_character,
    is_code,
    nfkc_cells,
    numbers_or_text,
    text,
)

PLAIN_ALPHABET = "0123456789.eE+-"
"""Over these characters Arrow's float64 cast accepts exactly the strings ``float()`` accepts,
with the same value (``tests/test_csv_typed.py`` tries every such string of up to 4 characters
and 20,000 longer ones)."""
_PLAIN_BYTES = PLAIN_ALPHABET.encode("ascii")

PROBE_CELLS = 1024
"""Cells of a text column's first block that decide whether its values are shared objects."""

BLOCK_BYTES = 16 << 20
"""Bytes of the file converted at a time: memory holds one block of Arrow strings, not the file."""

NUMBER = r"^[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))$"
"""Cells that Arrow casts to float64 exactly as ``float()`` parses them (RE2 syntax)."""


def read_csv_typed(path: Path | bytes, block_bytes: int = BLOCK_BYTES) -> pd.DataFrame | None:
    """The normalised table of CSV file ``path``, or ``None`` when the text path must decide.

    ``path`` may also be the file's content as UTF-8 bytes (a file in another declared encoding,
    transcoded). ``block_bytes`` is the size of the blocks the file is read in (tests make it
    small).
    """
    names = _header(path)
    if names is None:
        return None
    upper = [text(original).upper() for original in names]
    pieces: list[list[NDArray[Any]]] = [[] for _ in names]
    as_text: set[int] = set()  # columns some cell of which needs float()'s own rules
    non_ascii: set[int] = set()  # character columns with a byte outside ASCII
    distinct: set[int] = set()  # text columns of mostly distinct values (USUBJID): not shared
    rows = 0
    try:
        for batch in _blocks(path, names, block_bytes):
            if batch.schema.names != names:
                return None
            rows += batch.num_rows
            for position, name in enumerate(upper):
                cells = batch.column(position)
                if cells.null_count:
                    return None
                if is_character(name):
                    if not pieces[position] and _mostly_distinct(cells):
                        distinct.add(position)
                    if position not in non_ascii and not _ascii(cells):
                        non_ascii.add(position)
                    shared = position not in distinct
                    pieces[position].append(_stripped(cells, shared, code=is_code(name)))
                elif position not in as_text:
                    numbers = _numbers(cells)
                    if numbers is None:
                        as_text.add(position)
                        pieces[position] = []
                    else:
                        pieces[position].append(numbers)
            del batch, cells  # this block's Arrow buffers go before the next is read
    except (pa.ArrowException, OSError, ValueError):
        return None
    if rows == 0:
        return None
    columns: dict[str, NDArray[Any]] = {}
    for position, name in enumerate(upper):
        if position in as_text:
            columns[name] = _text_column(path, names, position)
        elif is_character(name):
            columns[name] = _joined(pieces[position])
        else:
            columns[name] = exact_zeros(_joined(pieces[position]))
        pieces[position] = []
    pa.default_memory_pool().release_unused()  # the allocator keeps freed blocks otherwise
    frame = pd.DataFrame(columns, copy=False)  # copy=False: no second, consolidated copy
    ascii_text = [n for p, n in enumerate(upper) if is_character(n) and p not in non_ascii]
    frame.attrs[ASCII_COLUMNS] = ascii_text  # spares later checks a pass over every cell
    return frame


def _options(names: list[str], include: list[str] | None = None) -> dict[str, Any]:
    return {
        "parse_options": pa_csv.ParseOptions(newlines_in_values=True),
        "convert_options": pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            include_columns=include,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            check_utf8=True,
        ),
    }


def _source(path: Path | bytes) -> Path | pa.BufferReader:
    """What pyarrow reads: the file, or a fresh reader over the bytes."""
    return pa.BufferReader(path) if isinstance(path, bytes) else path


def _blocks(path: Path | bytes, names: list[str], block_bytes: int) -> Iterator[pa.RecordBatch]:
    """The file's rows as Arrow strings, ``block_bytes`` of the file at a time."""
    read = pa_csv.ReadOptions(block_size=block_bytes)
    with pa_csv.open_csv(_source(path), read_options=read, **_options(names)) as reader:
        yield from reader


def _text_column(path: Path | bytes, names: list[str], position: int) -> NDArray[Any]:
    """Column ``position`` read again, whole, through the text rules (float() or str)."""
    table = pa_csv.read_csv(_source(path), **_options(names, include=[names[position]]))
    cells = numbers_or_text(_stripped(table.column(0).combine_chunks(), code=True))
    return categorical(text(names[position]).upper(), cells)


def _joined(pieces: list[NDArray[Any]]) -> NDArray[Any]:
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _header(path: Path | bytes) -> list[str] | None:
    """The header's names as pandas would take them, or ``None`` when pandas would rename any."""
    try:
        raw = io.BytesIO(path) if isinstance(path, bytes) else path.open("rb")
        with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
            names = next(csv.reader(handle))
    except (OSError, UnicodeDecodeError, StopIteration, csv.Error):
        return None
    if not names or any(n == "" for n in names) or len(set(names)) != len(names):
        return None  # pandas makes "Unnamed: 3" and "A.1" of these
    return names


def _mostly_distinct(cells: pa.Array) -> bool:
    """True when over half of the first :data:`PROBE_CELLS` cells are distinct (USUBJID)."""
    probe = cells.slice(0, PROBE_CELLS)
    return len(pc.unique(probe)) * 2 > len(probe)


def _stripped(cells: pa.Array, shared: bool = True, code: bool = False) -> NDArray[np.object_]:
    """The cells as stripped ``str``, in NFKC form unless ``code`` (identifiers, codes).

    With ``shared``, one Python object per distinct value (a dictionary encoding: one hash per
    cell); without, one object per cell and no hashing, which is faster for columns whose values
    are nearly all distinct.
    """
    if not shared:
        plain: NDArray[np.object_] = pc.utf8_trim(cells, characters=WHITESPACE).to_numpy(
            zero_copy_only=False
        )
        return plain if code else nfkc_cells(plain)
    encoded = cells.dictionary_encode()
    values = pc.utf8_trim(encoded.dictionary, characters=WHITESPACE)
    distinct = values.to_numpy(zero_copy_only=False)
    if not code:
        distinct = nfkc_cells(distinct)
    out: NDArray[np.object_] = distinct[encoded.indices.to_numpy(zero_copy_only=False)]
    return out


def _ascii(cells: pa.Array) -> bool:
    """True when every byte of a string array's cells is ASCII (one pass over its buffer)."""
    _, offsets_buffer, data = cells.buffers()
    if data is None:
        return True
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)
    start, end = offsets[cells.offset], offsets[cells.offset + len(cells)]
    return bool(start == end or np.frombuffer(data, np.uint8, end - start, start).max() < 0x80)


def _numbers(cells: pa.Array) -> NDArray[np.float64] | None:
    """float64 of a column of :data:`NUMBER` cells and missing tokens (NaN); else ``None``."""
    plain = _plain_numbers(cells)
    if plain is not None:
        return plain
    missing = pc.is_in(cells, value_set=pa.array(sorted(MISSING_TOKENS), pa.string()))
    number = pc.match_substring_regex(cells, NUMBER)
    if not pc.all(pc.or_(missing, number)).as_py():
        return None
    return _float64(pc.if_else(missing, pa.scalar(None, pa.string()), cells))


def _plain_numbers(cells: pa.Array) -> NDArray[np.float64] | None:
    """float64 of a column written only in :data:`PLAIN_ALPHABET` that Arrow casts whole.

    The common case (numbers as a program writes them) without a regular expression per cell:
    one pass over the column's bytes, then the cast. Missing tokens (``""``, ``.``) and anything
    else make the cast fail, and :func:`_numbers` then decides cell by cell.
    """
    if cells.type != pa.string() or len(cells) == 0:
        return None
    _, offsets_buffer, data = cells.buffers()
    if data is None:  # every cell empty
        return None
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)
    start, end = offsets[cells.offset], offsets[cells.offset + len(cells)]
    if bytes(memoryview(data)[start:end]).translate(None, _PLAIN_BYTES):
        return None  # some byte outside the alphabet
    return _float64(cells)


def _float64(cells: pa.Array) -> NDArray[np.float64] | None:
    """Arrow's cast of string cells to float64 (nulls as NaN); ``None`` where it refuses one."""
    try:
        numbers = pc.cast(cells, pa.float64())
    except pa.ArrowException:
        return None
    out: NDArray[np.float64] = numbers.to_numpy(zero_copy_only=False)
    return out
