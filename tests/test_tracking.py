"""MLflow tracking against a real SQLite store in a temporary folder (no mocks)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experiments.tracking import artifact_root, tracked_run, tracking_uri
from experiments.tracking_records import metric_name
from experiments.ui import ui_command
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
    # MLflow's SQL store uses a loader strategy that SQLAlchemy 2.1 deprecates (third party).
    pytest.mark.filterwarnings(
        "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
    ),
]

TERM = "ARM[Financial aid]"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh SQLite tracking store shared by this module's tests (MLFLOW_TRACKING_URI set)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def _client(uri: str) -> Any:
    from experiments.tracking import _client as make

    return make(uri)


def _run(out: Path, results: dict[str, Any] | None = None, enabled: bool = True) -> Any:
    results = make_results() if results is None else results
    with tracked_run(
        study_id=STUDY_ID,
        study_title=STUDY_TITLE,
        plan_text=PLAN_TEXT,
        plan_sha256=plan_sha256(),
        sites=make_sites(),
        engine="simulation",
        enabled=enabled,
        plan_name="rossi_plan",
        languages=["en", "ja"],
    ) as run:
        run.complete(results, out)
    return run


def _no_running_runs(client: Any, experiment_id: str) -> None:
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    assert running == [], [r.info.run_name for r in running]


def test_complete_logs_params_metrics_artifacts(store: str, tmp_path: Path) -> None:
    results = make_results()
    run = _run(tmp_path / "out", results)
    client = _client(store)
    parent = client.get_run(run.run_id)
    assert parent.info.status == "FINISHED"
    assert re.fullmatch(
        rf"rossi_plan · \d{{4}}-\d\d-\d\d \d\d:\d\d · {STUDY_ID}", parent.info.run_name
    )
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == STUDY_ID
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # MLflow's automatic, empty "Default" experiment is gone from the UI
    assert [e.name for e in client.search_experiments()] == [STUDY_ID]
    params = parent.data.params
    assert params["plan_sha256"] == plan_sha256()
    assert params["plan_name"] == "rossi_plan"
    assert params["sites"] == "JP01,JP02,KR01,KR02"
    assert params["countries"] == "JP,KR"
    assert params["site/KR01/country"] == "KR"
    assert json.loads(params["site/JP01/policy"])["min_cell"] == 5
    assert params["engine"] == "simulation"
    assert params["analysis/cox_arrest/kind"] == "cox"
    assert params["run/min_sites"] == "3"
    assert {f"version/{p}" for p in ("trialfed", "flwr", "numpy", "mlflow")} <= set(params)
    tags = parent.data.tags
    assert tags["trialfed.engine"] == "simulation"
    assert tags["trialfed.sites_contributed"] == "JP01,JP02,KR01,KR02"
    assert tags["trialfed.sites_missing"] == "none"
    assert tags["trialfed.status"] == "finished"
    assert tags["trialfed.rounds"] == str(results["rounds"])
    assert tags["trialfed.primary_analysis"] == "efficacy"
    # The parent run holds the headline only: the primary estimate, its CI and p.
    efficacy = results["analyses"]["efficacy"]
    assert parent.data.metrics == pytest.approx(
        {
            "VE": efficacy["ve"],
            "VE lower": efficacy["lower"],
            "VE upper": efficacy["upper"],
            "HR": efficacy["hr"],
            "HR lower": efficacy["hr_lower"],
            "HR upper": efficacy["hr_upper"],
            "p": efficacy["p"],
        }
    )
    note = tags["mlflow.note.content"]
    assert note.startswith(f"**Vaccine efficacy, {TREATMENT} vs {REFERENCE}: ")
    assert f"{100 * efficacy['ve']:.1f}%" in note.splitlines()[0]
    assert (
        f"#/experiments/{parent.info.experiment_id}/runs/{run.run_id}/artifacts/report.html" in note
    )

    children = {
        r.data.tags["trialfed.analysis"]: r
        for r in client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run.run_id}'"
        )
    }
    assert set(children) == set(results["analyses"])
    assert {c.info.run_name for c in children.values()} == set(results["analyses"])
    assert all(c.info.status == "FINISHED" for c in children.values())
    cox_result = results["analyses"]["cox_arrest"]
    cox = children["cox_arrest"]
    key = metric_name(TERM, "hr")
    assert key == "ARM_Financial aid_/hr"
    assert cox.data.metrics[key] == pytest.approx(cox_result["terms"][TERM]["hr"])
    assert cox.data.metrics["PRIO/p"] == pytest.approx(cox_result["terms"]["PRIO"]["p"])
    assert cox.data.metrics["loglik_final"] == pytest.approx(cox_result["loglik"])
    history = client.get_metric_history(cox.info.run_id, "loglik")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3, 4, 5]
    by_step = {m.step: m.value for m in history}
    assert by_step[2] == pytest.approx(cox_result["history"][1]["loglik"])
    steps = client.get_metric_history(cox.info.run_id, "step_norm")
    assert len(steps) == len(cox_result["history"])
    lr = children["logrank_arrest"].data.metrics
    assert lr["statistic"] == pytest.approx(results["analyses"]["logrank_arrest"]["statistic"])
    ve = children["efficacy"].data.metrics
    assert ve["country/JP/hr"] == pytest.approx(efficacy["by_country"]["JP"]["hr"])

    def listing(run_id: str, folder: str | None = None) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, folder)}

    assert {"results.json", "plan.toml", "report.html", "report.ja.html"} <= listing(run.run_id)
    assert {"figures", "tables", "diagnostics"} <= listing(run.run_id)
    assert {"figures/km_arrest.png", "figures/forest_ve.svg"} <= listing(run.run_id, "figures")
    assert {f"tables/{a}.csv" for a in results["analyses"]} <= listing(run.run_id, "tables")
    assert "diagnostics/cox_arrest_convergence.png" in listing(run.run_id, "diagnostics")
    assert "tables/cox_arrest.csv" in listing(cox.info.run_id, "tables")
    assert "diagnostics/cox_arrest_convergence.svg" in listing(cox.info.run_id, "diagnostics")
    assert listing(children["km_arrest"].info.run_id, "figures") == {
        "figures/km_arrest.png",
        "figures/km_arrest.svg",
    }
    local = Path(client.download_artifacts(run.run_id, "results.json", str(tmp_path)))
    logged = json.loads(local.read_text())
    assert logged["mlflow_run_id"] == run.run_id == results["mlflow_run_id"]
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == logged
    # Artifacts live under mlartifacts/ next to the database, where `trialfed ui` serves them.
    root = artifact_root(store)
    assert root is not None and parent.info.artifact_uri.startswith(root)
    _no_running_runs(client, parent.info.experiment_id)


def test_missing_site_is_tagged(store: str, tmp_path: Path) -> None:
    results = make_results()
    results["sites"][3]["contributed"] = False
    results["sites_missing"] = ["KR02"]
    results["analyses"] = {"table1": results["analyses"]["table1"]}  # keep this test fast
    run = _run(tmp_path / "out", results)
    parent = _client(store).get_run(run.run_id)
    assert parent.data.tags["trialfed.sites_missing"] == "KR02"
    assert parent.data.tags["trialfed.sites_contributed"] == "JP01,JP02,KR01"
    assert parent.data.tags["trialfed.status"] == "finished, 1 site(s) missing"
    assert parent.data.metrics == {}  # Table 1 alone estimates no treatment effect
    assert "Sites missing: KR02" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize(
    ("exc", "status"),
    [(ValueError("site JP02 timed out"), "FAILED"), (KeyboardInterrupt(), "KILLED")],
)
def test_exception_marks_run(store: str, tmp_path: Path, exc: BaseException, status: str) -> None:
    holder: dict[str, Any] = {}
    with (
        pytest.raises(type(exc)),
        tracked_run(
            study_id=STUDY_ID,
            study_title=STUDY_TITLE,
            plan_text=PLAN_TEXT,
            plan_sha256=plan_sha256(),
            sites=make_sites(),
            engine="simulation",
        ) as run,
    ):
        holder["run"] = run
        raise exc
    client = _client(store)
    info = client.get_run(holder["run"].run_id)
    assert info.info.status == status
    assert info.data.tags["error"].startswith(type(exc).__name__)
    assert str(exc) in info.data.tags["error"]
    assert info.data.params["plan_sha256"] == plan_sha256()
    names = {a.path for a in client.list_artifacts(info.info.run_id)}
    assert {"error.txt", "plan.toml"} <= names
    _no_running_runs(client, info.info.experiment_id)


def test_block_without_complete_fails(store: str) -> None:
    with tracked_run(
        study_id=STUDY_ID,
        study_title=STUDY_TITLE,
        plan_text=PLAN_TEXT,
        plan_sha256=plan_sha256(),
        sites=make_sites(),
        engine="deployment",
    ) as run:
        pass
    info = _client(store).get_run(run.run_id)
    assert info.info.status == "FAILED"
    assert "complete() not called" in info.data.tags["error"]
    assert info.data.tags["trialfed.engine"] == "deployment"


def test_disabled_writes_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "never.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    results = make_results()
    out = tmp_path / "out"
    run = _run(out, results, enabled=False)
    assert run.run_id is None
    assert "mlflow_run_id" not in results
    assert not db.exists() and not (tmp_path / "mlartifacts").exists()
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert {"results.json", "plan.toml", "report.html", "report.ja.html"} <= names
    assert {"figures/forest_ve.png", "figures/forest_ve.svg", "figures/km_arrest.png"} <= names
    assert {f"tables/{a}.csv" for a in results["analyses"]} <= names
    assert "diagnostics/efficacy_convergence.svg" in names
    assert "mlflow_run_id" not in json.loads((out / "results.json").read_text())
    assert (out / "plan.toml").read_text() == PLAN_TEXT
    assert "not tracked" in (out / "report.html").read_text()


def test_default_store_and_ui_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_DEFAULT_ARTIFACT_ROOT", raising=False)
    uri = tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    root = artifact_root(uri)
    assert root == (tmp_path.resolve() / "mlartifacts").as_uri()
    cmd = ui_command("127.0.0.1", 5999)
    assert cmd[cmd.index("--backend-store-uri") + 1] == uri
    assert cmd[cmd.index("--default-artifact-root") + 1] == root
    assert cmd[cmd.index("--artifacts-destination") + 1] == root
    assert cmd[cmd.index("--port") + 1] == "5999"


def test_metric_names_are_sanitised() -> None:
    assert metric_name("cox", "TRT01P[T.Vaccine]", "hr") == "cox/TRT01P_T.Vaccine_/hr"
    assert metric_name("..", "a:b", "") == "_/a_b/_"
    assert metric_name("사이트", "x") == "___/x"
    assert len(metric_name("x" * 400)) == 250


def test_headline_metric_names() -> None:
    from experiments.presentation import presentations
    from experiments.tracking_records import effect_metrics, headline_metrics

    results = make_results()
    shown = presentations(results)
    cox = results["analyses"]["cox_arrest"]["terms"][TERM]
    assert effect_metrics(shown["cox_arrest"].effects) == pytest.approx(
        {"HR": cox["hr"], "HR lower": cox["hr_lower"], "HR upper": cox["hr_upper"], "p": cox["p"]}
    )
    assert effect_metrics(()) == {}
    # without a treatment effect the parent run falls back on what a kind marks as headline
    lr = results["analyses"]["logrank_arrest"]
    assert headline_metrics("logrank_arrest", shown["logrank_arrest"]) == {
        "logrank_arrest/p": pytest.approx(lr["p"])
    }
