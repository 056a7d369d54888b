"""The pyarrow CSV reader (sites/csv_typed.py) gives exactly the table of the text rules.

The oracle is the text path: pandas reads every cell as ``str`` and :func:`sites.normalise.
normalise` applies ``str.strip()`` and ``float()`` cell by cell. Numbers must agree bit for bit
(NaN where the text path has NaN), text cells must be equal strings, and every file the typed
reader does not take (``None``) must still load through :func:`sites.bundle.read_table`.
"""

from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analysis.errors import UserError
from sites.bundle import _read_csv, read_table
from sites.csv_typed import PLAIN_ALPHABET, _blocks, _plain_numbers, read_csv_typed
from sites.normalise import WHITESPACE, exact_zeros, normalise

TRICKY_NUMBER_CELLS = [
    "1.5", " 1.5 ", "\t2\n", "\u30001\u3000", "+3", "-0", "-0.0", "0", ".5", "5.", "1e5", "1E-5",
    "-1.5e+300", "1e400", "-1e400", "4.9e-324", "2.5e-324", "inf", "-inf", "Infinity", "INF",
    "nan", "NaN", "-nan", "NA", ".", "", "  ", "1_000", "0x10", "1,5", "١٢", "１２", "nan(123)",
    "1.5x", "--1", "e5", "1e", "0001.2500", "123456789012345678901234567890",
    "0.1000000000000000055511151231257827", "\u00a07", "7\u2028",
]  # fmt: skip
"""Cells ``float()`` reads, refuses, or reads differently from Arrow's cast."""


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _text_path(path: Path) -> pd.DataFrame:
    return normalise(_read_csv(path), infer_numbers=True)


