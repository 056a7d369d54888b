"""MLflow tracking of federated runs (``trialfed ui`` serves the same store: :mod:`experiments.ui`).

One parent run per plan execution (experiment = study id) holds the provenance (plan, sites,
versions, git commit, engine), the headline metrics of every analysis and all output files; one
nested child run per analysis holds its key numbers, its Cox convergence by round and its figures.

The store is ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the current directory, with
artifacts in ``mlartifacts/`` next to the database (``$MLFLOW_DEFAULT_ARTIFACT_ROOT`` overrides);
``trialfed ui`` serves that same store and artifact root. MLflow is imported lazily.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from analysis.kinds.base import Artifact
from experiments.presentation import presentations
from experiments.tracking_records import (
    analysis_metrics,
    finite_or_none,
    headline_metrics,
    history_points,
    metric_name,
    mlflow_key,
    param_value,
    plan_params,
    safe_part,
    site_params,
)

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PACKAGES = ("trialfed", "flwr", "numpy", "pandas", "lifelines", "mlflow")
# SQLAlchemy 2.1 deprecates a loader strategy that MLflow's SQL store uses at import time.
# Show the classic model-training view (runs, params, metrics) rather than the GenAI one.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
SQLALCHEMY_NOLOAD_WARNING = r"The ``noload`` loader strategy is deprecated"


def tracking_uri() -> str:
    """The configured store: ``$MLFLOW_TRACKING_URI`` or an absolute ``sqlite:///.../mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("/"):
            uri = "sqlite:///" + str(Path(path).resolve())
    elif "://" not in uri:  # a plain folder: MLflow's file store
        uri = Path(uri).resolve().as_uri()
    return uri


