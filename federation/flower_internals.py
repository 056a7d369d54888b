"""Every Flower name outside Flower's public API that trialfed uses, in one module.

Flower's public API (``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp``, ``flwr.simulation``)
keeps its names across releases; the names below are Flower's own plumbing and may move or
change in any release. trialfed imports them here and nowhere else, and
``tests/test_flower_internals.py`` imports each one and checks the signatures used, so a Flower
upgrade fails there first, with the name that moved. Written against flwr 1.42.

Names, what trialfed uses them for, and what breaks when they change:

``ClientAppException`` (``flwr.clientapp.client_app``)
    :class:`federation.process_backend.ProcessBackend` raises it when a site's worker dies, so
    the runtime turns it into an error reply as it does for a failing ClientApp. Breaks: a dead
    worker stops the runtime thread instead of failing one site's reply.
``PARTITION_ID_KEY`` (``flwr.common.constant``)
    The node-config key holding a virtual SuperNode's partition id: the backend maps it to the
    site's worker. Breaks: every message fails with a KeyError in the backend.
``SUPERLINK_NODE_ID`` (``flwr.common.constant``)
    The ServerApp's node id in :class:`TaskIdentity`. Breaks: the LinkState refuses the
    ServerApp's messages ("Invalid source node ID").
``Backend``, ``BackendConfig`` (``flwr.server.superlink.fleet.vce.backend``)
    The Simulation Runtime's backend interface that ``ProcessBackend`` implements (``build``,
    ``num_workers``, ``is_worker_idle``, ``process_message``, ``terminate``). Breaks: the
    runtime calls methods the backend does not have.
``run_api``, ``_register_nodes``, ``_register_node_info_stores`` (``...fleet.vce.vce_api``)
    The Simulation Runtime's loop (message extractor and worker threads) and its node set-up,
    called as Flower's own ``start_vce`` calls them, with trialfed's backend. The two
    registration helpers are private: no public function creates virtual nodes with their
    partition ids and run contexts. Breaks: a TypeError or AttributeError at run start.
``VceMetrics`` (``...fleet.vce.metrics``)
    The metrics object ``run_api`` requires. Breaks: ``run_api``'s call.
``run_serverapp`` (``flwr.server.run_serverapp.run``)
    Runs a loaded ServerApp against a Grid, as ``run_simulation`` does. Breaks: the
    ServerApp does not start.
``LinkState``, ``LinkStateFactory``, ``InMemoryLinkState`` (``flwr.server.superlink.linkstate``)
    The in-memory message store. :mod:`federation.linkstate` subclasses the last two and relies
    on their attributes ``lock``, ``message_ins_store``, ``_check_stored_messages``,
    ``state_instance``, ``_state_lock``, ``database``, ``federation_manager`` and
    ``objectstore_factory`` (checked by the test). Breaks: messages are not delivered, or are
    delivered twice. The run itself is created with the public ``LinkState.create_run``.
``InMemoryGrid`` (``flwr.superlink.grid``)
    The ServerApp's Grid over the in-memory LinkState. Breaks: the ServerApp cannot send.
``NoOpFederationManager`` (``flwr.superlink.federation``), ``ObjectStoreFactory``
(``flwr.supercore.object_store``), ``FLWR_IN_MEMORY_DB_NAME``, ``NOOP_FEDERATION_ID``,
``TaskType`` (``flwr.supercore.constant``)
    What a LinkStateFactory is built from and what a simulated run is registered under.
    Breaks: the state cannot be built, or its nodes are not in the run's federation.
``Run`` (``flwr.supercore.run``)
    The run record the Grid and the node contexts carry.
``TaskIdentity`` (``flwr.supercore.task_identity``)
    Process-wide identity that ``Message(...)`` stamps on every message the ServerApp creates;
    set before the ServerApp runs, as ``run_simulation`` does. Breaks: "TaskIdentity.run_id is
    not set" on the first message.
``message_to_proto``, ``message_from_proto``, ``recorddict_to_proto`` (``flwr.common.serde``)
    :class:`federation.local_grid.LocalGrid` round-trips messages through protobuf as a real
    link does; :mod:`federation.training` counts the bytes a site receives and sends. Breaks:
    in-process training tests and the bytes-per-site figures.
``now`` (``flwr.supercore.date``)
    The timestamp Flower writes to ``delivered_at``; :mod:`federation.linkstate` writes the same.

Secure aggregation (:mod:`federation.secure`, :mod:`federation.secure_client`): SecAgg+ exists
only in Flower's legacy API (``flwr.server``, ``flwr.client``, ``flwr.common``), outside the
Message API above, so every name it needs is here:

``SecAggPlusWorkflow`` (``flwr.server.workflow``), ``LegacyContext``, ``ClientManager``
(``flwr.server``), ``Strategy`` (``flwr.server.strategy``), ``ClientProxy``
(``flwr.server.client_proxy``)
    The coordinator's four SecAgg+ stages. The workflow needs a ``LegacyContext`` whose strategy
    names the sites (``configure_fit``) and receives the unmasked result (``aggregate_fit``).
    Breaks: a secure round cannot start (TypeError), or its result never reaches the protocol.
``secaggplus_mod`` (``flwr.client.mod``)
    The site's side of the four stages: keys, shares, masking of the FitRes parameters. Breaks:
    the site answers no stage.
``FitIns``, ``FitRes``, ``EvaluateIns``, ``EvaluateRes``, ``Parameters``, ``Scalar``, ``Status``,
``Code``, ``ndarrays_to_parameters``, ``parameters_to_ndarrays``, ``bytes_to_ndarray``
(``flwr.common``)
    The legacy records the workflow and the mod exchange (the request travels in the FitIns
    config, the vector as FitRes parameters); ``bytes_to_ndarray`` reads the masked vectors a
    recording coordinator keeps (tests).
``quantize``, ``dequantize`` (``flwr.common.secure_aggregation.quantization``)
    SecAgg+'s quantisation, which :mod:`analysis.fixedpoint` relies on to carry integers exactly
    (tests check it with these functions). Breaks: sums stop being exact integers; the
    coordinator's decoding then refuses the sum (never a silent error).

``recorddict_to_fitins``, ``fitres_to_recorddict`` (``flwr.compat.common.recorddict_compat``)
    The legacy FitIns/FitRes layout of a RecordDict that ``secaggplus_mod`` reads and writes: the
    site reads its request from the FitIns config and returns its vector as FitRes parameters.
    Breaks: the site cannot read the secure request, or the mod finds no parameters to mask.
``GridClientProxy`` (``flwr.server.compat.grid_client_proxy``)
    The ClientProxy a Strategy's ``configure_fit`` returns; the workflow reads its ``node_id``.
    Breaks: ``configure_fit`` cannot name the sites.
``MAIN_CONFIGS_RECORD``, ``MAIN_PARAMS_RECORD``, ``WorkflowKey`` (``flwr.server.workflow.
constant``)
    Where the workflow reads the round number and the current parameters in the context's state.
    Breaks: a KeyError when a secure round starts.
``RECORD_KEY_CONFIGS``, ``SecAggKey``, ``Stage`` (``flwr.common.secure_aggregation.
secaggplus_constants``)
    The record and keys of the SecAgg+ stage messages: the site's guard reads the stage and the
    setup configuration (participants, shares, threshold, ranges) before ``secaggplus_mod`` does,
    and the coordinator's stage records name the stage a site dropped out in. Breaks: every
    secure message is refused by the guard (it finds no stage).
The deployment engine's site runner, stale-connection clean-up and past results
(:mod:`federation.deployment.flower_site` says, for each, why and what breaks on upgrade):
``RuntimeHttpClient``, the Runtime API requests (``AcquireTaskRequest``, ``PullTaskInputRequest``,
``PullAppMessagesRequest``, ``SendTaskHeartbeatRequest``), their interceptors
(``RuntimeTokenHttpInterceptor``, ``RuntimeVersionHttpInterceptor``,
``SuperExecAuthHttpInterceptor``), ``push_message``, ``push_task_output``, ``HeartbeatSender``,
``SubStatus``, ``context_from_proto``, ``fab_from_proto``, ``Node``, the inflatable-object
pulls (``pull_and_inflate_object_from_tree``, ``make_pull_object_fn_protobuf``,
``make_confirm_message_received_fn_protobuf``), ``FleetHttpClient``,
``NodeAuthHttpInterceptor``, ``DeactivateNodeRequest``, ``ControlHttpClient`` and
``ListRunsRequest``.

``pseudo_rand_gen`` (``flwr.common.secure_aggregation.secaggplus_utils``, imported by name into
``secaggplus_mod`` and ``secaggplus_workflow``)
    SecAgg+'s mask generator. Flower 1.42 folds each 32-byte seed into 32 bits and draws the mask
    from numpy's Mersenne Twister, so a coordinator could search 2**32 seeds per mask.
    :func:`use_strong_masks` (called on import, at the sites and at the coordinator alike, so
    masks still cancel) puts :func:`chacha20_masks` in its place: ChaCha20 keyed by the SHA-256
    of the whole seed. Breaks: if Flower renames or moves it, the import here fails (loudly);
    if Flower stops calling it by these module names, masks fall back to Flower's generator at
    both ends (sums stay exact; ``tests/test_flower_internals.py`` checks the names are ours).

``ErrorCode`` (``flwr.common.constant``)
    The code of the error reply a site sends when it refuses to take part in a secure sum.

Deployed round time (:mod:`federation.deployment.supernode`, :mod:`federation.server_app`):

``flower_supernode`` (``flwr.supernode.cli``), the module ``flwr.supernode.start_client_internal``
(its names ``time``, ``_pull_and_store_message`` and ``pull_objects``) and
``flwr.superlink.grid.http_grid.pull_objects``
    Flower 1.42 hard-codes a SuperNode's waits (3 s after an empty fetch, 0.5 s checks for a
    reply) and a 1 s first retry for a message object not yet stored, at a SuperNode and in
    the deployed ServerApp's Grid alike: 3-4 s of every deployed round. No option sets them.
    :func:`use_prompt_supernode_polling` and :func:`use_prompt_object_pulls` replace those
    module names (the loops read them at each call); ``TRIALFED_STOCK_FLOWER_POLLING=1`` skips
    both. Breaks: an ImportError before the SuperNode or the run starts if a name goes
    (``tests/test_flower_internals.py`` checks them and that the waits are still Flower's);
    a changed wait makes the round as slow as Flower's, never wrong.
    The ServerApp's Grid also waits for a reply's objects up to 500 times (about 50 s at the
    prompt waits, hours at Flower's) when a site stopped between registering its reply and
    sending its data, and the other replies wait with it: :func:`object_pulls_until` bounds
    those waits by the round's deadline (:func:`use_round_bounded_object_pulls`, stock
    polling included). ``pull_objects``, ``ObjectUnavailableError`` and ``ObjectPullError``
    (``flwr.supercore.inflatable.inflatable_utils``) are imported for its test.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.app import Context, RecordDict, UserConfig
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import PARTITION_ID_KEY, SUPERLINK_NODE_ID, ErrorCode, SubStatus
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen as flower_pseudo_rand_gen,  # Flower's own, before use_strong_masks
)
from flwr.common.serde import (
    context_from_proto,
    fab_from_proto,
    message_from_proto,
    message_to_proto,
    recorddict_to_proto,
)
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins
from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=E0611
from flwr.proto.fleet_pb2 import DeactivateNodeRequest  # pylint: disable=E0611
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.server import ClientManager, LegacyContext
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.run_serverapp import run as run_serverapp
from flwr.server.strategy import Strategy
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import LinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import ServerApp
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID, TaskType
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.date import now
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectPullError,
    ObjectUnavailableError,
    pull_and_inflate_object_from_tree,
    pull_objects,
)
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid
from flwr.supernode.cli import flower_supernode
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

__all__ = [
    "ObjectPullError",
    "ObjectUnavailableError",
    "pull_objects",
    "flower_pseudo_rand_gen",
    "flower_supernode",
    "SubStatus",
    "context_from_proto",
    "fab_from_proto",
    "ListRunsRequest",
    "DeactivateNodeRequest",
    "Node",
    "AcquireTaskRequest",
    "PullAppMessagesRequest",
    "PullTaskInputRequest",
    "SendTaskHeartbeatRequest",
    "ControlHttpClient",
    "HeartbeatSender",
    "make_confirm_message_received_fn_protobuf",
    "make_pull_object_fn_protobuf",
    "pull_and_inflate_object_from_tree",
    "RuntimeTokenHttpInterceptor",
    "RuntimeVersionHttpInterceptor",
    "SuperExecAuthHttpInterceptor",
    "RuntimeHttpClient",
    "FleetHttpClient",
    "NodeAuthHttpInterceptor",
    "push_message",
    "push_task_output",
    "FLWR_IN_MEMORY_DB_NAME",
    "MAIN_CONFIGS_RECORD",
    "MAIN_PARAMS_RECORD",
    "NOOP_FEDERATION_ID",
    "PARTITION_ID_KEY",
    "RECORD_KEY_CONFIGS",
    "SUPERLINK_NODE_ID",
    "Backend",
    "BackendConfig",
    "ClientAppException",
    "ClientManager",
    "ClientProxy",
    "Code",
    "ErrorCode",
    "EvaluateIns",
    "EvaluateRes",
    "FitIns",
    "FitRes",
    "GridClientProxy",
    "InMemoryGrid",
    "InMemoryLinkState",
    "LinkState",
    "LegacyContext",
    "LinkStateFactory",
    "NoOpFederationManager",
    "ObjectStoreFactory",
    "Parameters",
    "Run",
    "Scalar",
    "SecAggKey",
    "SecAggPlusWorkflow",
    "Stage",
    "Status",
    "Strategy",
    "TaskIdentity",
    "TaskType",
    "VceMetrics",
    "WorkflowKey",
    "bytes_to_ndarray",
    "create_run",
    "dequantize",
    "fitres_to_recorddict",
    "in_memory_grid",
    "in_memory_state_factory",
    "message_from_proto",
    "message_to_proto",
    "recorddict_to_proto",
    "ndarrays_to_parameters",
    "now",
    "parameters_to_ndarrays",
    "quantize",
    "recorddict_to_fitins",
    "register_virtual_nodes",
    "run_runtime",
    "run_serverapp",
    "secaggplus_mod",
    "serve",
    "vce_api",
]


def in_memory_state_factory(
    factory: type[LinkStateFactory] = LinkStateFactory,
) -> LinkStateFactory:
    """An in-memory LinkState factory of class ``factory``, as ``run_simulation`` builds one."""
    return factory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())


def create_run(state: LinkState) -> Run:
    """Register a run (and its primary task) in ``state``; set this process's task identity.

    Uses the public ``LinkState.create_run``; Flower's ``run_simulation`` writes the run and
    task records into the in-memory state's dictionaries instead.
    """
    run_id = state.create_run(
        fab_id=None,
        fab_version=None,
        fab_hash=None,
        override_config=UserConfig(),
        federation_id=NOOP_FEDERATION_ID,
        federation_config=None,
        flwr_aid=None,
        primary_task_type=TaskType.SERVER_APP,
    )
    if not run_id:
        raise RuntimeError("Flower's LinkState did not create the simulation run")
    (run,) = state.get_run_info(run_ids=[run_id])
    if run.primary_task_id is None:
        raise RuntimeError(f"Flower's run {run_id} has no primary task")
    # Every Message the ServerApp builds is stamped with this identity.
    TaskIdentity.task_id, TaskIdentity.run_id = run.primary_task_id, run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    return run


def in_memory_grid(state_factory: LinkStateFactory, run: Run, pull_interval: float) -> InMemoryGrid:
    """The ServerApp's Grid over ``state_factory``'s state, bound to ``run``."""
    grid = InMemoryGrid(state_factory=state_factory, pull_interval=pull_interval)
    grid.set_run(run)
    return grid


def register_virtual_nodes(
    count: int, state_factory: LinkStateFactory, run: Run
) -> tuple[dict[int, int], dict[int, Any]]:
    """``count`` virtual SuperNodes: node id -> partition id, and their run-info stores.

    Flower's private ``vce_api`` helpers: no public function does this (see the module notes).
    """
    nodes: dict[int, int] = vce_api._register_nodes(count, state_factory)
    stores: dict[int, Any] = vce_api._register_node_info_stores(nodes, run, None)
    return nodes, stores


def run_runtime(
    client_app: ClientApp,
    backend: Backend,
    nodes: dict[int, int],
    state_factory: LinkStateFactory,
    stores: dict[int, Any],
    stop: threading.Event,
) -> None:
    """The Simulation Runtime's loop (``vce_api.run_api``) until ``stop`` is set."""
    app_fn: Callable[[], ClientApp] = lambda: client_app  # noqa: E731
    backend_fn: Callable[[], Backend] = lambda: backend  # noqa: E731
    vce_api.run_api(app_fn, backend_fn, nodes, state_factory, stores, stop, VceMetrics())


