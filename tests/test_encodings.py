"""Site text in Japanese and Korean encodings: declared and decoded, undeclared and refused.

The CSV files here are written with Python's own codecs (``str.encode``), independently of the
loaders; the XPT files by :func:`experiments.synth_local.write_xpt`, which is checked first
against pandas' own XPT reader decoding the same encoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyreadstat
import pytest

from analysis.errors import UserError
from experiments.synth_local import write_xpt
from sites.bundle import load_bundle, read_table
from sites.encoding import canonical_encoding, csv_position, decode_csv
from tests.cdisc import toy_tables

LOCAL: dict[str, dict[str, Any]] = {
    "JP": {"TRT01P": ("プラセボ", "実薬"), "SEX": ("女", "男"), "RACE": "アジア人"},
    "KR": {"TRT01P": ("위약", "시험약"), "SEX": ("여", "남"), "RACE": "아시아인"},
}
"""Values as a Japanese or a Korean site writes them."""
CASES = [
    # (encoding written, site country, encoding the hint must name)
    ("shift_jis", "JP", "cp932"),  # CP932 is the superset that Windows tools write
    ("cp932", "JP", "cp932"),
    ("euc_jp", "JP", "euc_jp"),  # decodes in CP932 too, but as half-width katakana
    ("cp949", "KR", "cp949"),
    ("euc_kr", "KR", "cp949"),
]


def local_tables(country: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    adsl, adtte = toy_tables()
    words = LOCAL[country]
    adsl["TRT01P"] = [words["TRT01P"][0]] * 6 + [words["TRT01P"][1]] * 6
    adsl["SEX"] = list(words["SEX"]) * 6
    adsl["RACE"] = words["RACE"]
    return adsl, adtte


def write_encoded(
    folder: Path,
    adsl: pd.DataFrame,
    adtte: pd.DataFrame,
    fmt: str,
    encoding: str,
    country: str,
    declared: str | None,
) -> Path:
    """A bundle whose tables' text is in ``encoding``; ``declared`` goes in site.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    line = f'encoding = "{declared}"\n' if declared else ""
    (folder / "site.toml").write_text(
        f'[site]\nid = "{country}01"\nname = "x"\ncountry = "{country}"\n{line}', encoding="utf-8"
    )
    for name, frame in (("ADSL", adsl), ("ADTTE", adtte)):
        path = folder / f"{name.lower()}.{fmt}"
        if fmt == "csv":
            path.write_bytes(frame.to_csv(index=False).encode(encoding))
        else:
            write_xpt(frame, path, encoding, "test", table_name=name)
    return folder


@pytest.mark.parametrize(("encoding", "country", "_"), CASES)
def test_the_xpt_writer_agrees_with_pandas_reader(
    tmp_path: Path, encoding: str, country: str, _: str
) -> None:
    adsl, _tte = local_tables(country)
    path = tmp_path / "adsl.xpt"
    write_xpt(adsl, path, encoding, "test", table_name="ADSL")
    back = pd.read_sas(path, format="xport", encoding=encoding)
    pd.testing.assert_frame_equal(back, adsl, check_dtype=False)
    raw = pd.read_sas(path, format="xport", encoding=None)
    assert raw["RACE"][0] == LOCAL[country]["RACE"].encode(encoding)  # the bytes, not UTF-8


@pytest.mark.parametrize("fmt", ["csv", "xpt"])
@pytest.mark.parametrize(("encoding", "country", "_"), CASES)
def test_declared_encoding_is_decoded(
    tmp_path: Path, fmt: str, encoding: str, country: str, _: str
) -> None:
    adsl, adtte = local_tables(country)
    folder = write_encoded(tmp_path / "b", adsl, adtte, fmt, encoding, country, encoding)
    bundle = load_bundle(folder)
    assert bundle.encoding == encoding
    for column in ("TRT01P", "SEX", "RACE"):
        assert bundle.adsl[column].tolist() == adsl[column].tolist(), column
    data = bundle.survival_data("TTDE")
    assert data.column("SEX").tolist() == adsl["SEX"].tolist()


@pytest.mark.parametrize("fmt", ["csv", "xpt"])
@pytest.mark.parametrize(("encoding", "country", "hint"), CASES)
def test_undeclared_encoding_is_refused_naming_file_row_column_bytes_and_fix(
    tmp_path: Path, fmt: str, encoding: str, country: str, hint: str
) -> None:
    adsl, adtte = local_tables(country)
    folder = write_encoded(tmp_path / "b", adsl, adtte, fmt, encoding, country, None)
    first = LOCAL[country]["TRT01P"][0].encode(encoding)[:1].hex().upper()
    with pytest.raises(UserError) as caught:
        load_bundle(folder)
    message = str(caught.value)
    assert f"adsl.{fmt}: row 1, column TRT01P" in message
    assert f"bytes {first}" in message and "are not valid utf-8" in message
    assert f'declare encoding = "{hint}" in site.toml [site]' in message
    assert f"reads {LOCAL[country]['TRT01P'][0]!r}" in message  # the value, read as the hint says


def test_a_declared_subset_encoding_names_its_superset(tmp_path: Path) -> None:
    # 똠 is in CP949 (Microsoft's extension) but not in EUC-KR's 2,350 syllables as bytes 8C 63;
    # ① and 髙 are in CP932 but not in Shift_JIS.
    for country, written, declared, value in (
        ("KR", "cp949", "euc_kr", "똠"),
        ("JP", "cp932", "shift_jis", "①髙"),
    ):
        adsl, adtte = local_tables(country)
        adsl.loc[4, "RACE"] = value
        folder = write_encoded(tmp_path / country, adsl, adtte, "csv", written, country, declared)
        with pytest.raises(
            UserError,
            match=rf"row 5, column RACE.*not valid {declared} \(the "
            rf"encoding declared.*declare encoding = \"{written}\"",
        ):
            load_bundle(folder)


