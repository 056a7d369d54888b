"""One secure sum over the sites with Flower's SecAgg+ (the coordinator's side).

:class:`SecureGridTransport` adds :meth:`~SecureGridTransport.secure_sum` to the plain
:class:`~federation.transport.GridTransport`: one protocol round's requests go to the sites as the
FitIns of Flower's ``SecAggPlusWorkflow`` (setup, key sharing, masked vectors, unmasking: four
round trips), and what comes back is only the sum of the sites' vectors, the sites it covers, and
what each site sends in the clear beside its masked vector (refusals, notes, audit stamp, layout
digest). The workflow runs with each site's keys shared among :data:`SHARES` sites (all of them
in smaller federations) and a majority reconstruction threshold, so it survives dropouts while a
majority of each neighbourhood remains, and with the exact
integer encoding of :mod:`analysis.fixedpoint` (clipping range 2**21, quantisation range 2**22,
modulus 2**32, weight 1): its weighted mean times the number of sites is the exact integer sum.

Observers (:func:`observe`) see every message of every stage, as the coordinator receives it: the
tests use them to check that no per-site vector ever reaches the coordinator.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from analysis.fixedpoint import (
    CLIPPING_RANGE,
    MAX_SITES,
    MODULUS_RANGE,
    QUANTIZATION_RANGE,
    RangeError,
    sums_from_mean,
)
from federation.exchange import SiteFailure, site_outcome
from federation.flower_internals import (
    MAIN_CONFIGS_RECORD,
    MAIN_PARAMS_RECORD,
    RECORD_KEY_CONFIGS,
    ClientManager,
    ClientProxy,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GridClientProxy,
    LegacyContext,
    Parameters,
    Scalar,
    SecAggKey,
    SecAggPlusWorkflow,
    Strategy,
    WorkflowKey,
    parameters_to_ndarrays,
)
from federation.transport import GridTransport, GridView, send_and_receive

REQUEST_KEY = "trialfed-request"
"""FitIns config key of a secure round's request (JSON text)."""
REPLY_KEY = "trialfed-reply"
"""FitRes metrics key of what a site sends in the clear beside its masked vector (JSON text)."""
REFUSAL_MARKER = "TRIALFED-REFUSAL"
MIN_SITES = 3
"""Every secure sum covers at least this many sites (the sites check it too)."""
SHARES = 15
"""Sites holding a share of each site's keys (all of them when fewer): SecAgg+'s neighbourhood.
Its secret sharing costs the coordinator about sites x shares**2 per round, so a fixed odd
neighbourhood keeps a round linear in the sites (with all-to-all shares, 30 sites spent 3.7 s
per round rebuilding secrets)."""


def shares_for(sites: int) -> int:
    """Neighbourhood size for a sum over ``sites`` sites (odd when not everyone)."""
    return sites if sites <= SHARES else SHARES


_REFUSAL = re.compile(rf"{REFUSAL_MARKER} ([A-Za-z0-9+/=]+)")


@dataclass(frozen=True)
class StageEvent:
    """One SecAgg+ stage as the coordinator saw it, or (``stage == "sum"``) the unmasked sum."""

    stage: str
    sent: list[Message]
    received: list[Message]
    sums: np.ndarray | None = None


Observer = Callable[[StageEvent], None]
_OBSERVERS: list[Observer] = []


@contextlib.contextmanager
def observe(observer: Observer) -> Iterator[None]:
    """Call ``observer(event)`` for every round trip of the coordinator meanwhile (each SecAgg+
    stage, and ``query`` for a plain round), and after each secure sum with its element sums."""
    _OBSERVERS.append(observer)
    try:
        yield
    finally:
        _OBSERVERS.remove(observer)


def to_text(payload: Any) -> str:
    """JSON text of a request or clear reply (arrays as lists: floats round-trip exactly)."""

    def default(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"cannot encode {type(value).__name__}")

    return json.dumps(payload, default=default, allow_nan=True)


def refusal_reason(payload: Mapping[str, Any]) -> str:
    """An error reason that carries a site's refusal payload (:func:`refusal_from_reason`)."""
    blob = base64.b64encode(to_text(payload).encode("utf-8")).decode("ascii")
    return f"{REFUSAL_MARKER} {blob}"


def refusal_from_reason(reason: str) -> SiteFailure | None:
    """The refusal inside an error reason, or None."""
    found = _REFUSAL.search(reason)
    if found is None:
        return None
    outcome = site_outcome(json.loads(base64.b64decode(found.group(1))))
    return outcome if isinstance(outcome, SiteFailure) else None


@dataclass
class SecureSum:
    """What one secure round gives the coordinator.

    ``sums`` is the integer element sum over ``covered`` (None when the secure sum failed);
    ``clear`` holds each covered site's clear payload; ``failures`` every other site's reason.
    """

    sums: np.ndarray | None
    covered: list[int]
    clear: dict[int, dict[str, Any]]
    failures: dict[int, SiteFailure] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    message: str = ""


