"""Headless Chromium for the tests: found when a test runs, started with flags that work in a
container, every call bounded by a timeout.

Without Chromium a browser test fails, unless ``TRIALFED_ALLOW_NO_BROWSER=1`` says a machine
without a browser is expected (then it skips, saying so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ALLOW_NO_BROWSER = "TRIALFED_ALLOW_NO_BROWSER"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
"""Screenshots for a human to look at (gitignored)."""


def find_chromium() -> str:
    """Path of the Chromium executable; fails (or skips, see the module) without one."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get(ALLOW_NO_BROWSER) == "1":
        pytest.skip(f"chromium is not installed and {ALLOW_NO_BROWSER}=1")
    pytest.fail(
        "chromium is not on PATH: install it (Debian: apt-get install chromium) or set "
        f"{ALLOW_NO_BROWSER}=1 to skip the browser test",
        pytrace=False,
    )


def run_chromium(
    chromium: str, profile: Path, *args: str, size: str = "1400,1000", budget_ms: int = 20000
) -> subprocess.CompletedProcess[str]:
    """One headless Chromium call (a fresh profile folder, no network beyond what is asked)."""
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        f"--virtual-time-budget={budget_ms}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