def serve(grid: InMemoryGrid, run: Run, server_app: ServerApp) -> None:
    """Run the loaded ``server_app`` against ``grid`` in this thread, with an empty context."""
    context = Context(run.run_id, 0, UserConfig(), RecordDict(), UserConfig())
    run_serverapp(grid=grid, context=context, server_app_dir="", loaded_server_app=server_app)


MASK_MODULES = (
    "flwr.common.secure_aggregation.secaggplus_utils",
    "flwr.client.mod.secure_aggregation.secaggplus_mod",
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
)
"""The modules that call SecAgg+'s mask generator by the name ``pseudo_rand_gen``."""
_MASK_KEY_LABEL = b"trialfed secagg+ mask v1:"


def chacha20_masks(
    seed: bytes, num_range: int, dimensions_list: Sequence[tuple[int, ...]]
) -> list[np.ndarray]:
    """SecAgg+ masks (Flower's ``pseudo_rand_gen`` signature) from the WHOLE seed.

    The key stream of ChaCha20, keyed by the SHA-256 of the seed, read as little-endian 64-bit
    words, each taken modulo ``num_range`` (a bias below ``num_range / 2**64``; none for a power
    of two). Same seed, same masks, at every site and at the coordinator.
    """
    key = hashlib.sha256(_MASK_KEY_LABEL + bytes(seed)).digest()
    sizes = [int(np.prod(shape)) if len(shape) else 1 for shape in dimensions_list]
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(8 * sum(sizes))), dtype="<u8")
    values = (words % np.uint64(num_range)).astype(np.int64)
    out, start = [], 0
    for shape, size in zip(dimensions_list, sizes, strict=True):
        out.append(values[start : start + size].reshape(shape))
        start += size
    return out