def artifact_root(uri: str) -> str | None:
    """Where runs of a database store keep artifacts (a ``file://`` URI); None when the store
    decides itself (file store, tracking server)."""
    if os.environ.get("MLFLOW_DEFAULT_ARTIFACT_ROOT"):
        return os.environ["MLFLOW_DEFAULT_ARTIFACT_ROOT"]
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///") :].split("?", 1)[0]
        base = Path(db).parent if db and db != ":memory:" else Path.cwd()
        return (base.resolve() / ARTIFACT_DIR).as_uri()
    if uri.split(":", 1)[0].split("+", 1)[0] in {"postgresql", "mysql", "mssql"}:
        return (Path.cwd() / ARTIFACT_DIR).as_uri()
    return None


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a result ("absent" when not installed)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the repository holding this package, or None."""
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def _client(uri: str) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SQLALCHEMY_NOLOAD_WARNING)
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str, title: str, root: str | None) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = f"{root.rstrip('/')}/{safe_part(name)}" if root else None
        try:
            return str(
                client.create_experiment(
                    name,
                    artifact_location=location,
                    tags={"trialfed.study_title": title, **EXPERIMENT_TAGS},
                )
            )
        except MlflowException:  # created concurrently by another run
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return str(exp.experiment_id)


class TrackedRun:
    """Handle yielded by :func:`tracked_run`; call :meth:`complete` with the results."""

    def __init__(
        self,
        *,
        study_id: str,
        study_title: str,
        plan_text: str,
        plan_sha256: str,
        sites: Sequence[Mapping[str, Any]],
        engine: str,
        enabled: bool,
    ) -> None:
        self.study_id, self.study_title = study_id, study_title
        self.plan_text, self.plan_sha256 = plan_text, plan_sha256
        self.sites = [dict(s) for s in sites]
        self.engine = engine
        self.versions = package_versions()
        self.commit = git_commit()
        self.started = time.time()
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.tracking_uri: str | None = None
        self.finished = False
        self._client: Any = None
        self._open: list[str] = []
        if enabled:
            self._start()

    def _start(self) -> None:
        self.tracking_uri = tracking_uri()
        self._client = _client(self.tracking_uri)
        root = artifact_root(self.tracking_uri)
        self.experiment_id = _experiment_id(self._client, self.study_id, self.study_title, root)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        tags = parent_tags(self)
        run = self._client.create_run(
            self.experiment_id, run_name=f"{self.study_id} {stamp}", tags=tags
        )
        self.run_id = run.info.run_id
        self._open.append(run.info.run_id)
        log_batch(self._client, self.run_id, params=parent_params(self))
        log_text(self._client, self.run_id, self.plan_text, "plan.toml")

    def complete(self, results: dict[str, Any], out_dir: Path | str) -> dict[str, list[Path]]:
        """Write every output file into ``out_dir``, log it to MLflow and finish the run.

        Sets ``results["mlflow_run_id"]`` (in place) when tracking is enabled.

        Returns
        -------
        dict
            ``"results"``, ``"plan"``, ``"report"`` and each analysis name -> files written.
        """
        from experiments.plots import write_plots
        from experiments.report import json_ready, write_report, write_tables

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.run_id is not None:
            results["mlflow_run_id"] = self.run_id
            self._log_artifacts(results)
        clean = json_ready(results)
        files: dict[str, list[Path]] = {
            "results": [out / "results.json"],
            "plan": [out / "plan.toml"],
        }
        files["results"][0].write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
        files["plan"][0].write_text(self.plan_text)
        for name, paths in write_tables(clean, out).items():
            files.setdefault(name, []).extend(paths)
        images = write_plots(clean, out)
        for name, paths in images.items():
            files.setdefault(name, []).extend(paths)
        provenance = {
            "Versions": ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            "Git commit": self.commit or "unknown",
            "MLflow tracking URI": self.tracking_uri or "tracking disabled",
        }
        report = write_report(
            out / "report.html",
            results=clean,
            plan_text=self.plan_text,
            provenance=provenance,
            sites=self.sites,
            images=images,
        )
        files["report"] = [report]
        missing = [
            m if isinstance(m, Mapping) else {"id": str(m), "contributed": False}
            for m in clean.get("sites_missing", [])
        ]
        known = {s.get("id"): s for s in self.sites if s.get("id") is not None}
        answered = [
            {**known.get(s.get("id"), {}), **s} for s in [*clean.get("sites", []), *missing]
        ]
        self.sites = answered or self.sites
        if self._client is not None and self.run_id is not None:
            log_batch(self._client, self.run_id, params=site_params(self.sites))
            log_results(self, clean, files)
        self._terminate("FINISHED")
        return files

    def _log_artifacts(self, results: dict[str, Any]) -> None:
        """Log what the analyses declare besides tables and figures (e.g. a trained model);
        the loggers' fields (the model's URI) go into the analysis's results.json section."""
        for name, shown in presentations(results).items():
            for artifact in shown.artifacts:
                logger = ARTIFACT_LOGGERS.get(artifact.type)
                if logger is None:
                    raise ValueError(f"no logger for artifact type {artifact.type!r}")
                fields = logger(artifact, str(self.run_id), self.plan_sha256, self.tracking_uri)
                results["analyses"][name].update(fields)

    def _child(self, name: str, kind: str, tags: dict[str, str]) -> str:
        assert self._client is not None and self.experiment_id is not None
        run = self._client.create_run(
            self.experiment_id,
            run_name=f"{name} ({kind})",
            tags={"mlflow.parentRunId": str(self.run_id), **tags},
        )
        self._open.append(run.info.run_id)
        return str(run.info.run_id)

    def _end_child(self, run_id: str) -> None:
        self._client.set_terminated(run_id, "FINISHED")
        self._open.remove(run_id)

    def _terminate(self, status: str) -> None:
        """End every open run (children first) with ``status``; never raises."""
        self.finished = True
        for run_id in reversed(list(self._open)):
            try:
                self._client.set_terminated(run_id, status)
                self._open.remove(run_id)
            except Exception:  # noqa: BLE001 - best effort: a store error must not mask the cause
                logger.exception("could not mark MLflow run %s as %s", run_id, status)

    def fail(self, status: str, exc: BaseException) -> None:
        """Record ``exc`` (tag ``error``, artifact ``error.txt``); end every run as ``status``."""
        if self._client is not None and self.run_id is not None:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            text = "".join(traceback.format_exception(exc))
            try:
                self._client.set_tag(self.run_id, "error", message[:5000])
                self._client.set_tag(self.run_id, "trialfed.status", status.lower())
                log_text(self._client, self.run_id, text, "error.txt")
            except Exception:  # noqa: BLE001
                logger.exception("could not record the error on MLflow run %s", self.run_id)
        self._terminate(status)


def _log_torch_model(
    artifact: Artifact, run_id: str, plan_sha256: str, uri: str | None
) -> dict[str, Any]:
    from experiments.model_logging import log_section

    return log_section(artifact.data, artifact.name, run_id, plan_sha256, uri)


ARTIFACT_LOGGERS: dict[str, Callable[[Artifact, str, str, str | None], dict[str, Any]]] = {
    "torch-model": _log_torch_model,
}
"""How each artifact type a kind declares is logged (by type, never by kind)."""


@contextlib.contextmanager
def tracked_run(
    *,
    study_id: str,
    study_title: str,
    plan_text: str,
    plan_sha256: str,
    sites: Sequence[Mapping[str, Any]],
    engine: str,
    enabled: bool = True,
) -> Iterator[TrackedRun]:
    """Track one plan execution; the run is FINISHED, FAILED or KILLED, never left RUNNING.

    An exception inside the block marks the run FAILED (KeyboardInterrupt: KILLED) with the
    message as tag ``error`` and the traceback as artifact ``error.txt``, and propagates. A block
    that ends without :meth:`TrackedRun.complete` marks it FAILED.
    """
    run = TrackedRun(
        study_id=study_id,
        study_title=study_title,
        plan_text=plan_text,
        plan_sha256=plan_sha256,
        sites=sites,
        engine=engine,
        enabled=enabled,
    )
    try:
        yield run
    except KeyboardInterrupt as exc:
        run.fail("KILLED", exc)
        raise
    except BaseException as exc:
        run.fail("FAILED", exc)
        raise
    finally:
        if not run.finished:
            run.fail(
                "FAILED", RuntimeError("the run ended without results (complete() not called)")
            )