def _assert_same(typed: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(typed.columns) == list(expected.columns)
    for name in expected.columns:
        got, want = typed[name].to_numpy(), expected[name].to_numpy()
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        if want.dtype == np.float64:
            same = (got.view(np.int64) == want.view(np.int64)) | (np.isnan(got) & np.isnan(want))
            assert same.all(), (name, got[~same], want[~same])
        else:
            assert got.tolist() == want.tolist(), name


def test_whitespace_is_what_str_strip_removes() -> None:
    everything = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    assert everything == WHITESPACE


@pytest.mark.parametrize("cell", TRICKY_NUMBER_CELLS, ids=repr)
def test_each_tricky_number_cell_as_the_text_rules(tmp_path: Path, cell: str) -> None:
    rows = [[f"S-{i}", "Placebo", str(i * 0.5), cell if i == 3 else "1"] for i in range(6)]
    path = _write(tmp_path / "adtte.csv", ["USUBJID", "TRT01P", "AVAL", "CNSR"], rows)
    typed = read_csv_typed(path)
    assert typed is not None
    _assert_same(typed, _text_path(path))


def test_random_number_spellings_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(20261202)
    values = np.concatenate(
        [rng.normal(0, 1, 4000), rng.lognormal(0, 30, 4000), rng.integers(-9999, 9999, 2000)]
    )
    formats = [repr, "{:.17g}".format, "{:.3e}".format, "{:+.6f}".format, "{:E}".format]
    cells = [formats[i % len(formats)](float(v)) for i, v in enumerate(values)]
    cells += ["4.9406564584124654e-324", "1.7976931348623157e308", "2.2250738585072011e-308"]
    rows = [[f"S-{i}", "A", cell] for i, cell in enumerate(cells)]
    path = _write(tmp_path / "adsl.csv", ["USUBJID", "TRT01P", "AGE"], rows)
    typed = read_csv_typed(path)
    assert typed is not None and typed["AGE"].dtype == np.float64
    expected = exact_zeros(np.array([float(c) for c in cells]))  # what every reader applies
    assert (typed["AGE"].to_numpy().view(np.int64) == expected.view(np.int64)).all()
    _assert_same(typed, _text_path(path))


def _float_or_none(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def test_plain_alphabet_cast_accepts_exactly_what_float_accepts() -> None:
    """The regex-free path: every string of up to 4 characters of the alphabet, plus longer ones."""
    cells = ["".join(p) for k in range(1, 5) for p in itertools.product(PLAIN_ALPHABET, repeat=k)]
    rng = np.random.default_rng(20261203)
    alphabet = np.array(list(PLAIN_ALPHABET))
    cells += ["".join(rng.choice(alphabet, int(rng.integers(5, 13)))) for _ in range(20_000)]
    parsed = {cell: _float_or_none(cell) for cell in cells}
    accepted = [cell for cell, value in parsed.items() if value is not None]
    assert len(accepted) > 20_000 and len(accepted) < len(parsed)  # both kinds well covered
    got = _plain_numbers(pa.array(accepted, pa.string()))
    assert got is not None
    want = np.array([parsed[cell] for cell in accepted])
    assert (got.view(np.int64) == want.view(np.int64)).all()
    refused = [cell for cell, value in parsed.items() if value is None]
    taken = [cell for cell in refused if _plain_numbers(pa.array([cell], pa.string())) is not None]
    assert taken == []


def test_plain_numbers_leave_missing_tokens_and_other_characters_to_the_cell_rules() -> None:
    for column in (["1", ""], ["1", "."], ["1", " 2"], ["1", "nan"], ["1", "1_0"], [""]):
        assert _plain_numbers(pa.array(column, pa.string())) is None, column
    sliced = pa.array(["x", "1.5", "2e3", "y"], pa.string()).slice(1, 2)  # offsets not at 0
    numbers = _plain_numbers(sliced)
    assert numbers is not None and numbers.tolist() == [1.5, 2000.0]


def test_character_cells_stripped_as_str_strip(tmp_path: Path) -> None:
    arms = ["Placebo", f"{WHITESPACE}Placebo{WHITESPACE}", " Drug A ", "", "   ", "\u200bX"]
    rows = [[f" S-{i}\u3000", arm, "12"] for i, arm in enumerate(arms)]
    rows += [["S-9", "multi\nline", "1"], ["S-10", 'quoted "inner"', "2"]]
    path = _write(tmp_path / "adsl.csv", ["usubjid", " TRT01P ", "AGE"], rows)
    typed = read_csv_typed(path)
    assert typed is not None
    assert list(typed.columns) == ["USUBJID", "TRT01P", "AGE"]
    assert typed["TRT01P"].tolist()[:6] == [a.strip() for a in arms]
    _assert_same(typed, _text_path(path))


def test_a_bom_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    path = tmp_path / "adsl.csv"
    path.write_text("\ufeffUSUBJID,AGE\nS-1,40\nS-2,51\n", encoding="utf-8")
    typed = read_csv_typed(path)
    assert typed is not None and list(typed.columns) == ["USUBJID", "AGE"]
    _assert_same(typed, _text_path(path))


@pytest.mark.parametrize(
    "content",
    [
        "USUBJID,AGE,AGE\nS-1,40,41\n",  # repeated name: pandas renames it AGE.1
        "USUBJID,,AGE\nS-1,x,40\n",  # empty name: pandas calls it "Unnamed: 1"
        "USUBJID,AGE\nS-1,40,99\nS-2,51\n",  # a row longer than the header
        "USUBJID,AGE\n",  # header only
    ],
    ids=["repeated-name", "empty-name", "ragged", "no-rows"],
)
def test_files_left_to_the_text_rules(tmp_path: Path, content: str) -> None:
    path = tmp_path / "adsl.csv"
    path.write_text(content, encoding="utf-8")
    assert read_csv_typed(path) is None


def test_latin1_file_is_left_to_the_text_rules_and_loads_only_when_declared(
    tmp_path: Path,
) -> None:
    path = tmp_path / "adsl.csv"
    path.write_bytes("USUBJID,TRT01P,AGE\nS-1,Caf\u00e9,40\n".encode("latin-1"))
    assert read_csv_typed(path) is None
    with pytest.raises(UserError, match=r"row 1, column TRT01P \(line 2\): bytes E9 .*cp1252"):
        read_table(path)  # no silent Latin-1: the hint names the encoding that reads it
    table = read_table(path, "latin-1")
    assert table["TRT01P"].tolist() == ["Caf\u00e9"] and table["AGE"].tolist() == [40.0]


def test_read_table_takes_the_typed_reader_for_plain_csv(tmp_path: Path) -> None:
    rows = [[f"S-{i}", "A", str(i), "." if i == 2 else str(i % 2)] for i in range(5)]
    path = _write(tmp_path / "adtte.csv", ["USUBJID", "TRT01P", "AVAL", "CNSR"], rows)
    table = read_table(path)
    _assert_same(table, _text_path(path))
    assert np.isnan(table["CNSR"][2]) and table["AVAL"].dtype == np.float64


def test_a_file_read_in_many_blocks_gives_the_same_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 3000
    rows = [
        [
            f"S-{i}",
            "multi\nline arm" if i % 500 == 7 else f" Arm {i % 3} ",
            repr(float(rng.normal(50, 10))),
            " 7 " if i == n - 2 else str(i),  # float() reads it, NUMBER does not: last block
            "late text" if i == n - 1 else "1.5",  # text only in the last block
        ]
        for i in range(n)
    ]
    header = ["USUBJID", "TRT01P", "AGE", "LATE", "MIXED"]
    path = _write(tmp_path / "adsl.csv", header, rows)
    assert sum(1 for _ in _blocks(path, header, 4096)) > 10
    typed = read_csv_typed(path, block_bytes=4096)
    assert typed is not None
    assert typed["LATE"].dtype == np.float64 and typed["LATE"].iloc[-2] == 7.0
    assert typed["MIXED"].dtype == object and typed["MIXED"].iloc[-1] == "late text"
    _assert_same(typed, _text_path(path))
    _assert_same(typed, read_csv_typed(path))  # one block: the same table