def use_strong_masks() -> None:
    """Make SecAgg+ draw its masks with :func:`chacha20_masks` (see the module notes)."""
    for name in MASK_MODULES:
        module = importlib.import_module(name)
        if not hasattr(module, "pseudo_rand_gen"):
            raise ImportError(f"{name} has no pseudo_rand_gen: Flower's SecAgg+ changed")
        setattr(module, "pseudo_rand_gen", chacha20_masks)  # noqa: B010 - a module attribute


SUPERNODE_IDLE_S = 3
"""Flower 1.42's SuperNode sleeps this long after every fetch that found no message."""
SUPERNODE_CHECK_S = 0.5
"""... and looks for the site's reply (and each reply object) at this interval."""
SUPERNODE_LOOP = "flwr.supernode.start_client_internal"
COORDINATOR_GRID = "flwr.superlink.grid.http_grid"
"""The two modules that pull a message's objects with Flower's ``pull_objects``: a site's
SuperNode (the coordinator's messages) and the deployed ServerApp's Grid (the sites' replies)."""


class SuperNodeClock:
    """The ``time`` a site's SuperNode loop sees: its two fixed waits made prompt.

    After a fetch that found a message, the SuperNode asks again after ``first_s`` seconds,
    then after waits growing by half each time up to ``idle_cap_s``: the next round's message,
    sent a moment after this site replied, is fetched within a fraction of a second, while an
    idle site asks no more often than every ``idle_cap_s``. A reply is looked for every
    ``check_s``. Every other use of ``time`` is the real module.
    """

    def __init__(self, first_s: float, idle_cap_s: float, check_s: float) -> None:
        self.first_s, self.idle_cap_s, self.check_s = first_s, idle_cap_s, check_s
        self.next_idle_s = idle_cap_s

    def message_received(self) -> None:
        """Poll promptly again: the next round is likely on its way."""
        self.next_idle_s = self.first_s

    def sleep(self, seconds: float) -> None:
        """Flower's fixed waits replaced (see the class notes); any other wait kept."""
        if seconds == SUPERNODE_IDLE_S:
            seconds = self.next_idle_s
            self.next_idle_s = min(self.idle_cap_s, self.next_idle_s * 1.5)
        elif seconds == SUPERNODE_CHECK_S:
            seconds = self.check_s
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def use_prompt_supernode_polling(clock: SuperNodeClock) -> None:
    """Make this process's SuperNode loop wait by ``clock`` (call before ``flower_supernode``).

    Flower 1.42 hard-codes the waits (``flwr/supernode/start_client_internal.py``: ``sleep(3)``
    after an empty fetch, ``sleep(0.5)`` before a reply is ready); no option sets them. The loop
    reads the module names ``time`` and ``_pull_and_store_message`` at each call, so both are
    replaced here. Breaks (ImportError here, before the SuperNode starts) if either goes; a
    changed wait only makes the SuperNode as slow as Flower's.
    """
    module = importlib.import_module(SUPERNODE_LOOP)
    pull = getattr(module, "_pull_and_store_message", None)
    if pull is None or getattr(module, "time", None) is not time:
        raise ImportError(f"{SUPERNODE_LOOP} changed: no prompt polling")

    def pull_and_note(*args: Any, **kwargs: Any) -> int | None:
        run_id: int | None = pull(*args, **kwargs)
        if run_id is not None:
            clock.message_received()
        return run_id

    setattr(module, "time", clock)  # noqa: B010 - module attributes
    setattr(module, "_pull_and_store_message", pull_and_note)  # noqa: B010


