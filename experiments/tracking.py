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
from typing import TYPE_CHECKING, Any

from analysis.kinds.base import Artifact
from experiments.presentation import presentations
from experiments.tracking_records import (
    analysis_metrics,
    effect_metrics,
    headline_metrics,
    history_points,
    metric_name,
    mlflow_key,
    param_value,
    plan_params,
    run_name,
    run_note,
    safe_part,
    site_params,
)

if TYPE_CHECKING:  # writing outputs imports matplotlib: only when a run completes
    from experiments.outputs import Outputs

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PACKAGES = ("trialfed", "flwr", "numpy", "pandas", "lifelines", "mlflow")
# SQLAlchemy 2.1 deprecates a loader strategy that MLflow's SQL store uses at import time.
# Show the classic model-training view (runs, params, metrics) rather than the GenAI one.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
DEFAULT_EXPERIMENT_ID = "0"
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
        plan_name: str = "",
        languages: Sequence[str] = (),
    ) -> None:
        self.study_id, self.study_title = study_id, study_title
        self.plan_name = plan_name
        self.languages = list(languages)
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
        drop_empty_default(self._client)
        tags = parent_tags(self)
        name = run_name(self.study_id, self.plan_name, self.started)
        run = self._client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.run_id = run.info.run_id
        self._open.append(run.info.run_id)
        log_batch(self._client, self.run_id, params=parent_params(self))
        log_text(self._client, self.run_id, self.plan_text, "plan.toml")

    def complete(self, results: dict[str, Any], out_dir: Path | str) -> Outputs:
        """Write every output file into ``out_dir``, log it to MLflow and finish the run.

        Sets ``results["mlflow_run_id"]`` (in place) when tracking is enabled.

        Returns
        -------
        Outputs
            The files written (:mod:`experiments.outputs`).
        """
        from experiments.outputs import write_outputs

        if self.run_id is not None:
            results["mlflow_run_id"] = self.run_id
            self._log_artifacts(results)
        provenance = {
            "prov.versions": ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            "prov.commit": self.commit or "unknown",
            "prov.uri": self.tracking_uri or "tracking disabled",
        }
        files = write_outputs(
            results,
            Path(out_dir),
            plan_text=self.plan_text,
            provenance=provenance,
            sites=self.sites,
            languages=self.languages,
        )
        clean = json.loads(files.root[0].read_text())
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

    def _child(self, name: str, tags: dict[str, str]) -> str:
        assert self._client is not None and self.experiment_id is not None
        run = self._client.create_run(
            self.experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": str(self.run_id), **tags},
        )
        self._open.append(run.info.run_id)
        return str(run.info.run_id)

    def _end_child(self, run_id: str) -> None:
        self._client.set_terminated(run_id, "FINISHED")
        self._open.remove(run_id)

    def tag(self, key: str, value: str) -> None:
        """Set a tag on the parent run (nothing when tracking is off)."""
        if self._client is not None and self.run_id is not None:
            self._client.set_tag(self.run_id, key, value)

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
    plan_name: str = "",
    languages: Sequence[str] = (),
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
        plan_name=plan_name,
        languages=languages,
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


def log_file(client: Any, run_id: str, path: Path, files: Outputs) -> None:
    """Log ``path`` into its artifact folder (``figures/``, ``tables/``, ``diagnostics/``)."""
    client.log_artifact(run_id, str(path), files.folder(path))


def drop_empty_default(client: Any) -> None:
    """Delete MLflow's automatic "Default" experiment while it holds no run: trialfed logs
    to one experiment per study, and an empty Default only confuses a reader of the UI."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    try:
        default = client.get_experiment(DEFAULT_EXPERIMENT_ID)
        if default is None or default.lifecycle_stage != "active":
            return
        runs = client.search_runs(
            [DEFAULT_EXPERIMENT_ID], run_view_type=ViewType.ALL, max_results=1
        )
        if not runs:
            client.delete_experiment(DEFAULT_EXPERIMENT_ID)
    except MlflowException:  # a store without a Default, or one that keeps it: leave it
        logger.debug("MLflow Default experiment left as it is", exc_info=True)


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
            f"**{run.study_title}** ({run.study_id}): running; the headline estimate and the "
            "report link appear here when the run completes."
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
        "plan_name": run.plan_name or "-",
        "languages": run.languages or ["en"],
    }
    params.update(plan_params(run.plan_text))
    for name, version in run.versions.items():
        params[metric_name("version", name)] = version
    return params


def _missing_ids(results: Mapping[str, Any]) -> list[str]:
    return [
        str(m.get("id") if isinstance(m, Mapping) else m) for m in results.get("sites_missing", [])
    ]


def log_results(run: TrackedRun, results: Mapping[str, Any], files: Outputs) -> None:
    """Log ``results`` and the output ``files``: the headline on the parent run, the full set
    of each analysis on a child run named by the analysis."""
    from experiments.presentation import locale_for, primary

    client, parent = run._client, str(run.run_id)
    loc = locale_for(results, run.languages[0] if run.languages else None)
    shown = presentations(results, loc)
    head = primary(results, shown)
    missing = _missing_ids(results)
    contributed = [str(s["id"]) for s in results.get("sites", []) if s.get("contributed", True)]
    for name, item in shown.items():
        a = results["analyses"][name]
        kind = str(a.get("kind"))
        child = run._child(
            name,
            {
                "trialfed.analysis": name,
                "trialfed.kind": kind,
                "trialfed.engine": run.engine,
                "mlflow.note.content": "\n\n".join([f"**{item.heading}**", *item.lines]),
            },
        )
        child_params = {k: v for k, v in item.params.items() if v is not None}
        metrics = analysis_metrics(item)
        child_metrics = [(k, v, 0) for k, v in metrics.items()] + history_points(item)
        child_tags = {}
        if "converged" in a:
            child_tags["trialfed.converged"] = a.get("converged")
        if a.get("refused"):
            child_tags["trialfed.refused"] = "true"
        log_batch(client, child, params=child_params, metrics=child_metrics, tags=child_tags)
        for path in files.by_analysis.get(name, []):
            log_file(client, child, path, files)
        run._end_child(child)
    status = "finished" if not missing else f"finished, {len(missing)} site(s) missing"
    tags = {
        "trialfed.sites_contributed": ",".join(contributed),
        "trialfed.sites_missing": ",".join(missing) or "none",
        "trialfed.status": status,
        "trialfed.rounds": results.get("rounds"),
        "trialfed.seconds": results.get("seconds"),
        "trialfed.primary_analysis": head.analysis if head else "none",
        "mlflow.note.content": run_note(results, head, loc, run.experiment_id, parent),
    }
    if head is not None:
        headline = effect_metrics(head.effects)
    else:  # no treatment effect: what each kind marks as its headline
        headline = {k: v for n, item in shown.items() for k, v in headline_metrics(n, item).items()}
    log_batch(client, parent, metrics=[(k, v, 0) for k, v in headline.items()], tags=tags)
    for path in files.all():
        log_file(client, parent, path, files)
