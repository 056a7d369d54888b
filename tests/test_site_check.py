"""``trialfed site check``: each class of bad input (exit 2), warnings (exit 0), the pilot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyreadstat
import pytest

from experiments.cli import main
from tests.cdisc import split_cdisc_pilot, toy_tables, write_bundle

TOY_EVENTS = 7  # toy_tables(): CNSR [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0]


def run_check(
    folder: Path, capsys: pytest.CaptureFixture[str], *options: str
) -> tuple[int, str, str]:
    """Run ``trialfed site check FOLDER`` in process; return (status, stdout, stderr)."""
    status = main(["site", "check", str(folder), *options])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_refused(folder: Path, capsys: pytest.CaptureFixture[str], *parts: str) -> str:
    """The check exits 2 without a traceback and its message contains every part."""
    status, _, err = run_check(folder, capsys)
    assert status == 2, err
    assert err.startswith("trialfed: error: ")
    assert "Traceback" not in err
    for part in parts:
        assert part in err, f"{part!r} not in {err!r}"
    return err


@pytest.fixture
def toy(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    adsl, adtte = toy_tables()
    return adsl, adtte, tmp_path / "bundle"


# ---- valid bundles -------------------------------------------------------------------------


def test_valid_bundle_reports_site_subjects_arms_and_events(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl, adtte, site_id="JP01", country="JP")
    status, out, err = run_check(folder, capsys)
    assert status == 0
    assert err == ""
    assert "site JP01" in out and "(JP)" in out
    assert f"subjects: {len(adsl)}" in out
    for arm, count in adsl["TRT01P"].value_counts().items():
        assert any(arm in line and line.split()[-1] == str(count) for line in out.splitlines())
    censored = len(adtte) - TOY_EVENTS
    follow = f"follow-up {adtte['AVAL'].min():g} to {adtte['AVAL'].max():g}"
    assert f"TTDE: {TOY_EVENTS} events, {censored} censored, {follow}" in out


def test_quiet_prints_nothing_for_a_clean_bundle(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl, adtte)
    assert run_check(folder, capsys, "--quiet") == (0, "", "")


def test_every_pilot_site_passes(
    cdisc_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folders = split_cdisc_pilot(cdisc_dir, tmp_path, "xpt")
    assert len(folders) == 17  # README: 17 investigator sites
    subjects = 0
    for folder in folders:
        status, out, err = run_check(folder, capsys)
        assert status == 0, err
        subjects += int(next(x for x in out.splitlines() if x.startswith("subjects:")).split()[1])
    assert subjects == 254


# ---- warnings (exit 0) ---------------------------------------------------------------------


def test_small_arm_is_a_warning(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    adsl.loc[:2, "TRT01P"] = "Tiny"  # 3 subjects
    write_bundle(folder, adsl, adtte)
    status, out, err = run_check(folder, capsys, "--quiet")
    assert status == 0 and out == ""
    assert "warning: adsl.csv: arm 'Tiny' has 3 subject(s)" in err
    assert "'Placebo'" in err  # 6 - 3 = 3 placebo subjects left


def test_subjects_without_adtte_rows_are_a_warning(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl, adtte.drop(index=[3, 8]))
    status, _, err = run_check(folder, capsys)
    assert status == 0
    assert "2 subject(s) have no rows in adtte.csv (rows 4, 9): 'TOY-004', 'TOY-009'" in err


def test_parameter_without_events_is_a_warning(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    os_rows = adtte.assign(PARAMCD="OS", PARAM="Overall survival", CNSR=1)
    write_bundle(folder, adsl, pd.concat([adtte, os_rows]))
    status, _, err = run_check(folder, capsys)
    assert status == 0
    assert "parameter 'OS' has no events" in err
    assert "'TTDE' has no events" not in err


# ---- site.toml -----------------------------------------------------------------------------

SITE_TOML_CASES = {
    "syntax": ('[site]\nid = "A1\nname = "x"\n', "site.toml: TOML syntax error"),
    "no_site_table": ("[policy]\nx = 1\n", "site.toml: missing [site] table"),
    "no_id": ('[site]\nname = "x"\ncountry = "JP"\n', "[site] is missing key 'id'"),
    "no_name": ('[site]\nid = "A1"\ncountry = "JP"\n', "[site] is missing key 'name'"),
    "no_country": ('[site]\nid = "A1"\nname = "x"\n', "[site] is missing key 'country'"),
    "country_word": ('[site]\nid = "A1"\nname = "x"\ncountry = "Japan"\n', "got 'Japan'"),
    "country_lower": ('[site]\nid = "A1"\nname = "x"\ncountry = "jp"\n', "got 'jp'"),
    "country_number": ('[site]\nid = "A1"\nname = "x"\ncountry = 81\n', "got 81"),
}


@pytest.mark.parametrize("case", sorted(SITE_TOML_CASES))
def test_malformed_site_toml(
    case: str, toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl, adtte)
    text, expected = SITE_TOML_CASES[case]
    (folder / "site.toml").write_text(text, encoding="utf-8")
    assert_refused(folder, capsys, "site.toml", expected)


def test_missing_site_toml(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl, adtte)
    (folder / "site.toml").unlink()
    assert_refused(folder, capsys, "site.toml: file not found")


# ---- files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["adsl", "adtte"])
def test_missing_dataset_file(
    dataset: str, toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl, adtte)
    (folder / f"{dataset}.csv").unlink()
    assert_refused(folder, capsys, f"no {dataset} file in {folder}")


@pytest.mark.parametrize("fmt", ["csv", "xpt", "parquet"])
def test_empty_file(
    fmt: str, toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl, adtte, fmt=fmt)
    (folder / f"adtte.{fmt}").write_bytes(b"")
    assert_refused(folder, capsys, f"adtte.{fmt}: file is empty (0 bytes)")


@pytest.mark.parametrize("fmt", ["csv", "xpt", "parquet"])
def test_header_only_file(
    fmt: str, toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl.iloc[:0], adtte, fmt=fmt)
    assert_refused(folder, capsys, f"adsl.{fmt}: no data rows (the file has only a header)")


@pytest.mark.parametrize(
    ("name", "kind"), [("adsl.xpt", "SAS transport"), ("adtte.parquet", "Parquet")]
)
def test_corrupted_file(
    name: str,
    kind: str,
    toy: tuple[pd.DataFrame, pd.DataFrame, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    adsl, adtte, folder = toy
    fmt = name.split(".")[1]
    write_bundle(folder, adsl, adtte, fmt=fmt)
    (folder / name).write_bytes(bytes(range(256)) * 4)
    assert_refused(folder, capsys, f"{name}: cannot be read as a {kind}")


def test_unsupported_file_format(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl, adtte)
    (folder / "adsl.csv").rename(folder / "adsl.txt")
    assert_refused(folder, capsys, "adsl.txt: unsupported file format")


# ---- columns and values --------------------------------------------------------------------

REQUIRED = [("adsl", c) for c in ("STUDYID", "USUBJID", "SITEID", "TRT01P", "AGE", "SEX")] + [
    ("adtte", c) for c in ("USUBJID", "PARAMCD", "PARAM", "AVAL", "CNSR")
]


@pytest.mark.parametrize(("dataset", "column"), REQUIRED)
def test_missing_required_column(
    dataset: str,
    column: str,
    toy: tuple[pd.DataFrame, pd.DataFrame, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    adsl, adtte, folder = toy
    if dataset == "adsl":
        adsl = adsl.drop(columns=[column])
    else:
        adtte = adtte.drop(columns=[column])
    write_bundle(folder, adsl, adtte)
    assert_refused(folder, capsys, f"{dataset}.csv: missing required column {column} (found:")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, "adtte.csv: column CNSR, row 5: unknown censoring code 2 (allowed: 0 = event, 1 ="),
        ("x", "adtte.csv: column CNSR, row 5: unknown censoring code 'x' (allowed: 0 = event"),
        (0.5, "adtte.csv: column CNSR, row 5: unknown censoring code 0.5 (allowed: 0 = event"),
        ("", "adtte.csv: column CNSR, row 5: missing censoring code (allowed: 0 = event"),
    ],
)
def test_unknown_censoring_code(
    value: object,
    expected: str,
    toy: tuple[pd.DataFrame, pd.DataFrame, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    adsl, adtte, folder = toy
    adtte["CNSR"] = adtte["CNSR"].astype(object)
    adtte.loc[4, "CNSR"] = value  # data row 5
    write_bundle(folder, adsl, adtte)
    assert_refused(folder, capsys, expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-3.5, "adtte.csv: column AVAL, row 7: negative time -3.5 (AVAL must be >= 0)"),
        ("", "adtte.csv: column AVAL, row 7: missing analysis value"),
        ("abc", "adtte.csv: column AVAL, row 7: non-numeric time 'abc'"),
    ],
)
def test_bad_analysis_value(
    value: object,
    expected: str,
    toy: tuple[pd.DataFrame, pd.DataFrame, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    adsl, adtte, folder = toy
    adtte["AVAL"] = adtte["AVAL"].astype(object)
    adtte.loc[6, "AVAL"] = value
    write_bundle(folder, adsl, adtte)
    assert_refused(folder, capsys, expected)


def test_duplicated_subject_and_parameter(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    write_bundle(folder, adsl, pd.concat([adtte, adtte.iloc[[1]]]))
    assert_refused(
        folder,
        capsys,
        "adtte.csv: columns USUBJID, PARAMCD, rows 2, 13: duplicate record for "
        "USUBJID 'TOY-002', PARAMCD 'TTDE'",
    )


def test_duplicated_adsl_subject(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    adsl.loc[9, "USUBJID"] = "TOY-004"
    write_bundle(folder, adsl, adtte[adtte["USUBJID"] != "TOY-010"])
    assert_refused(
        folder, capsys, "adsl.csv: column USUBJID, rows 4, 10: duplicate record for USUBJID"
    )


def test_adtte_subject_absent_from_adsl(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    adtte.loc[10, "USUBJID"] = "GHOST-1"
    write_bundle(folder, adsl, adtte)
    assert_refused(
        folder, capsys, "adtte.csv: column USUBJID, row 11: subject 'GHOST-1' is not in adsl.csv"
    )


def test_missing_planned_treatment(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    adsl.loc[[3, 8], "TRT01P"] = ""
    write_bundle(folder, adsl, adtte)
    assert_refused(
        folder, capsys, "adsl.csv: column TRT01P, rows 4, 9: missing planned treatment arm"
    )


def test_adsl_country_must_match_site_toml(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    adsl["COUNTRY"] = "JP"
    adsl.loc[[1, 4], "COUNTRY"] = "KR"
    write_bundle(folder, adsl, adtte, country="JP")
    assert_refused(
        folder,
        capsys,
        "adsl.csv: column COUNTRY, rows 2, 5: 'KR' differs from site.toml country 'JP'",
    )


def test_several_problems_are_listed_together(
    toy: tuple[pd.DataFrame, pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adsl, adtte, folder = toy
    adsl = adsl.drop(columns=["SEX"])
    adtte.loc[0, "CNSR"] = 9
    adtte.loc[1, "AVAL"] = -1.0
    write_bundle(folder, adsl, adtte, country="jp")
    err = assert_refused(
        folder,
        capsys,
        "(4 problems)",
        "got 'jp'",
        "missing required column SEX",
        "column CNSR, row 1: unknown censoring code 9",
        "column AVAL, row 2: negative time -1",
    )
    assert len(err.splitlines()) == 5


@pytest.mark.slow
def test_the_console_script_exits_2_without_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "trialfed"
    if not script.exists():
        pytest.skip(f"console script not installed at {script}")
    adsl, adtte = toy_tables()
    adtte.loc[2, "CNSR"] = 3
    folder = write_bundle(tmp_path / "bundle", adsl, adtte)
    result = subprocess.run(
        [str(script), "site", "check", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "adtte.csv: column CNSR, row 3: unknown censoring code 3" in result.stderr


def test_xpt_writer_in_helper_round_trips_header(tmp_path: Path) -> None:
    # Guard for the header-only XPT case above: pyreadstat writes a 0-row file with its columns.
    adsl, _ = toy_tables()
    path = tmp_path / "adsl.xpt"
    pyreadstat.write_xport(adsl.iloc[:0], str(path), file_format_version=5, table_name="ADSL")
    _, meta = pyreadstat.read_xport(str(path), metadataonly=True)
    assert list(meta.column_names) == list(adsl.columns)
