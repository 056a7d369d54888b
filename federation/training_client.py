"""ClientApp handlers of federated training: thin adapters over :mod:`sites.training`.

:func:`register_training` adds three handlers to a ClientApp:

- ``query.train_stats``: the site's feature aggregates and training event table;
- ``train``: local epochs from the received weights (Flower's strategies send these);
- ``evaluate``: losses and the site halves of the metrics for the received weights.

Every message carries the plan as TOML text and the analysis name (``config["plan-toml"]``,
``config["analysis"]``): the site parses and checks the plan itself, and its policy decides. A
refusal or bad data is a normal reply holding ``ConfigRecord({"error": message})``, which the
coordinator turns into a clear error; every reply names the site in ``ConfigRecord({"id": ...})``
under :data:`SITE_KEY` (the coordinator orders replies by it, so aggregation is deterministic).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from analysis.errors import UserError
from analysis.kinds.train import TrainSpec
from analysis.metrics import CensoringSurvival
from analysis.plan import Plan
from models.features import FeatureEncoder
from sites import audit, training
from sites.bundle import SiteBundle
from sites.node import default_audit_log
from sites.prepared import cached_bundle

STATS_ACTION = "train_stats"
"""``@app.query`` action of the statistics round (message type ``query.train_stats``)."""
CONFIG_KEY = "config"
ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
SITE_KEY = "site"
ERROR_KEY = "error"
WEIGHT_KEY = "num-examples"
UNIT_WEIGHT_KEY = "unit-weight"
"""Equal weights, for differential privacy (the noise is calibrated to an equal-weight mean)."""


def _config(message: Message) -> ConfigRecord:
    return message.content.config_records[CONFIG_KEY]


def _number(config: ConfigRecord, key: str, default: float | None = None) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"the coordinator's message has no number {key!r}; got {value!r}")
    return float(value)


def _request(message: Message, bundle: SiteBundle) -> tuple[Plan, TrainSpec]:
    config = _config(message)
    return training.authorize(bundle, str(config["plan-toml"]), str(config["analysis"]))


def _reply(message: Message, records: dict[str, Any], site_id: str) -> Message:
    content = RecordDict({**records, SITE_KEY: ConfigRecord({"id": site_id})})
    return Message(content=content, reply_to=message)


def _refusal(message: Message, error: UserError, site: str) -> Message:
    return _reply(message, {ERROR_KEY: ConfigRecord({"message": str(error)})}, site)


def _asked(message: Message) -> dict[str, Any]:
    """The audit fields of a training request (what was asked, never data)."""
    config = message.content.config_records.get(CONFIG_KEY, ConfigRecord())
    return {
        "round": config.get("server-round"),
        "asked": [
            {
                "train": str(config.get("analysis")),
                "action": message.metadata.message_type,
                "round": config.get("server-round"),
            }
        ],
    }


def _digest(reply: Message) -> dict[str, Any]:
    """What left: a digest and a count of numbers of the reply's arrays and metrics."""
    content = reply.content
    arrays = {k: {n: a.numpy() for n, a in r.items()} for k, r in content.array_records.items()}
    metrics = {k: dict(r) for k, r in content.metric_records.items()}
    return audit.released({"arrays": arrays, "metrics": metrics})


def _arrays(record: ArrayRecord) -> list[np.ndarray]:
    return [record[k].numpy() for k in record]


def _encoder(config: ConfigRecord) -> FeatureEncoder:
    return FeatureEncoder.from_dict(json.loads(str(config["encoder"])))


def _stats(bundle: SiteBundle, spec: TrainSpec) -> dict[str, Any]:
    return {"stats": ConfigRecord({"json": json.dumps(training.site_stats(bundle, spec))})}


