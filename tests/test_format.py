"""The one notation (analysis.kinds.format) and the message catalogue in three languages."""

from __future__ import annotations

import math
import re
import string
from datetime import date

import pytest

from analysis.kinds import messages
from analysis.kinds.format import (
    LANGUAGES,
    Locale,
    estimate,
    fmt,
    hazard_ratio,
    integer,
    interval,
    is_arm,
    p_text,
    p_value,
    parse_term,
    percent,
    split_param_label,
    time_value,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0523, "0.052"),
        (0.001, "0.001"),
        (0.000999, "<0.001"),
        (1e-12, "<0.001"),
        (1.0, "1.000"),
        (None, "NA"),
        (math.nan, "NA"),
        (True, "NA"),
    ],
)
def test_p_value(value: object, text: str) -> None:
    assert p_value(value) == text


def test_p_in_a_sentence() -> None:
    assert p_text(2e-12) == "p < 0.001"
    assert p_text(0.7) == "p = 0.700"


@pytest.mark.parametrize(
    ("value", "text"),
    [(296.0, "296"), (1234, "1,234"), (12.25, "12.2"), (math.inf, "NR"), (None, "NA")],
)
def test_time_value(value: object, text: str) -> None:
    assert time_value(value) == text


def test_numbers_percent_and_counts() -> None:
    assert hazard_ratio(0.25311) == "0.25"
    assert hazard_ratio(math.inf) == "NE"
    assert percent(0.74688) == "74.7%"
    assert percent(-0.413) == "-41.3%"
    assert integer(3000) == "3,000"
    assert integer(None) == "NA"


def test_intervals_and_estimates() -> None:
    assert interval([0.17, 0.37], hazard_ratio) == "(0.17, 0.37)"
    assert interval([296.0, None]) == "(296, NE)"
    assert interval([1.0, math.inf], hazard_ratio) == "(1.00, NE)"
    assert interval(None) == "NA"
    assert estimate([None, 296.0, None], time_value) == "NR (296, NE)"  # median not reached
    assert estimate([0.25, 0.17, 0.37], hazard_ratio) == "0.25 (0.17, 0.37)"
    assert fmt([0.747, 0.628, 0.828], "est_pct") == "74.7% (62.8%, 82.8%)"
    assert fmt(None, "text") == ""


def test_unknown_format_code_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"format must be one of \{.*est_hr.*\}; got 'pc'"):
        fmt(0.5, "pc")


def test_param_labels_and_terms() -> None:
    assert split_param_label("Overall survival (days)") == ("Overall survival", "days")
    assert split_param_label("Time to re-arrest (Week)") == ("Time to re-arrest", "weeks")
    assert split_param_label("Time to First Dermatologic Event") == (
        "Time to First Dermatologic Event",
        "",
    )
    assert parse_term("TRT01P[T.Vaccine]") == ("TRT01P", "Vaccine")
    assert parse_term("ARM[Financial aid]") == ("ARM", "Financial aid")
    assert parse_term("AGE") == ("AGE", None)
    assert is_arm("TRT01P") and is_arm("TRTA") and is_arm("ARM") and not is_arm("AGE")


def test_locale_words() -> None:
    refs = {"TRT01P": "Placebo", "SEX": "F"}
    en, ja, ko = (Locale(lang, references=refs) for lang in LANGUAGES)
    assert en.term("TRT01P[T.Vaccine]") == "Vaccine vs Placebo"
    assert ja.term("TRT01P[T.Vaccine]") == "Vaccine 対 Placebo"
    assert ko.term("TRT01P[T.Vaccine]") == "Vaccine 대 Placebo"
    assert en.term("SEX[T.M]") == "Sex: Male vs Female"
    assert ja.term("SEX[T.M]") == "性別：男性 対 女性"
    assert en.level("COUNTRY", "KR") == "Korea" and ko.level("COUNTRY", "JP") == "일본"
    assert en.var("UNKNOWNVAR") == "UNKNOWNVAR"
    assert en.reference("ARM", ["Drug", "Placebo"]) == "Placebo"
    assert en.reference("ARM", ["A", "B"]) is None


def test_locale_dates() -> None:
    day = date(2026, 12, 3)
    assert Locale("en").date(day) == "3 Dec 2026"
    assert Locale("ja").date("2026-12-03") == "2026年12月3日"
    assert Locale("ko").date("2026-12-03T10:00") == "2026년 12월 3일"
    assert Locale("en").date(None) == "NA"


def test_locale_units_from_labels() -> None:
    loc = Locale("ja", params={"OS": ("Overall survival", "days")})
    assert loc.param("OS") == "Overall survival" and loc.unit("OS") == "日"
    assert loc.param("PFS") == "PFS" and loc.unit("PFS") == ""
    assert Locale("en", time_unit="weeks").unit("PFS") == "weeks"


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match=r"lang must be one of .*; got 'fr'"):
        Locale("fr")


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_catalogue_is_complete_and_consistent() -> None:
    for key, entry in messages.MESSAGES.items():
        assert len(entry) == len(LANGUAGES) and all(entry), key
        assert _fields(entry[1]) == _fields(entry[0]) == _fields(entry[2]), key
    for table in (messages.VARIABLES, messages.LEVELS):
        for name, names in table.items():
            assert len(names) == 3 and all(names), name
    # Japanese and Korean entries are written in their scripts, not left in English
    untranslated = [
        key
        for key, (en, ja, ko) in messages.MESSAGES.items()
        if en in (ja, ko) and re.search(r"[A-Za-z]", re.sub(r"\{[^}]*\}", "", en))
    ]
    allowed = {"n", "n_header", "conv.ystep", "summary.partial", "term.level", "site_country"}
    allowed |= {"effect_method", "km.cell", "percent_axis", "versus", "prov.run_id"}
    assert set(untranslated) <= allowed, sorted(set(untranslated) - allowed)
