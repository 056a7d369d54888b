"""The validation rules' hash-free shortcuts (sites/check.py) never hide a problem.

A sorted key proves it has no repeats, and ADTTE ids that repeat ADSL's ids in order prove every
subject matches, without hashing a million ids. The truth they are held to is pandas' hashing
(``duplicated``, ``isin``): on random tables, sorted or not, each shortcut may only say "no
problem" where hashing finds none, and the rules must report the same problems either way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sites import check


def _ids(rng: np.random.Generator, n: int, pool: int) -> np.ndarray:
    return np.array([f"S-{int(v):03d}" for v in rng.integers(0, pool, n)], dtype=object)


@pytest.mark.parametrize("seed", range(40))
def test_strictly_increasing_only_where_no_key_repeats(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 30))
    table = pd.DataFrame({"USUBJID": _ids(rng, n, 40), "PARAMCD": _ids(rng, n, 2)})
    if seed % 2:
        table = table.sort_values(["PARAMCD", "USUBJID"])
    columns = [table[k].to_numpy() for k in ("USUBJID", "PARAMCD")]
    repeats = bool(table.duplicated().any())
    for order in (columns, columns[::-1]):
        if check._strictly_increasing(order):
            assert not repeats
    if not repeats and seed % 2:
        assert check._strictly_increasing(columns[::-1])  # sorted and unique: found at once


def test_strictly_increasing_is_false_for_values_that_do_not_compare() -> None:
    mixed = np.array(["A", np.nan, "B"], dtype=object)
    assert not check._strictly_increasing([mixed])
    assert not check._strictly_increasing([np.array([1.0, np.nan, 2.0])])


@pytest.mark.parametrize("seed", range(40))
def test_same_subjects_only_where_every_id_matches_both_ways(seed: int) -> None:
    rng = np.random.default_rng(seed)
    subjects = np.unique(_ids(rng, int(rng.integers(1, 12)), 15))
    blocks = int(rng.integers(1, 4))
    ids = np.tile(subjects, blocks)
    if seed % 3 == 1:
        ids[rng.integers(0, len(ids))] = "GHOST"
    elif seed % 3 == 2:
        ids = ids[rng.permutation(len(ids))]
    same = check.same_subjects(ids, subjects)
    if same:
        assert pd.Series(ids).isin(subjects).all() and pd.Series(subjects).isin(ids).all()
    if seed % 3 == 0:
        assert same


def _adtte(ids: list[str], params: list[str]) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "USUBJID": np.array(ids, dtype=object),
            "PARAMCD": np.array(params, dtype=object),
            "PARAM": np.array(params, dtype=object),
            "AVAL": np.arange(1.0, n + 1.0),
            "CNSR": np.zeros(n),
        }
    )


def test_sorted_adtte_with_a_repeated_key_is_still_refused() -> None:
    ids = ["S-1", "S-2", "S-2", "S-3"]  # sorted by PARAMCD, then USUBJID; S-2 twice
    problems = check.check_adtte(_adtte(ids, ["OS"] * 4), "adtte.csv")
    assert problems == [
        "adtte.csv: columns USUBJID, PARAMCD, rows 2, 3: duplicate record for USUBJID 'S-2', "
        "PARAMCD 'OS' (one row per subject and parameter)"
    ]


def test_stacked_endpoints_match_adsl_and_a_ghost_among_them_is_named() -> None:
    subjects = ["S-1", "S-2", "S-3"]
    adsl = pd.DataFrame({"USUBJID": np.array(subjects, dtype=object), "TRT01P": "A"})
    stacked = _adtte(subjects * 2, ["OS"] * 3 + ["PFS"] * 3)
    assert check.check_adtte(stacked, "adtte.csv") == []
    assert check.check_subjects(adsl, stacked, "adsl.csv", "adtte.csv") == []
    stacked.loc[4, "USUBJID"] = "GHOST"
    assert check.check_subjects(adsl, stacked, "adsl.csv", "adtte.csv") == [
        "adtte.csv: column USUBJID, row 5: subject 'GHOST' is not in adsl.csv"
    ]
    warnings = check.site_warnings(adsl, stacked, "adsl.csv", "adtte.csv")
    assert not any("have no rows" in w for w in warnings)  # S-2 still has its OS row