def _train(bundle: SiteBundle, spec: TrainSpec, message: Message) -> dict[str, Any]:
    config = _config(message)
    received = message.content.array_records[ARRAYS_KEY]
    arrays, metrics = training.site_train(
        bundle,
        spec,
        _encoder(config),
        _arrays(received),
        int(_number(config, "server-round")),
        proximal_mu=_number(config, "proximal-mu", 0.0),
    )
    record = ArrayRecord({k: Array(np.asarray(a)) for k, a in zip(received, arrays, strict=True)})
    weights: dict[str, Any] = {
        WEIGHT_KEY: metrics["n"],
        UNIT_WEIGHT_KEY: 1.0,
        "local-loss": metrics["local_loss"],
    }
    return {ARRAYS_KEY: record, METRICS_KEY: MetricRecord(weights)}


def _evaluate(bundle: SiteBundle, spec: TrainSpec, message: Message) -> dict[str, Any]:
    config = _config(message)
    grid = config["grid"]
    if not isinstance(grid, list):
        raise UserError(f"the coordinator's message has no time grid; got {grid!r}")
    values = training.site_evaluate(
        bundle,
        spec,
        _encoder(config),
        _arrays(message.content.array_records[ARRAYS_KEY]),
        CensoringSurvival.from_dict(
            {"time": config["censoring-time"], "survival": config["censoring-survival"]}
        ),
        [float(t) for t in grid],
        _number(config, "tau"),
    )
    record: dict[str, Any] = {WEIGHT_KEY: values["n_test"], UNIT_WEIGHT_KEY: 1.0, **values}
    return {METRICS_KEY: MetricRecord(record)}


Handler = Callable[[Message, Context], Message]


def training_handlers(bundle_for: Callable[[Context], Path]) -> dict[str, Handler]:
    """The handlers by message type: ``query.train_stats``, ``train``, ``evaluate``."""

    def handler(
        work: Callable[[SiteBundle, TrainSpec, Message], dict[str, Any]],
    ) -> Callable[[Message, Context], Message]:
        def handle(message: Message, context: Context) -> Message:
            path = bundle_for(context)
            site, fields = path.name, _asked(message)
            try:
                bundle = cached_bundle(path)
                site = bundle.site_id
                plan, spec = _request(message, bundle)
                fields.update(plan_sha256=plan.sha256, study=plan.study_id)
                reply = _reply(message, work(bundle, spec, message), site)
                fields.update(outcome="answered", released=_digest(reply))
            except UserError as exc:
                reply = _refusal(message, exc, site)
                fields.update(outcome="refused", rule="training", message=str(exc))
            # every request is in the site's audit log before the reply leaves (fail closed)
            log = context.node_config.get("audit-log")
            try:
                audit.record(Path(str(log)) if log else default_audit_log(path), site, fields)
            except UserError as exc:
                return _refusal(message, exc, site)
            return reply

        return handle

    return {
        f"query.{STATS_ACTION}": handler(lambda b, s, _m: _stats(b, s)),
        "train": handler(_train),
        "evaluate": handler(_evaluate),
    }


def register_training(app: ClientApp, bundle_for: Callable[[Context], Path]) -> None:
    """Add the training handlers to ``app``; ``bundle_for(context)`` is the site's bundle folder."""
    handlers = training_handlers(bundle_for)
    app.query(STATS_ACTION)(handlers[f"query.{STATS_ACTION}"])
    app.train()(handlers["train"])
    app.evaluate()(handlers["evaluate"])


def bundle_from_config(bundles: Sequence[Path | str] | None = None) -> Callable[[Context], Path]:
    """``bundles[partition-id]`` (simulation) or the node config's ``bundle`` (deployment)."""
    paths = [str(Path(b).resolve()) for b in bundles] if bundles else None

    def bundle_for(context: Context) -> Path:
        if paths is not None:
            return Path(paths[int(context.node_config["partition-id"])])
        bundle = context.node_config.get("bundle")
        if not isinstance(bundle, str) or not bundle:
            raise UserError(
                "this SuperNode has no site bundle: start it with --node-config bundle=..."
            )
        return Path(bundle)

    return bundle_for


def training_client_app(bundles: Sequence[Path | str] | None = None) -> ClientApp:
    """A ClientApp with only the training handlers (tests, benchmarks, simulation)."""
    app = ClientApp()
    register_training(app, bundle_from_config(bundles))
    return app
