"""Shared fixtures: the reference data vendored in tests/data (see its README.md).

``TRIALFED_SHARED_DATA`` points the tests at another copy with the same layout. A missing file
is an error, never a skip: every oracle test runs on a fresh clone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TRIALFED_SHARED_DATA", REPO / "tests" / "data"))

# Keep Flower quiet and offline in every test process and in the processes tests start.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


def _data(folder: str, *names: str) -> Path:
    """``DATA / folder`` once every file in ``names`` is there; a clear error otherwise."""
    path = DATA / folder
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"reference data missing in {path}: {', '.join(missing)} "
            "(vendored in tests/data, see tests/data/README.md; TRIALFED_SHARED_DATA overrides)"
        )
    return path


@pytest.fixture(scope="session")
def cdisc_dir() -> Path:
    """Folder of the public CDISC pilot ADaM XPT files (adsl.xpt, adtte.xpt)."""
    return _data("cdiscpilot01", "adsl.xpt", "adtte.xpt")


@pytest.fixture(scope="session")
def tcga_dir() -> Path:
    """Folder of the Fed-TCGA-BRCA files (brca.csv, centers.csv, train_test_split.csv)."""
    return _data("tcga_brca", "brca.csv", "centers.csv", "train_test_split.csv")