class _Round(Strategy):
    """The Strategy the workflow asks which sites to sample and hands the unmasked result."""

    def __init__(self, requests: Mapping[int, str], grid: Grid) -> None:
        self.requests = requests
        self.grid = grid
        self.results: list[tuple[ClientProxy, FitRes]] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
        return [
            (GridClientProxy(node, self.grid, 0), FitIns(empty, {REQUEST_KEY: text}))
            for node, text in self.requests.items()
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results = results
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None


class _StageGrid(GridView):
    """The coordinator's Grid, observed: every round trip is shown to the observers (stage
    ``query`` for a plain round), and a secure sum's stages and failures are recorded. Its
    round trips poll for replies as :func:`federation.transport.send_and_receive` does."""

    polls_fast = True  # federation.transport.send_and_receive calls send_and_receive as is

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.stages: list[str] = []
        self.failures: dict[int, SiteFailure] = {}

    def start(self) -> None:
        """Forget the previous secure sum's stages and failures."""
        self.stages, self.failures = [], {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = list(messages)
        records = sent[0].content.config_records if sent else {}
        if RECORD_KEY_CONFIGS not in records:
            received = send_and_receive(self.grid, sent, timeout or 0.0)
            for observer in list(_OBSERVERS):
                observer(StageEvent("query", sent, received))
            return received
        stage = str(records[RECORD_KEY_CONFIGS][SecAggKey.STAGE])
        self.stages.append(stage)
        started = time.monotonic()
        received = send_and_receive(self.grid, sent, timeout or 0.0)
        waited = time.monotonic() - started
        for observer in list(_OBSERVERS):
            observer(StageEvent(stage, sent, received))
        answered = set()
        for reply in received:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                reason = str(reply.error.reason)
                self.failures.setdefault(
                    node,
                    refusal_from_reason(reason) or SiteFailure(f"secure stage {stage}: {reason}"),
                )
        for message in sent:
            node = message.metadata.dst_node_id
            if node not in answered:
                self.failures.setdefault(
                    node, SiteFailure(f"secure stage {stage}: no reply within {waited:.0f} s")
                )
        return received


class SecureGridTransport(GridTransport):
    """The plain transport plus one secure sum per call (see the module docstring); every
    round trip, plain or secure, is shown to the observers."""

    def __init__(self, grid: Grid, expected_nodes: int = 0, connect_timeout: float = 60.0) -> None:
        self.stage_grid = _StageGrid(grid)
        super().__init__(self.stage_grid, expected_nodes, connect_timeout)

    def secure_sum(
        self, requests: Mapping[int, dict[str, Any]], timeout: float, number: int
    ) -> SecureSum:
        """Sum the vectors the sites compute for ``requests`` (one request per node)."""
        n = len(requests)
        if not MIN_SITES <= n <= MAX_SITES:
            return SecureSum(
                None,
                [],
                {},
                message=f"a secure sum needs {MIN_SITES} to {MAX_SITES} sites; {n} take part",
            )
        strategy = _Round({node: to_text(r) for node, r in requests.items()}, self.stage_grid.grid)
        base = Context(0, 0, {}, RecordDict(), {})
        context = LegacyContext(base, strategy=strategy)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: number}
        )
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        workflow = SecAggPlusWorkflow(
            num_shares=shares_for(n),
            reconstruction_threshold=shares_for(n) // 2 + 1,
            max_weight=1.0,
            clipping_range=CLIPPING_RANGE,
            quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS_RANGE,
            timeout=timeout,
        )
        grid = self.stage_grid
        grid.start()
        with _quiet():  # four INFO lines per round; the protocol's progress line says it all
            workflow(grid, context)
        result = _outcome(strategy, grid, requests)
        for observer in list(_OBSERVERS):
            observer(StageEvent("sum", [], [], result.sums))
        return result


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _outcome(strategy: _Round, grid: _StageGrid, requests: Mapping[int, Any]) -> SecureSum:
    if strategy.results is None:
        return SecureSum(
            None,
            [],
            {},
            grid.failures,
            grid.stages,
            f"the secure sum stopped at stage {grid.stages[-1] if grid.stages else 'setup'}",
        )
    covered = sorted(proxy.node_id for proxy, _ in strategy.results)
    clear = {
        proxy.node_id: json.loads(str(res.metrics[REPLY_KEY])) for proxy, res in strategy.results
    }
    mean = parameters_to_ndarrays(strategy.results[0][1].parameters)[0]
    failures = {node: f for node, f in grid.failures.items() if node not in covered}
    for node in requests:
        if node not in covered:
            failures.setdefault(node, SiteFailure("dropped out of the secure sum"))
    try:
        sums = sums_from_mean(mean, len(covered))
    except RangeError as exc:
        return SecureSum(None, covered, clear, failures, grid.stages, str(exc))
    return SecureSum(sums, covered, clear, failures, grid.stages)
