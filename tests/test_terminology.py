"""Controlled terminology: the study's levels, NFKC comparison, sites' mappings and checks."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from analysis.errors import UserError
from analysis.iso3166 import ALPHA2_TO_ALPHA3, COUNTRIES
from analysis.terminology import (
    CDISC_LEVELS,
    compare_level_sets,
    country_alpha3,
    nfkc,
    parse_study_levels,
)
from experiments.cli import build_parser, main
from sites.bundle import _read_csv, load_bundle
from sites.cache import bundle_key
from sites.csv_typed import read_csv_typed
from sites.normalise import normalise
from sites.terminology import read_terminology, site_level_sets
from tests.cdisc import toy_tables, write_bundle

ISO_CODES = Path("/usr/share/iso-codes/json/iso_3166-1.json")


# ---- the study's levels (analysis.terminology, pure) -------------------------------------------


def test_cdisc_defaults() -> None:
    # CDISC CT codelists C66731 (SEX), C74457 (RACE, with the SDTMIG's MULTIPLE and OTHER),
    # C66790 (ETHNIC) and C66729 (COUNTRY: ISO 3166-1 alpha-3).
    assert CDISC_LEVELS["SEX"] == ("F", "M", "U", "UNDIFFERENTIATED")
    assert {"ASIAN", "WHITE", "BLACK OR AFRICAN AMERICAN", "NOT REPORTED"} <= set(
        CDISC_LEVELS["RACE"]
    )
    assert CDISC_LEVELS["ETHNIC"][:2] == ("HISPANIC OR LATINO", "NOT HISPANIC OR LATINO")
    assert {"JPN", "KOR", "USA"} <= set(CDISC_LEVELS["COUNTRY"])
    assert len(CDISC_LEVELS["COUNTRY"]) == 249
    assert all(len(code) == 3 for code in CDISC_LEVELS["COUNTRY"])


@pytest.mark.skipif(not ISO_CODES.is_file(), reason="Debian's iso-codes package not installed")
def test_shipped_iso_table_equals_debian_iso_codes() -> None:
    entries = json.loads(ISO_CODES.read_text(encoding="utf-8"))["3166-1"]
    assert {e["alpha_3"]: (e["alpha_2"], e["name"]) for e in entries} == COUNTRIES


def test_country_codes() -> None:
    assert ALPHA2_TO_ALPHA3["JP"] == "JPN" and ALPHA2_TO_ALPHA3["KR"] == "KOR"
    assert country_alpha3("JP") == country_alpha3("JPN") == "JPN"
    assert country_alpha3("Japan") is None and country_alpha3("jp") is None


def test_nfkc_folds_full_width_half_width_and_the_ideographic_space() -> None:
    assert nfkc("ＡＳＩＡＮ") == "ASIAN"
    assert nfkc("ｱｼﾞｱ人") == "アジア人"
    assert nfkc("NOT\u3000REPORTED") == "NOT REPORTED"
    assert nfkc(unicodedata.normalize("NFD", "아시아인")) == "아시아인"  # decomposed Hangul


def test_plan_levels_replace_or_extend_the_defaults() -> None:
    problems: list[str] = []
    levels = parse_study_levels(
        {"RACE": ["ASIAN", "ＷＨＩＴＥ"], "AGEGR1": ["<65", ">=65"]}, problems
    )
    assert problems == []
    assert levels["RACE"] == ("ASIAN", "WHITE")  # NFKC
    assert levels["AGEGR1"] == ("<65", ">=65")
    assert levels["SEX"] == CDISC_LEVELS["SEX"]
    assert parse_study_levels(None, problems) == dict(CDISC_LEVELS)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([1], "[levels] must be a table of VARIABLE = [levels]; got [1]"),
        ({"race": ["ASIAN"]}, "upper-case ADaM names (letters, digits, '_'); got 'race'"),
        ({"RACE": "ASIAN"}, "[levels] RACE must be a non-empty list of strings; got 'ASIAN'"),
        ({"RACE": []}, "[levels] RACE must be a non-empty list of strings; got []"),
        ({"SEX": ["M", 1]}, "[levels] SEX: every level must be a non-empty string; got 1"),
        ({"SEX": ["M", "m"]}, "[levels] SEX: 'm' repeats 'M'"),
    ],
)
def test_bad_plan_levels(table: object, message: str) -> None:
    problems: list[str] = []
    parse_study_levels(table, problems)
    assert len(problems) == 1 and message in problems[0]


def test_level_sets_that_agree_have_no_problems() -> None:
    per_site = {
        "JP01": {"RACE": {"ASIAN"}, "SEX": {"M", "F"}, "COUNTRY": {"JP"}, "TRT01P": {"Placebo"}},
        "KR01": {"RACE": {"ASIAN", ""}, "SEX": {"F"}, "COUNTRY": {"KOR"}, "TRT01P": {"Placebo"}},
    }
    assert compare_level_sets(per_site, None) == []


def test_values_outside_the_study_levels_name_site_variable_and_values() -> None:
    per_site = {
        "JP01": {"RACE": {"ASIAN", "アジア人"}},
        "KR01": {"RACE": {"Asian", "ＡＳＩＡＮ"}},
        "US01": {"RACE": {"WHITE"}},
    }
    problems = compare_level_sets(per_site, None)
    assert len(problems) == 2
    assert problems[0].startswith(
        "site JP01: RACE has value(s) outside the study's levels: 'アジア人'"
    )
    assert (
        "site KR01: RACE has value(s) outside the study's levels: 'Asian' (the study writes "
        "'ASIAN')" in problems[1]
    )
    assert "ＡＳＩＡＮ" not in problems[1]  # its NFKC form is the level itself
    assert "terminology.toml" in problems[0]


def test_declared_levels_replace_the_defaults_in_the_comparison() -> None:
    per_site = {"JP01": {"AGEGR1": {"<65", "65-80"}}, "KR01": {"AGEGR1": {"<65"}}}
    problems = compare_level_sets(per_site, {"AGEGR1": ("<65", ">=65")})
    assert problems == [
        "site JP01: AGEGR1 has value(s) outside the study's levels: '65-80'; the study's levels "
        "are '<65', '>=65'. Map the site's local values to them in its terminology.toml, or "
        "declare the levels in the plan's [levels] table"
    ]


def test_one_level_spelt_two_ways_across_sites_is_a_problem() -> None:
    per_site = {
        "JP01": {"TRT01P": {"Placebo", "Vaccine"}},
        "KR01": {"TRT01P": {"PLACEBO", "Vaccine"}},
        "KR02": {"TRT01P": {"Placebo"}},
    }
    assert compare_level_sets(per_site, {}) == [
        "TRT01P: one level is written 'PLACEBO' (KR01) and 'Placebo' (JP01, KR02); the sites "
        "must write it the same way (map it in their terminology.toml, or declare the levels in "
        "the plan's [levels] table)"
    ]


# ---- a site's terminology and checks (sites.terminology) ---------------------------------------


def _bundle(folder: Path, adsl: pd.DataFrame, terms: str | None = None, fmt: str = "csv") -> Path:
    _, adtte = toy_tables()
    write_bundle(folder, adsl, adtte, fmt=fmt, site_id="JP01", country="JP")
    if terms is not None:
        (folder / "terminology.toml").write_text(terms, encoding="utf-8")
    return folder


def _local() -> pd.DataFrame:
    adsl, _ = toy_tables()
    adsl["SEX"] = ["女", "男"] * 6
    adsl["RACE"] = ["アジア人"] * 10 + ["ASIAN", "ｱｼﾞｱ人"]
    return adsl


TERMS = '[SEX]\n"男" = "M"\n"女" = "F"\n\n[RACE]\n"アジア人" = "ASIAN"\n'


def test_terminology_maps_local_values_after_nfkc(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path / "b", _local(), TERMS))
    assert bundle.adsl["SEX"].tolist() == ["F", "M"] * 6
    assert set(bundle.adsl["RACE"]) == {"ASIAN"}  # ｱｼﾞｱ人 read as アジア人, then mapped
    assert bundle.mapped == {"SEX": {"女": 6, "男": 6}, "RACE": {"アジア人": 11}}
    assert bundle.files["terminology"] == tmp_path / "b" / "terminology.toml"
    assert bundle.warnings == []
    assert site_level_sets(bundle, ["RACE", "SEX", "AGE", "SITE", "COUNTRY", "NOPE"]) == {
        "RACE": {"ASIAN"},
        "SEX": {"F", "M"},
        "SITE": {"JP01"},
        "COUNTRY": {"JP"},
    }


def test_unmapped_values_are_warned_with_counts_and_the_fix(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path / "b", _local()))
    race = [w for w in bundle.warnings if "column RACE" in w]
    assert race == [
        "adsl.csv: column RACE: 1 value(s) outside the study's levels: 'アジア人' (11 rows). "
        "The study's levels are 'AMERICAN INDIAN OR ALASKA NATIVE', 'ASIAN', 'BLACK OR AFRICAN "
        "AMERICAN', 'NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER', 'WHITE', 'MULTIPLE', 'OTHER', "
        "'NOT REPORTED', 'UNKNOWN'; map local values in a terminology.toml (e.g. [RACE] "
        '"アジア人" = "<study level>"), or the run stops in round 1'
    ]
    sex = [w for w in bundle.warnings if "column SEX" in w]
    assert len(sex) == 1 and "'女' (6 rows), '男' (6 rows)" in sex[0]
    per_site = {"JP01": site_level_sets(bundle, ["RACE", "SEX"])}
    assert len(compare_level_sets(per_site)) == 2  # what round 1 refuses


def test_plan_levels_decide_what_site_check_reports(tmp_path: Path) -> None:
    adsl = _local()
    adsl["AGEGR1"] = ["<65"] * 11 + ["65+"]
    folder = _bundle(tmp_path / "b", adsl, TERMS)
    levels = parse_study_levels({"AGEGR1": ["<65", ">=65"]}, [])
    warnings = load_bundle(folder, levels).warnings
    assert len(warnings) == 1 and "column AGEGR1: 1 value(s) outside" in warnings[0]
    assert "'65+' (1 row)" in warnings[0]


@pytest.mark.parametrize("fmt", ["csv", "xpt", "parquet"])
def test_categorical_text_is_nfkc_and_identifiers_are_kept_and_reported(
    tmp_path: Path, fmt: str
) -> None:
    adsl, adtte = toy_tables()
    adsl["TRT01P"] = ["Ｐｌａｃｅｂｏ"] * 3 + ["Placebo"] * 3 + ["Active"] * 6
    adsl["RACE"] = "NOT\u3000REPORTED"
    adsl.loc[2, "USUBJID"] = "ＴＯＹ-003"
    adtte.loc[2, "USUBJID"] = "ＴＯＹ-003"
    folder = write_bundle(tmp_path / "b", adsl, adtte, fmt=fmt)
    bundle = load_bundle(folder)
    assert bundle.adsl["TRT01P"].tolist() == ["Placebo"] * 6 + ["Active"] * 6
    assert set(bundle.adsl["RACE"]) == {"NOT REPORTED"}
    assert bundle.adsl["USUBJID"][2] == "ＴＯＹ-003"  # never changed
    names = {f"adsl.{fmt}", f"adtte.{fmt}"}
    width = [w for w in bundle.warnings if "full-width" in w]
    assert {w.split(":")[0] for w in width} == names
    assert all("column USUBJID, row 3: 'ＴＯＹ-003'" in w and "'TOY-003'" in w for w in width)


def test_fast_and_text_csv_paths_agree_on_nfkc(tmp_path: Path) -> None:
    path = tmp_path / "adsl.csv"
    path.write_text(
        "USUBJID,SEX,RACE,NOTE,AGE\nＡ-1,Ｍ,ｱｼﾞｱ人,x,１２\nA-2,F,ASIAN,\u212b,3\nA-3,F,ASIAN,y,4\n",
        encoding="utf-8",
    )
    fast = read_csv_typed(path)
    assert fast is not None
    pd.testing.assert_frame_equal(fast, normalise(_read_csv(path), infer_numbers=True))
    assert fast["SEX"].tolist() == ["M", "F", "F"]
    assert fast["RACE"].tolist() == ["アジア人", "ASIAN", "ASIAN"]
    assert fast["NOTE"].tolist() == ["x", "\u00c5", "y"]  # ANGSTROM SIGN -> A WITH RING
    assert fast["USUBJID"].tolist() == ["Ａ-1", "A-2", "A-3"]
    assert fast["AGE"].tolist() == [12.0, 3.0, 4.0]  # float() reads full-width digits, as before


def test_site_toml_country_may_be_alpha3_and_adsl_country_either(tmp_path: Path) -> None:
    adsl, adtte = toy_tables()
    adsl["COUNTRY"] = ["JPN"] * 6 + ["JP"] * 6
    folder = write_bundle(tmp_path / "b", adsl, adtte, country="JPN")
    bundle = load_bundle(folder)
    assert bundle.country == "JP"  # one form for every site: the COUNTRY level and results key
    assert set(bundle.subjects()["COUNTRY"]) == {"JP"}
    adsl.loc[3, "COUNTRY"] = "KOR"
    folder = write_bundle(tmp_path / "c", adsl, adtte, country="JP")
    with pytest.raises(UserError, match=r"column COUNTRY, row 4: 'KOR' differs from site.toml"):
        load_bundle(folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[SEX]\n"男" = 1\n', "[SEX]: '男' must map to a non-empty string; got 1"),
        ('SEX = "M"\n', '[SEX] must be a table of "local value" = "study level"'),
        ('[sex]\n"男" = "M"\n', "upper-case ADaM variable that is not an identifier"),
        ('[USUBJID]\n"a" = "b"\n', "got 'USUBJID'"),
        ('[SEX]\n"Ｍ" = "M"\n"M" = "M"\n', "[SEX]: 'M' is listed twice"),
        ("[SEX\n", "TOML syntax error (the file must be UTF-8)"),
    ],
)
def test_bad_terminology_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "terminology.toml"
    path.write_text(text, encoding="utf-8")
    mapping, problems = read_terminology(path)
    assert len(problems) == 1 and message in problems[0], problems
    with pytest.raises(UserError, match="terminology.toml"):
        load_bundle(_bundle(tmp_path / "b", _local(), text))


def test_the_cache_key_covers_terminology_toml(tmp_path: Path) -> None:
    folder = _bundle(tmp_path / "b", _local(), TERMS)
    before = bundle_key(folder)
    (folder / "terminology.toml").write_text(TERMS.replace('"F"', '"U"'), encoding="utf-8")
    assert bundle_key(folder) != before


def test_site_check_reports_encoding_mapping_and_plan_levels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adsl = _local()
    adsl["AGEGR1"] = ["<65"] * 11 + ["65+"]
    folder = _bundle(tmp_path / "b", adsl, TERMS)
    plan = tmp_path / "plan.toml"
    plan.write_text('[study]\nid = "T"\n\n[levels]\nAGEGR1 = ["<65", ">=65"]\n', encoding="utf-8")
    assert main(["site", "check", str(folder), "--plan", str(plan)]) == 0
    out, err = capsys.readouterr()
    assert "text encoding: utf-8\n" in out
    assert "terminology: terminology.toml\n" in out
    assert "  SEX: '男' -> 'M' (6 rows), '女' -> 'F' (6 rows)" in out
    assert "  RACE: 'アジア人' -> 'ASIAN' (11 rows)" in out
    assert "valid: yes, 1 warning(s)" in out
    assert "column AGEGR1: 1 value(s) outside the study's levels: '65+' (1 row)" in err
    assert main(["site", "check", str(folder)]) == 0  # CDISC defaults: AGEGR1 is not checked
    assert "no warnings" in capsys.readouterr().out
    plan.write_text('[levels]\nAGEGR1 = "<65"\n', encoding="utf-8")
    assert main(["site", "check", str(folder), "--plan", str(plan)]) == 2
    assert "[levels] AGEGR1 must be a non-empty list of strings" in capsys.readouterr().err


def test_synth_command_line_takes_encodings_and_local_terms(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "synth",
            "--out",
            str(tmp_path),
            "--encoding",
            "cp932",
            "--encoding",
            "KR=euc_kr",
            "--local-terms",
        ]
    )
    assert args.encoding == ["cp932", "KR=euc_kr"] and args.local_terms is True
    defaults = build_parser().parse_args(["synth", "--out", str(tmp_path)])
    assert defaults.encoding is None and defaults.local_terms is False
