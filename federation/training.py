"""The coordinator of federated training: Flower's strategies over a Grid.

:func:`run_training` drives one ``kind = "train"`` analysis:

1. a statistics round (``query.train_stats``): each site's feature aggregates and training event
   table; pooled here into the :class:`~models.features.FeatureEncoder` and the censoring
   distribution G (federated Kaplan-Meier) with the evaluation time grid;
2. ``rounds`` rounds of Flower's own ``FedAvg``, ``FedProx`` or ``FedAdam`` (``strategy.start``),
   optionally wrapped in ``DifferentialPrivacyServerSideFixedClipping``; the sites train in their
   ``train`` handler and evaluate the new global model in their ``evaluate`` handler every round.

A :class:`Supervisor` wraps the strategy: it fails the run (fail closed) when a site refuses,
errs or does not answer, instead of letting the strategy average whoever answered; it orders the
replies by site id so that aggregation, a floating-point sum, is the same at every run; it counts
the bytes each site receives and sends (Flower's protobuf encoding of the message content); and
it combines the sites' metric parts (:mod:`analysis.metrics`) into the per-round history.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from analysis import metrics
from analysis.errors import UserError
from analysis.kinds.train import TrainSpec
from analysis.km import EventTable, merge_event_tables
from analysis.privacy import gaussian_epsilon
from analysis.rounds import train_spec_from_plan
from federation.flower_internals import recorddict_to_proto
from federation.training_client import (
    ARRAYS_KEY,
    CONFIG_KEY,
    ERROR_KEY,
    METRICS_KEY,
    SITE_KEY,
    STATS_ACTION,
    UNIT_WEIGHT_KEY,
    WEIGHT_KEY,
)
from federation.training_outcome import TrainingOutcome, combine_round
from federation.transport import GridView
from models.features import FeatureEncoder, combine_aggregates
from models.nets import build_model

Progress = Callable[[str], None]


class TrainingFailed(UserError):
    """A site refused, failed or did not answer: the training run stops."""


def _payload_bytes(content: RecordDict) -> int:
    return int(recorddict_to_proto(content).ByteSize())


def _numbers(reply: Message) -> dict[str, float]:
    return {k: float(v) for k, v in reply.content.metric_records[METRICS_KEY].items()}  # type: ignore[arg-type]


class _PooledNodes(GridView):
    """The coordinator's Grid as the inner strategy samples it: only the pooled sites' nodes
    (a node the analysis rounds did not pool is never sent a training message)."""

    def __init__(self, grid: Grid, nodes: Iterable[int]) -> None:
        super().__init__(grid)
        self.nodes = set(nodes)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.grid.get_node_ids() if n in self.nodes]


class Supervisor(Strategy):
    """Wraps a Flower strategy: strict replies, site order, byte counts, metric history."""

    def __init__(self, inner: Strategy, sites: dict[int, str], progress: Progress | None) -> None:
        self.inner = inner
        self.sites = sites
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.bytes = {s: {"to_site": 0, "from_site": 0} for s in sites.values()}
        self._train: dict[str, dict[str, float]] = {}

    def _connected(self, grid: Grid) -> None:
        """Fail instead of waiting: Flower's node sampling waits without a limit for nodes."""
        gone = sorted(self.sites[n] for n in set(self.sites) - set(grid.get_node_ids()))
        if gone:
            raise TrainingFailed(f"site(s) {gone} are no longer connected")

    def _sent(self, messages: Iterable[Message], grid: Grid) -> list[Message]:
        out = list(messages)
        targets = {m.metadata.dst_node_id for m in out}
        if targets != set(self.sites):
            missing = sorted(self.sites[n] for n in set(self.sites) - targets)
            raise TrainingFailed(
                f"training needs every site in every round; not reached: {missing}"
            )
        for m in out:
            self.bytes[self.sites[m.metadata.dst_node_id]]["to_site"] += _payload_bytes(m.content)
        return out

    def _checked(self, replies: Iterable[Message]) -> list[Message]:
        got: dict[int, Message] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            site = self.sites.get(node, str(node))
            if reply.has_error():
                raise TrainingFailed(f"site {site} failed: {reply.error.reason}")
            if ERROR_KEY in reply.content:
                raise TrainingFailed(str(reply.content[ERROR_KEY]["message"]))
            self.bytes[site]["from_site"] += _payload_bytes(reply.content)
            got[node] = reply
        silent = sorted(self.sites[n] for n in set(self.sites) - set(got))
        if silent:
            raise TrainingFailed(f"no reply in time from site(s) {silent}")
        return [got[n] for n in sorted(got, key=lambda n: self.sites[n])]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's messages, checked to reach every site."""
        self._connected(grid)
        pooled = _PooledNodes(grid, self.sites)
        return self._sent(self.inner.configure_train(server_round, arrays, config, pooled), grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Every site's reply, in site order, aggregated by the inner strategy."""
        ordered = self._checked(replies)
        self._train = {str(r.content[SITE_KEY]["id"]): _numbers(r) for r in ordered}
        arrays, aggregated = self.inner.aggregate_train(server_round, ordered)
        if arrays is None:
            raise TrainingFailed(f"round {server_round}: the strategy did not aggregate")
        return arrays, aggregated

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's evaluation messages, checked to reach every site."""
        self._connected(grid)
        pooled = _PooledNodes(grid, self.sites)
        return self._sent(self.inner.configure_evaluate(server_round, arrays, config, pooled), grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Combine the sites' metric parts (not a weighted mean: see analysis.metrics)."""
        ordered = self._checked(replies)
        per_site = {str(r.content[SITE_KEY]["id"]): _numbers(r) for r in ordered}
        entry = combine_round(server_round, per_site, self._train)
        self.history.append(entry)
        if self.progress:
            c = entry["combined"]
            self.progress(
                f"round {server_round}: train loss {c['train_loss']:.5g}, test loss "
                f"{c['test_loss']:.5g}, Harrell C {c['harrell_c']:.4f}"
            )
        return MetricRecord({k: v for k, v in entry["combined"].items() if np.isfinite(v)})

    def summary(self) -> None:
        """The inner strategy's summary."""
        self.inner.summary()


def make_strategy(spec: TrainSpec, n_sites: int) -> Strategy:
    """Flower's strategy for ``spec`` over ``n_sites`` sites, every site in every round."""
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": n_sites,
        "min_evaluate_nodes": n_sites,
        "min_available_nodes": n_sites,
        "weighted_by_key": UNIT_WEIGHT_KEY if spec.dp else WEIGHT_KEY,
        "arrayrecord_key": ARRAYS_KEY,
        "configrecord_key": CONFIG_KEY,
    }
    strategy: Strategy
    if spec.strategy == "fedprox":
        strategy = FedProx(**common, proximal_mu=spec.proximal_mu)
    elif spec.strategy == "fedadam":
        strategy = FedAdam(**common, eta=spec.server_lr, eta_l=spec.lr)
    else:
        strategy = FedAvg(**common)
    if spec.dp is not None:
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, spec.dp.noise_multiplier, spec.dp.clip, n_sites
        )
    return strategy


