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
from analysis.metrics import CensoringSurvival
from analysis.train_spec import TrainSpec, train_spec_from_plan
from models.features import FeatureEncoder
from sites import training
from sites.bundle import SiteBundle
from sites.queries import cached_bundle

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


def _request(message: Message, bundle_for: Callable[[Context], Path], context: Context) -> Any:
    config = _config(message)
    spec = train_spec_from_plan(str(config["plan-toml"]), str(config["analysis"]), "the plan")
    bundle = cached_bundle(bundle_for(context))
    return config, spec, bundle


def _reply(message: Message, records: dict[str, Any], site_id: str) -> Message:
    content = RecordDict({**records, SITE_KEY: ConfigRecord({"id": site_id})})
    return Message(content=content, reply_to=message)


def _refusal(message: Message, error: UserError, site: str) -> Message:
    return _reply(message, {ERROR_KEY: ConfigRecord({"message": str(error)})}, site)


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


def register_training(app: ClientApp, bundle_for: Callable[[Context], Path]) -> None:
    """Add the training handlers to ``app``; ``bundle_for(context)`` is the site's bundle folder."""

    def handler(
        work: Callable[[SiteBundle, TrainSpec, Message], dict[str, Any]],
    ) -> Callable[[Message, Context], Message]:
        def handle(message: Message, context: Context) -> Message:
            site = str(context.node_id)
            try:
                _, spec, bundle = _request(message, bundle_for, context)
                site = bundle.site_id
                return _reply(message, work(bundle, spec, message), site)
            except UserError as exc:
                return _refusal(message, exc, site)

        return handle

    app.query(STATS_ACTION)(handler(lambda b, s, _m: _stats(b, s)))
    app.train()(handler(_train))
    app.evaluate()(handler(_evaluate))


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
