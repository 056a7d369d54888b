"""A Japanese (CP932), a Japanese (UTF-8, full-width) and a Korean (CP949) site in one run.

Each site writes RACE and SEX its own way (``アジア人``/``男``, ``ＡＳＩＡＮ``/``Ｍ``,
``아시아인``/``남``); after decoding, NFKC and each site's ``terminology.toml``, a Table 1 by RACE
over the federation has one group per study level, equal to the generator's own pooled rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis.errors import UserError
from analysis.plan import parse_plan
from analysis.terminology import compare_level_sets, parse_study_levels
from experiments.launch import build_results
from experiments.synth import SyntheticTrial, generate_trial, write_trial
from federation.inprocess import InProcessTransport
from federation.protocol import RunFailed, run_plan
from sites.bundle import load_bundle
from sites.terminology import site_level_sets
from tests.cdisc import write_table

TABLE1 = '[study]\nid = "T"\n[[analysis]]\nname = "t1"\nkind = "summary"\nby = "RACE"\n'


def mixed_sites(out: Path, fmt: str) -> tuple[SyntheticTrial, list[Path]]:
    """JP01 in CP932 and KR01 in CP949 with local terms; JP02 in UTF-8 with full-width codes."""
    trial = generate_trial("vaccine", subjects=300, sites=3, seed=11)
    assert [s.id for s in trial.sites] == ["JP01", "JP02", "KR01"]
    write_trial(trial, out, fmt, 0, {"JP01": "cp932", "KR01": "cp949"}, local_terms=True)
    jp02 = out / "sites" / "JP02"
    (jp02 / "terminology.toml").unlink()
    adsl = trial.adsl["JP02"].copy()
    adsl["RACE"] = "ＡＳＩＡＮ"
    adsl["SEX"] = adsl["SEX"].map({"M": "Ｍ", "F": "Ｆ"})
    write_table(adsl, jp02 / f"adsl.{fmt}", "ADSL")
    return trial, sorted((out / "sites").iterdir())


def federated_table1(sites: list[Path]) -> dict[str, Any]:
    plan = parse_plan(TABLE1)
    outcome = run_plan(plan, InProcessTransport(sites))
    table: dict[str, Any] = build_results(plan, outcome, "in-process", outcome.seconds)
    return table["analyses"]["t1"]


@pytest.mark.parametrize("fmt", ["csv", "xpt"])
def test_one_race_group_per_study_level(tmp_path: Path, fmt: str) -> None:
    trial, sites = mixed_sites(tmp_path, fmt)
    raw = (sites[0] / f"adsl.{fmt}").read_bytes()
    assert "アジア人".encode("cp932") in raw and "アジア人".encode() not in raw
    assert "아시아인".encode("cp949") in (sites[2] / f"adsl.{fmt}").read_bytes()
    result = federated_table1(sites)
    pooled = pd.concat([trial.adsl[s.id] for s in trial.sites], ignore_index=True)
    assert set(result["groups"]) == set(pooled["RACE"]) == {"ASIAN"}
    group = result["groups"]["ASIAN"]
    assert group["n"] == len(pooled)
    assert group["sex"] == pooled["SEX"].value_counts().to_dict()
    assert group["age_mean"] == pytest.approx(pooled["AGE"].mean(), rel=1e-12)


def test_an_undeclared_encoding_stops_the_run_naming_the_file_and_the_fix(
    tmp_path: Path,
) -> None:
    _, sites = mixed_sites(tmp_path, "csv")
    toml = sites[2] / "site.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('encoding = "cp949"\n', ""), "utf-8")
    with pytest.raises(UserError) as caught:
        federated_table1(sites)
    message = str(caught.value)
    assert str(sites[2]) in message and "adsl.csv: row 1, column SEX" in message
    assert 'declare encoding = "cp949" in site.toml [site]' in message


def test_a_level_outside_the_study_stops_round_one_naming_site_variable_and_value(
    tmp_path: Path,
) -> None:
    _, sites = mixed_sites(tmp_path, "csv")
    (sites[0] / "terminology.toml").unlink()  # JP01 keeps アジア人 and 男/女
    with pytest.raises((UserError, RunFailed), match=r"site JP01: RACE .*'アジア人'"):
        federated_table1(sites)


def test_the_round_one_check_finds_the_unmapped_site(tmp_path: Path) -> None:
    # What round 1 is to run once wired: each site's level sets, compared at the coordinator.
    _, sites = mixed_sites(tmp_path, "csv")
    (sites[0] / "terminology.toml").unlink()
    bundles = [load_bundle(s) for s in sites]
    per_site = {
        b.site_id: site_level_sets(b, ["RACE", "SEX", "COUNTRY", "TRT01P"]) for b in bundles
    }
    for site, country in (("JP02", "JP"), ("KR01", "KR")):
        assert per_site[site] == {
            "RACE": {"ASIAN"},
            "SEX": {"F", "M"},
            "COUNTRY": {country},
            "TRT01P": {"Placebo", "Vaccine"},
        }
    problems = compare_level_sets(per_site, parse_study_levels(None, []))
    assert len(problems) == 2
    assert problems[0].startswith(
        "site JP01: RACE has value(s) outside the study's levels: 'アジア人'"
    )
    assert problems[1].startswith(
        "site JP01: SEX has value(s) outside the study's levels: '女', '男'"
    )