OBJECT_PULL_GRACE_S = 1.0
"""How long a pull for replies made at or after its round's deadline may still wait for the
objects of a reply already registered: long enough for data in flight on loopback or a LAN."""

_ROUND = threading.local()


@contextlib.contextmanager
def object_pulls_until(deadline: float) -> Iterator[None]:
    """Bound this thread's object pulls (through a module wrapped by
    :func:`use_round_bounded_object_pulls`) by ``deadline`` (``time.monotonic``), and at least
    :data:`OBJECT_PULL_GRACE_S`: one reply whose data never comes cannot hold up a round."""
    previous = getattr(_ROUND, "deadline", math.inf)
    _ROUND.deadline = deadline
    try:
        yield
    finally:
        _ROUND.deadline = previous


def _wrapped_pull_objects(module_name: str) -> Any:
    """The module's ``pull_objects`` wrapped once (defaults and the round's deadline added)."""
    module = importlib.import_module(module_name)
    original = getattr(module, "pull_objects", None)  # not this module's: the module's own
    if original is None:
        raise ImportError(f"{module_name} has no pull_objects: Flower changed")
    if hasattr(original, "flower_pull_objects"):  # wrapped already
        return original

    def pull_within_round(*args: Any, **kwargs: Any) -> dict[str, bytes]:
        for key, value in pull_within_round.defaults.items():  # type: ignore[attr-defined]
            kwargs.setdefault(key, value)
        deadline = getattr(_ROUND, "deadline", math.inf)
        if deadline != math.inf:
            left = deadline - time.monotonic()
            kwargs.setdefault("max_time", max(OBJECT_PULL_GRACE_S, left))
        objects: dict[str, bytes] = original(*args, **kwargs)
        return objects

    pull_within_round.flower_pull_objects = original  # type: ignore[attr-defined]
    pull_within_round.defaults = {}  # type: ignore[attr-defined]
    setattr(module, "pull_objects", pull_within_round)  # noqa: B010 - a module attribute
    return pull_within_round


def use_round_bounded_object_pulls(module_name: str) -> None:
    """Let :func:`object_pulls_until` bound the waits of ``module_name``'s ``pull_objects``
    (:data:`COORDINATOR_GRID`). Flower waits for a missing object up to 500 tries or 2 h,
    whatever the caller's timeout. Breaks (ImportError) if the name goes."""
    _wrapped_pull_objects(module_name)


def use_prompt_object_pulls(module_name: str, first_s: float, cap_s: float) -> None:
    """Ask again for a message object that is not there yet after ``first_s``, doubling to
    ``cap_s``, instead of Flower's 1 s doubling to 10 s (``PULL_INITIAL_BACKOFF``).

    A message is visible before its objects: the sender registers it, then pushes the objects,
    so a prompt receiver usually asks once too early and then waited a whole second. The
    module (:data:`SUPERNODE_LOOP` or :data:`COORDINATOR_GRID`) reads ``pull_objects`` at each
    call, so it is wrapped there (once, with :func:`use_round_bounded_object_pulls`). Breaks
    (ImportError) if the name goes.
    """
    wrapper = _wrapped_pull_objects(module_name)
    wrapper.defaults.update(initial_backoff=first_s, backoff_cap=cap_s)


use_strong_masks()
