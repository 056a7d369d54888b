"""sites.bundle: loaders on the CDISC pilot, normalisation, round trips between formats."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter

from analysis.data import SurvivalData
from analysis.errors import UserError
from sites.bundle import SiteBundle, load_bundle
from tests.cdisc import (
    FORMATS,
    read_pilot,
    split_cdisc_pilot,
    toy_tables,
    write_bundle,
    write_site_toml,
    write_table,
)

# Published in ../shared/data/README.md: subjects and TTDE events per planned arm.
PILOT_ARMS = {
    "Placebo": (86, 29),
    "Xanomeline Low Dose": (84, 62),
    "Xanomeline High Dose": (84, 61),
}
PILOT_SUBJECTS = 254
PILOT_SITES = 17


@pytest.fixture(scope="module")
def pilot_bundle(cdisc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SiteBundle:
    """The whole pilot as one bundle (the published XPT files, unchanged)."""
    folder = tmp_path_factory.mktemp("pilot")
    for name in ("adsl.xpt", "adtte.xpt"):
        shutil.copyfile(cdisc_dir / name, folder / name)
    write_site_toml(folder, "PILOT", "CDISC pilot", "US")
    return load_bundle(folder)


ROUND_TRIP_SITES = ["701", "702", "707"]  # the largest site, a one-subject site, one without events


@pytest.fixture(scope="module")
def pilot_sites(cdisc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """A few pilot sites split by SITEID, once per file format."""
    out = tmp_path_factory.mktemp("split")
    return {fmt: split_cdisc_pilot(cdisc_dir, out / fmt, fmt, ROUND_TRIP_SITES) for fmt in FORMATS}


def test_pilot_subjects_arms_and_events_match_published_counts(pilot_bundle: SiteBundle) -> None:
    assert len(pilot_bundle.adsl) == PILOT_SUBJECTS
    assert pilot_bundle.adsl["SITEID"].nunique() == PILOT_SITES
    assert pilot_bundle.params() == ["TTDE"]
    data = pilot_bundle.survival_data("TTDE")
    assert data.n == PILOT_SUBJECTS
    arms = data.column("TRT01P")
    for arm, (n, events) in PILOT_ARMS.items():
        assert int((arms == arm).sum()) == n, arm
        assert int(data.event[arms == arm].sum()) == events, arm
    assert pilot_bundle.warnings == []


def test_cnsr_zero_is_an_event_despite_the_xpt_quirk(
    cdisc_dir: Path, pilot_bundle: SiteBundle
) -> None:
    _, raw = read_pilot(cdisc_dir)
    raw_cnsr = raw["CNSR"].to_numpy()
    # pandas reads the XPT zeros as tiny positive numbers, so a naive CNSR == 0 finds no events.
    tiny = (raw_cnsr > 0) & (raw_cnsr < 1e-70)
    expected_events = sum(events for _, events in PILOT_ARMS.values())
    assert int(tiny.sum()) in (0, expected_events)  # 0 once pandas fixes the quirk
    assert set(pilot_bundle.adtte["CNSR"]) == {0.0, 1.0}
    assert int((pilot_bundle.adtte["CNSR"] == 0).sum()) == expected_events
    # lifelines counts the same events from the loaded SurvivalData.
    data = pilot_bundle.survival_data("TTDE")
    kmf = KaplanMeierFitter().fit(data.time, data.event)
    assert int(kmf.event_table["observed"].sum()) == expected_events


def test_every_numeric_column_has_exact_zeros(pilot_bundle: SiteBundle) -> None:
    for frame in (pilot_bundle.adsl, pilot_bundle.adtte):
        for column in frame.columns:
            values = frame[column]
            if values.dtype.kind == "f":
                assert not ((values.abs() > 0) & (values.abs() < 1e-70)).any(), column
    placebo = pilot_bundle.adsl["TRT01P"] == "Placebo"
    assert (pilot_bundle.adsl.loc[placebo, "TRT01PN"] == 0.0).all()  # placebo dose code is 0


def test_survival_data_joins_adsl_to_adtte(cdisc_dir: Path, pilot_bundle: SiteBundle) -> None:
    raw_adsl, raw_adtte = read_pilot(cdisc_dir)
    data = pilot_bundle.survival_data("TTDE")
    np.testing.assert_array_equal(data.time, raw_adtte["AVAL"].to_numpy())
    expected = set(raw_adsl.columns) | {"SITE", "COUNTRY"}
    assert set(data.covariates) == expected
    age_by_subject = dict(zip(raw_adsl["USUBJID"], raw_adsl["AGE"], strict=True))
    ages = [age_by_subject[s] for s in raw_adtte["USUBJID"]]
    np.testing.assert_array_equal(data.column("AGE"), ages)
    assert data.column("AGE").dtype == np.float64
    assert data.column("SEX").dtype == object
    assert set(data.column("SEX")) == {"F", "M"}
    assert set(data.column("SITE")) == {"PILOT"}
    assert set(data.column("COUNTRY")) == {"US"}
    assert set(data.column("DTHFL")) <= {"", "Y"}  # missing strings are ""
    assert all(isinstance(v, str) for v in data.column("SITEID"))


def _assert_same(a: SurvivalData, b: SurvivalData) -> None:
    np.testing.assert_array_equal(a.time, b.time)
    np.testing.assert_array_equal(a.event, b.event)
    assert set(a.covariates) == set(b.covariates)
    for name, values in a.covariates.items():
        other = b.covariates[name]
        assert values.dtype == other.dtype, name
        if values.dtype.kind == "f":
            np.testing.assert_array_equal(values, other, err_msg=name)
        else:
            assert list(values) == list(other), name


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_whole_pilot_round_trip_gives_the_same_survival_data(
    fmt: str, cdisc_dir: Path, pilot_bundle: SiteBundle, tmp_path: Path
) -> None:
    adsl, adtte = read_pilot(cdisc_dir)
    folder = tmp_path / fmt
    folder.mkdir()
    write_table(adsl, folder / f"adsl.{fmt}", "ADSL")
    write_table(adtte, folder / f"adtte.{fmt}", "ADTTE")
    write_site_toml(folder, "PILOT", "CDISC pilot", "US")
    other = load_bundle(folder)
    data = other.survival_data("TTDE")
    _assert_same(pilot_bundle.survival_data("TTDE"), data)
    arms = data.column("TRT01P")
    for arm, (n, events) in PILOT_ARMS.items():
        assert int((arms == arm).sum()) == n, arm
        assert int(data.event[arms == arm].sum()) == events, arm


def test_split_sites_round_trip_gives_the_same_survival_data(
    pilot_sites: dict[str, list[Path]],
) -> None:
    loaded = {fmt: [load_bundle(p) for p in folders] for fmt, folders in pilot_sites.items()}
    assert [b.site_id for b in loaded["xpt"]] == [f"SITE{s}" for s in ROUND_TRIP_SITES]
    for xpt, csv, parquet in zip(loaded["xpt"], loaded["csv"], loaded["parquet"], strict=True):
        reference = xpt.survival_data("TTDE")
        _assert_same(reference, csv.survival_data("TTDE"))
        _assert_same(reference, parquet.survival_data("TTDE"))
        for other in (csv, parquet):
            fmt = other.files["adsl"].suffix
            assert [w.replace(".xpt", fmt) for w in xpt.warnings] == other.warnings


def test_strings_are_stripped_and_bytes_decoded(tmp_path: Path) -> None:
    adsl, adtte = toy_tables()
    adsl["SEX"] = [b"F ", b" M"] * 6
    adsl["RACE"] = ["  ASIAN ", "ASIAN", None] * 4
    adtte["PARAMCD"] = " TTDE "
    bundle = load_bundle(write_bundle(tmp_path / "b", adsl, adtte, fmt="parquet"))
    data = bundle.survival_data("TTDE")
    assert list(data.column("SEX")) == ["F", "M"] * 6
    assert list(data.column("RACE")) == ["ASIAN", "ASIAN", ""] * 4
    assert bundle.params() == ["TTDE"]


def test_csv_identifiers_stay_text(tmp_path: Path) -> None:
    adsl, adtte = toy_tables()
    bundle = load_bundle(write_bundle(tmp_path / "b", adsl, adtte, fmt="csv"))
    assert set(bundle.adsl["SITEID"]) == {"001"}
    assert bundle.adsl["AGE"].dtype == np.float64
    assert bundle.adtte["CNSR"].dtype == np.float64


def test_site_fields_and_a_policy_with_unknown_keys_is_refused(tmp_path: Path) -> None:
    adsl, adtte = toy_tables()
    folder = write_bundle(tmp_path / "b", adsl, adtte)
    (folder / "site.toml").write_text(
        '[site]\nid = "JP01"\nname = "Osaka"\ncountry = "JP"\n\n'
        '[policy]\nmin_cell = 5\nfuture_key = {nested = "kept"}\n',
        encoding="utf-8",
    )
    with pytest.raises(UserError) as info:
        load_bundle(folder)
    message = str(info.value)
    # a misspelled key names the key it was meant to be; an unknown one the allowed set
    assert "unknown key 'min_cell' (did you mean 'min_cell_count'?)" in message
    assert "unknown key 'future_key'; allowed keys: allowed_analyses, min_cell_count" in message
    (folder / "site.toml").write_text(
        '[site]\nid = "JP01"\nname = "Osaka"\ncountry = "JP"\n\n[policy]\nmin_cell_count = 3\n',
        encoding="utf-8",
    )
    bundle = load_bundle(folder)
    assert (bundle.site_id, bundle.name, bundle.country) == ("JP01", "Osaka", "JP")
    assert bundle.policy == {"min_cell_count": 3}
    assert bundle.rules.min_cell_count == 3 and not bundle.rules.publish_site_estimates
    assert bundle.path == folder
    with pytest.raises(dataclasses.FrozenInstanceError):
        bundle.site_id = "other"  # type: ignore[misc]


def test_unknown_parameter_lists_the_available_ones(tmp_path: Path) -> None:
    adsl, adtte = toy_tables()
    bundle = load_bundle(write_bundle(tmp_path / "b", adsl, adtte))
    with pytest.raises(UserError, match=r"\{'TTDE'\}.*got 'OS'"):
        bundle.survival_data("OS")


def test_two_adsl_files_are_refused_naming_both(tmp_path: Path) -> None:
    adsl, adtte = toy_tables()
    folder = write_bundle(tmp_path / "b", adsl, adtte)
    adsl.to_parquet(folder / "adsl.parquet")
    with pytest.raises(UserError, match=r"adsl\.csv, adsl\.parquet"):
        load_bundle(folder)


def test_loading_an_invalid_bundle_raises_user_error(tmp_path: Path) -> None:
    adsl, adtte = toy_tables()
    adtte.loc[4, "CNSR"] = 7
    folder = write_bundle(tmp_path / "b", adsl, adtte)
    with pytest.raises(
        UserError, match=r"adtte\.csv: column CNSR, row 5: unknown censoring code 7"
    ):
        load_bundle(folder)


def test_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="site bundle folder not found"):
        load_bundle(tmp_path / "nowhere")


def test_subjects_covers_all_adsl_rows(tmp_path: Path) -> None:
    adsl, adtte = toy_tables()
    bundle = load_bundle(write_bundle(tmp_path / "b", adsl, adtte.iloc[:10]))
    subjects = bundle.subjects()
    assert list(subjects["USUBJID"]) == list(adsl["USUBJID"])
    assert set(subjects["COUNTRY"]) == {"JP"}
    assert isinstance(bundle.adsl, pd.DataFrame)


@pytest.mark.parametrize(
    "order",
    ["adsl", "reversed", "subset"],
    ids=["adsl-order", "reversed", "some-subjects"],
)
def test_survival_data_matches_each_adtte_row_to_its_subject(tmp_path: Path, order: str) -> None:
    adsl, adtte = toy_tables()
    rows = {"adsl": adtte, "reversed": adtte.iloc[::-1], "subset": adtte.iloc[[7, 2, 9]]}[order]
    other = rows.assign(PARAMCD="OS", PARAM="Overall survival", AVAL=rows["AVAL"] + 1.0)
    both = pd.concat([other, rows], ignore_index=True)  # TTDE rows follow another endpoint's
    bundle = load_bundle(write_bundle(tmp_path / "b", adsl, both))
    data = bundle.survival_data("TTDE")
    np.testing.assert_array_equal(data.time, rows["AVAL"].to_numpy(dtype=float))
    np.testing.assert_array_equal(data.event, rows["CNSR"].to_numpy() == 0)
    by_subject = adsl.set_index("USUBJID")
    np.testing.assert_array_equal(data.column("USUBJID"), rows["USUBJID"].to_numpy())
    np.testing.assert_array_equal(data.column("AGE"), by_subject.loc[rows["USUBJID"], "AGE"])
    assert list(data.column("SEX")) == list(by_subject.loc[rows["USUBJID"], "SEX"])
    assert list(data.column("SITE")) == ["TOY1"] * len(rows)


def test_survival_data_cannot_write_into_the_site_tables(tmp_path: Path) -> None:
    adsl, adtte = toy_tables()
    bundle = load_bundle(write_bundle(tmp_path / "b", adsl, adtte))
    data = bundle.survival_data("TTDE")  # ADTTE in ADSL order: the tables' own columns
    for values in (data.time, data.event, data.column("AGE"), bundle.subjects()["AGE"]):
        with pytest.raises(ValueError, match="read-only"):
            values[0] = -1
    assert bundle.adsl["AGE"].iloc[0] == 50.0 and bundle.adtte["AVAL"].iloc[0] == 10.0