def _wait_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= max(expected, 1) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(nodes) < max(expected, 1):
        raise TrainingFailed(f"{len(nodes)} site(s) connected after {timeout:g} s; need {expected}")
    return nodes


def _check_sites(site_nodes: Mapping[str, int], answered: Mapping[int, str]) -> None:
    """Each node answers as the site it answered as in the analysis rounds (a node that
    relabels itself is not pooled: the run fails)."""
    wrong = [
        f"node of site {site} answered as {answered[node]}"
        for site, node in sorted(site_nodes.items())
        if answered.get(node) != site
    ]
    if wrong:
        raise TrainingFailed("training refused: " + "; ".join(wrong))


def collect_stats(
    grid: Grid, nodes: Sequence[int], common: dict[str, Any], timeout: float
) -> dict[int, dict[str, Any]]:
    """The statistics round: each node's :func:`sites.training.site_stats` answer."""
    messages = [
        Message(
            content=RecordDict({CONFIG_KEY: ConfigRecord(dict(common))}),
            dst_node_id=node,
            message_type=f"query.{STATS_ACTION}",
        )
        for node in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    stats: dict[int, dict[str, Any]] = {}
    refusals = []
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            refusals.append(f"node {node} failed: {reply.error.reason}")
        elif ERROR_KEY in reply.content:
            refusals.append(str(reply.content[ERROR_KEY]["message"]))
        else:
            stats[node] = json.loads(str(reply.content["stats"]["json"]))
    silent = sorted(set(nodes) - set(stats) - {r.metadata.src_node_id for r in replies})
    if silent:
        refusals.append(f"no reply within {timeout:g} s from node(s) {silent}")
    if refusals:
        raise TrainingFailed("training refused:\n  - " + "\n  - ".join(refusals))
    return stats


def _initial_arrays(spec: TrainSpec, encoder: FeatureEncoder) -> ArrayRecord:
    model = build_model(spec.model, len(encoder.columns), spec.hidden, spec.seed)
    return ArrayRecord({k: Array(v.detach().numpy().copy()) for k, v in model.state_dict().items()})


def run_training(
    grid: Grid,
    plan_text: str,
    analysis: str,
    *,
    timeout: float = 120.0,
    expected_nodes: int = 0,
    progress: Progress | None = None,
    site_nodes: Mapping[str, int] | None = None,
) -> TrainingOutcome:
    """Run the ``kind = "train"`` analysis ``analysis`` of the plan over ``grid``.

    Parameters
    ----------
    site_nodes : mapping, optional
        Site id -> node id of the sites the analysis rounds pooled: training goes to these
        nodes only, and each must answer as its site. Without it, every connected node (at
        least ``expected_nodes``) takes part, as in the tests' local grids.

    Raises
    ------
    UserError
        For a bad plan; :class:`TrainingFailed` when a site refuses, fails or is silent.
    """
    started = time.perf_counter()
    spec = train_spec_from_plan(plan_text, analysis, "the plan")
    if site_nodes:  # the sites the analysis rounds pooled, on the nodes they answered from
        nodes = sorted(site_nodes.values())
    else:
        nodes = _wait_nodes(grid, expected_nodes, timeout)
    common = {"plan-toml": plan_text, "analysis": analysis}
    stats = collect_stats(grid, nodes, common, timeout)
    sites = {node: str(stats[node]["site"]) for node in nodes}
    if site_nodes:
        _check_sites(site_nodes, sites)
    order = sorted(nodes, key=lambda n: sites[n])
    try:
        encoder = combine_aggregates([stats[n]["features"] for n in order], spec.features)
    except ValueError as exc:
        raise UserError(f"analysis {analysis!r}: {exc}") from None
    table = merge_event_tables(EventTable.from_dict(stats[n]["event_table"]) for n in order)
    censoring = metrics.censoring_survival(table)
    time_grid, tau = metrics.evaluation_grid(table)
    if spec.model == "logistic":
        time_grid, tau = np.asarray([spec.landmark]), spec.landmark
    common["encoder"] = json.dumps(encoder.to_dict())
    train_config = ConfigRecord(dict(common))
    evaluate_config = ConfigRecord(
        {
            **common,
            "censoring-time": [float(t) for t in censoring.time],  # binary: 8 bytes a value
            "censoring-survival": [float(g) for g in censoring.survival],
            "grid": [float(t) for t in time_grid],
            "tau": float(tau),
        }
    )
    supervisor = Supervisor(make_strategy(spec, len(nodes)), sites, progress)
    flwr_logger = logging.getLogger("flwr")
    level, rng_state = flwr_logger.level, np.random.get_state()  # noqa: NPY002
    flwr_logger.setLevel(logging.WARNING)  # the strategy logs every step at INFO
    # Flower's DP noise draws from numpy's global generator: seeded here, restored after
    np.random.seed(spec.seed % 2**32)  # noqa: NPY002
    try:
        result = supervisor.start(
            grid,
            _initial_arrays(spec, encoder),
            num_rounds=spec.rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
        )
    finally:
        np.random.set_state(rng_state)  # noqa: NPY002
        flwr_logger.setLevel(level)
    privacy = None
    if spec.dp is not None:
        privacy = gaussian_epsilon(spec.dp.noise_multiplier, spec.rounds, spec.dp.delta)
    return TrainingOutcome(
        spec=spec,
        encoder=encoder,
        state={k: result.arrays[k].numpy() for k in result.arrays},
        sites=[sites[n] for n in order],
        site_sizes={sites[n]: {k: stats[n][k] for k in ("n_train", "n_test")} for n in order},
        history=supervisor.history,
        privacy=privacy,
        bytes=supervisor.bytes,
        seconds=time.perf_counter() - started,
        evaluation={"tau": float(tau), "grid": [float(t) for t in time_grid]},
        disclosure=[
            {"site": sites[n], "analysis": analysis, **note}
            for n in order
            for note in stats[n].get("disclosure", [])
        ],
    )
