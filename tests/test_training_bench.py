"""Smoke version of the training benchmark (benchmarks/training.py) on Fed-TCGA-BRCA: the six
bundles match FLamby's published region sizes and split, load as valid bundles, and a short
federated run scores the pooled test set. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

from benchmarks.tcga import PUBLISHED, features, load, write_bundles
from benchmarks.training import markdown, pooled_test, run_torch
from sites.bundle import load_bundle


def test_tcga_bundles_and_a_short_run(tcga_dir: Path, tmp_path: Path) -> None:
    sites = write_bundles(tmp_path, tcga_dir)
    bundles = [load_bundle(s) for s in sites]
    assert [len(b.adsl) for b in bundles] == list(PUBLISHED["n"])
    os_events = [int((b.survival_data("OS").event).sum()) for b in bundles]
    assert os_events == list(PUBLISHED["events"])
    assert sum(b.survival_data("OSTRAIN").n for b in bundles) == PUBLISHED["train"]
    assert sum(int((b.adsl["TESTFL"] == "Y").sum()) for b in bundles) == PUBLISHED["test"]

    names = features(load(tcga_dir))
    assert len(names) == 39 and names[0] == "AGE"
    _, test = pooled_test(tcga_dir)
    result = run_torch(sites, names, test, {"strategy": "fedavg", "rounds": 3}, seed=0)
    assert 0.6 < result["c_index"] <= 1.0
    assert set(result["bytes_per_site"]) == {f"R{k}" for k in range(6)}
    table = markdown(
        {
            "seeds": 1,
            "flamby": {"FedAdam (FLamby)": (0.842, 0.015)},
            "methods": {
                "x": {
                    **result,
                    "c_index_mean": result["c_index"],
                    "c_index_sd": 0.0,
                    "seconds_mean": 1.0,
                    "bytes_per_site_mean": 10.0,
                }
            },
        }
    )
    assert "| FedAdam (FLamby) | 0.842 | 0.015 |" in table