def log_batch(
    client: Any,
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Sequence[tuple[str, float, int]] = (),
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Log params, metrics ``(key, value, step)`` and tags in batches within MLflow's limits."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    ps = [Param(mlflow_key(k), param_value(v)) for k, v in (params or {}).items()]
    ts = [RunTag(k, str(v)[:8000]) for k, v in (tags or {}).items()]
    ms = [Metric(mlflow_key(k), v, now, step) for k, v, step in metrics]
    for i in range(0, max(len(ps), len(ts)), 100):
        client.log_batch(run_id, params=ps[i : i + 100], tags=ts[i : i + 100])
    for i in range(0, len(ms), 1000):
        client.log_batch(run_id, metrics=ms[i : i + 1000])


def log_text(client: Any, run_id: str, text: str, name: str) -> None:
    """Log ``text`` as artifact file ``name`` at the run's artifact root."""
    client.log_text(run_id, text, name)


def parent_tags(run: TrackedRun) -> dict[str, str]:
    """Tags of the parent run set at its start."""
    import getpass

    tags = {
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": "trialfed run",
        "trialfed.engine": run.engine,
        "trialfed.study": run.study_id,
        "trialfed.plan_sha256": run.plan_sha256,
        "trialfed.status": "running",
        "mlflow.note.content": (
            f"**{run.study_title}** ({run.study_id}), engine `{run.engine}`, plan sha256 "
            f"`{run.plan_sha256}`. The full report is the artifact `report.html`."
        ),
    }
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    if run.commit:
        tags["mlflow.source.git.commit"] = run.commit
    return tags


def parent_params(run: TrackedRun) -> dict[str, Any]:
    """Params of the parent run: plan, sites, policies, versions, git commit, engine."""
    params: dict[str, Any] = {
        "plan_sha256": run.plan_sha256,
        "study_id": run.study_id,
        "study_title": run.study_title,
        "engine": run.engine,
        "git_commit": run.commit or "unknown",
    }
    params.update(plan_params(run.plan_text))
    for name, version in run.versions.items():
        params[metric_name("version", name)] = version
    return params


def _missing_ids(results: Mapping[str, Any]) -> list[str]:
    return [
        str(m.get("id") if isinstance(m, Mapping) else m) for m in results.get("sites_missing", [])
    ]


def log_results(
    run: TrackedRun, results: Mapping[str, Any], files: Mapping[str, Sequence[Path]]
) -> None:
    """Log ``results`` and the output ``files`` to the parent run and one child per analysis."""
    client, parent = run._client, str(run.run_id)
    missing = _missing_ids(results)
    contributed = [str(s["id"]) for s in results.get("sites", []) if s.get("contributed", True)]
    parent_metrics: list[tuple[str, float, int]] = []
    for key in ("rounds", "seconds"):
        value = finite_or_none(results.get(key))
        if value is not None:
            parent_metrics.append((key, value, 0))
    parent_metrics += [
        ("sites_contributed", len(contributed), 0),
        ("sites_missing", len(missing), 0),
    ]
    for name, shown in presentations(results).items():
        a = results["analyses"][name]
        kind = str(a.get("kind"))
        metrics = analysis_metrics(shown)
        parent_metrics += [(k, v, 0) for k, v in headline_metrics(name, shown).items()]
        child = run._child(
            name,
            kind,
            {"trialfed.analysis": name, "trialfed.kind": kind, "trialfed.engine": run.engine},
        )
        child_params = {k: v for k, v in shown.params.items() if v is not None}
        child_metrics = [(k, v, 0) for k, v in metrics.items()] + history_points(shown)
        child_tags = {}
        if "converged" in a:
            child_tags["trialfed.converged"] = a.get("converged")
        if a.get("refused"):
            child_tags["trialfed.refused"] = "true"
        log_batch(client, child, params=child_params, metrics=child_metrics, tags=child_tags)
        for path in files.get(name, []):
            client.log_artifact(child, str(path))
        run._end_child(child)
    status = "finished" if not missing else f"finished, {len(missing)} site(s) missing"
    tags = {
        "trialfed.sites_contributed": ",".join(contributed),
        "trialfed.sites_missing": ",".join(missing) or "none",
        "trialfed.status": status,
    }
    log_batch(client, parent, metrics=parent_metrics, tags=tags)
    for paths in files.values():
        for path in paths:
            client.log_artifact(parent, str(path))
