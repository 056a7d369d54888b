"""Shared fixtures: reference data from ../shared/data, skipped with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRIALFED_SHARED_DATA", REPO.parent / "shared" / "data"))

# Keep Flower quiet and offline in every test process and in the processes tests start.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def cdisc_dir() -> Path:
    """Folder of the public CDISC pilot ADaM XPT files (adsl.xpt, adtte.xpt)."""
    path = SHARED_DATA / "cdiscpilot01"
    if not (path / "adsl.xpt").exists() or not (path / "adtte.xpt").exists():
        pytest.skip(f"CDISC pilot data not found at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def tcga_dir() -> Path:
    """Folder of the Fed-TCGA-BRCA files (brca.csv, centers.csv, train_test_split.csv)."""
    path = SHARED_DATA / "tcga_brca"
    if not (path / "brca.csv").exists():
        pytest.skip(f"Fed-TCGA-BRCA data not found at {path} (see ../shared/data/README.md)")
    return path