def test_csv_position_counts_quoted_line_breaks_and_the_header() -> None:
    prefix = 'USUBJID,ARM,RACE\nS-1,"two\nlines",A\nS-2,B,'
    assert csv_position(prefix) == ("row 2, column RACE (line 4)", 2)
    assert csv_position("USUBJID,AR") == ("header (line 1), column 2", -1)
    data = (prefix + "アジア人\n").encode("cp932")
    with pytest.raises(UserError, match=r"adsl.csv: row 2, column RACE \(line 4\): bytes 83 "):
        decode_csv(data, "utf-8", "adsl.csv", "JP")


def test_bytes_no_common_encoding_reads_ask_for_utf8() -> None:
    data = (
        b"USUBJID,RACE\nS-1,A\x81,\n"  # 0x81 then a comma: no CJK trail byte, undefined in cp1252
    )
    with pytest.raises(
        UserError, match=r"row 1, column RACE.*bytes 81.*re-encode adsl.csv as UTF-8"
    ):
        decode_csv(data, "utf-8", "adsl.csv")


def test_utf8_with_byte_order_mark_reads_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "adsl.csv"
    path.write_bytes("\ufeffUSUBJID,RACE\nS-1,アジア人\n".encode())
    table = read_table(path)
    assert list(table.columns) == ["USUBJID", "RACE"] and table["RACE"].tolist() == ["アジア人"]


def test_latin1_declared_over_utf8_text_loads_with_a_warning(tmp_path: Path) -> None:
    adsl, adtte = local_tables("JP")
    folder = write_encoded(tmp_path / "b", adsl, adtte, "csv", "utf-8", "JP", "latin-1")
    bundle = load_bundle(folder)  # Latin-1 decodes any bytes: the declaration is taken
    assert any(
        "declared latin-1 in site.toml but is also valid UTF-8" in w and ",プラセボ," in w
        for w in bundle.warnings
    )


def test_parquet_binary_columns_are_decoded_in_the_declared_encoding(tmp_path: Path) -> None:
    adsl, adtte = local_tables("KR")
    folder = write_encoded(tmp_path / "b", adsl, adtte, "csv", "cp949", "KR", "cp949")
    (folder / "adsl.csv").unlink()
    table = pa.table(
        {c: [str(v).encode("cp949") for v in adsl[c]] for c in adsl.columns if c != "AGE"}
        | {"AGE": adsl["AGE"].to_numpy()}
    )
    pq.write_table(table, folder / "adsl.parquet")
    assert load_bundle(folder).adsl["RACE"].tolist() == ["아시아인"] * 12
    (folder / "site.toml").write_text('[site]\nid = "KR01"\nname = "x"\ncountry = "KR"\n')
    with pytest.raises(UserError, match=r"adsl.parquet: row 1, column TRT01P.*\"cp949\""):
        load_bundle(folder)


def test_encoding_names_and_aliases() -> None:
    assert canonical_encoding("Shift_JIS") == "shift_jis"
    assert canonical_encoding("windows-31j") == "cp932"
    assert canonical_encoding("EUC-KR") == "euc_kr"
    assert canonical_encoding("UHC") == "cp949"
    assert canonical_encoding("ISO-8859-1") == "latin-1"
    assert canonical_encoding("utf8") == "utf-8"
    assert canonical_encoding("utf-16") is None  # a real codec, but not one sites may declare
    assert canonical_encoding("klingon") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('encoding = "klingon"', r"\[site\] encoding must be one of \{'utf-8', .*got 'klingon'"),
        ("encoding = 932", r"\[site\] encoding must be a non-empty string; got 932"),
        ('encodng = "cp932"', r"\[site\] keys must be among .*'encoding'\}; got \['encodng'\]"),
    ],
)
def test_bad_encoding_declarations_are_refused(tmp_path: Path, line: str, message: str) -> None:
    adsl, adtte = local_tables("JP")
    folder = write_encoded(tmp_path / "b", adsl, adtte, "csv", "cp932", "JP", None)
    (folder / "site.toml").write_text(f'[site]\nid = "JP01"\nname = "x"\ncountry = "JP"\n{line}\n')
    with pytest.raises(UserError, match=message):
        load_bundle(folder)


def test_an_alias_declaration_reads_and_reports_the_canonical_name(tmp_path: Path) -> None:
    adsl, adtte = local_tables("JP")
    folder = write_encoded(tmp_path / "b", adsl, adtte, "xpt", "cp932", "JP", "Windows-31J")
    assert load_bundle(folder).encoding == "cp932"


@pytest.mark.parametrize("rows", [1, 3, 5, 7, 12])
@pytest.mark.parametrize("width", [1, 8, 21])
def test_xpt_record_count_ignores_blanks_inside_the_last_record(
    tmp_path: Path, rows: int, width: int
) -> None:
    # pandas drops the last row when its last 80 bytes hold 8 aligned blanks (a short value in
    # a wide column); pyreadstat, an independent reader, gives the true count.
    frame = pd.DataFrame(
        {
            "USUBJID": [f"S{i}" for i in range(rows)],
            "ARM": ["A" * width] + ["B"] * (rows - 1),
            "AGE": [40.0 + i for i in range(rows)],
        }
    )
    path = tmp_path / "adsl.xpt"
    pyreadstat.write_xport(frame, str(path), file_format_version=5, table_name="ADSL")
    truth, _ = pyreadstat.read_xport(str(path))
    table = read_table(path)
    assert len(truth) == rows == len(table)
    assert table["ARM"].tolist() == frame["ARM"].tolist()
