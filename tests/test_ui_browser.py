"""End to end: a tracked run, the MLflow UI on it (`start_ui`), and headless Chromium.

The screenshots stay in tests/artifacts/ (gitignored) for a human to look at. Chromium is looked
up when the test runs: without it the test fails, unless ``TRIALFED_ALLOW_NO_BROWSER=1`` says a
machine without a browser is expected (then it skips, saying so).
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from experiments.tracking import tracked_run
from experiments.ui import start_ui, stop_ui, ui_query, wait_until_ready
from tests.browser import ARTIFACTS, find_chromium, run_chromium
from tests.results_fixture import (
    PLAN_TEXT,
    REFERENCE,
    STUDY_ID,
    STUDY_TITLE,
    TREATMENT,
    make_results,
    make_sites,
    plan_sha256,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
    ),
]


@pytest.fixture
def chromium() -> str:
    """Path of the Chromium executable, looked up now (not when the module is collected)."""
    return find_chromium()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.headers.get_content_type(), resp.read()


def _chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_chromium(chromium, profile, *args)


def test_mlflow_ui_shows_run_plots_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chromium: str
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    results = make_results()
    with tracked_run(
        study_id=STUDY_ID,
        study_title=STUDY_TITLE,
        plan_text=PLAN_TEXT,
        plan_sha256=plan_sha256(),
        sites=make_sites(),
        engine="simulation",
        plan_name="rossi_plan",
    ) as run:
        run.complete(results, tmp_path / "out")
    run_id, exp_id = run.run_id, run.experiment_id
    assert run_id is not None
    efficacy = results["analyses"]["efficacy"]
    headline = f"Vaccine efficacy, {TREATMENT} vs {REFERENCE}: {100 * efficacy['ve']:.1f}%"
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "ui.log").open("wb") as log:
        proc = start_ui("127.0.0.1", port, uri, log=log)
        try:
            wait_until_ready(base, timeout=240, proc=proc)
            status, _, body = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}")
            assert status == 200
            assert json.loads(body)["run"]["info"]["status"] == "FINISHED"
            # Artifacts through MLflow's artifact REST path, as the UI fetches them.
            status, ctype, png = _get(
                f"{base}/get-artifact?path=figures/km_arrest.png&run_uuid={run_id}"
            )
            assert (status, ctype) == (200, "image/png") and png.startswith(b"\x89PNG")
            status, ctype, html = _get(f"{base}/get-artifact?path=report.html&run_uuid={run_id}")
            assert (status, ctype) == (200, "text/html")
            assert b"Primary result" in html and run_id.encode() in html

            # The run page in the model-training view: the headline estimate in the
            # description, the child runs named by analysis.
            page = f"{base}/#/experiments/{exp_id}/runs/{run_id}?{ui_query()}"
            shot = ARTIFACTS / "mlflow_run.png"
            shot.unlink(missing_ok=True)
            res = _chromium(chromium, tmp_path / "chrome", f"--screenshot={shot}", page)
            assert shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]
            res = _chromium(chromium, tmp_path / "chrome", "--dump-dom", page)
            assert STUDY_ID in res.stdout and headline in res.stdout, res.stdout[-2000:]

            runs = f"{base}/#/experiments/{exp_id}/runs?{ui_query()}"
            shot = ARTIFACTS / "mlflow_runs.png"
            shot.unlink(missing_ok=True)
            res = _chromium(chromium, tmp_path / "chrome", f"--screenshot={shot}", runs)
            assert shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]
            res = _chromium(chromium, tmp_path / "chrome", "--dump-dom", runs)
            assert "rossi_plan" in res.stdout, res.stdout[-2000:]

            art_page = f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts/report.html"
            shot = ARTIFACTS / "mlflow_report.png"
            shot.unlink(missing_ok=True)
            res = _chromium(chromium, tmp_path / "chrome", f"--screenshot={shot}", art_page)
            assert shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]
            res = _chromium(chromium, tmp_path / "chrome", "--dump-dom", art_page)
            # The UI renders report.html in a sandboxed iframe from a blob: of the served file.
            assert 'class="mlflow-html-iframe"' in res.stdout, res.stdout[-2000:]
            assert 'src="blob:' in res.stdout
        finally:
            stop_ui(proc)
    assert proc.poll() is not None
