"""Flower's private names that trialfed uses: all still there, with the signatures relied on.

A Flower upgrade that moves or reshapes one of them fails here, naming it, before a simulation
fails in some less legible way. Also: no other module imports a private Flower name.
"""

from __future__ import annotations

import ast
import inspect
import threading
from pathlib import Path

import pytest

from federation import flower_internals as flower

REPO = Path(__file__).resolve().parents[1]
PUBLIC = ("flwr.app", "flwr.serverapp", "flwr.clientapp", "flwr.simulation")
"""Flower's public API: these modules and the subpackages their ``__all__`` exports."""
PUBLIC_SUBPACKAGES = ("flwr.serverapp.strategy", "flwr.clientapp.mod")


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_every_exposed_name_imports() -> None:
    missing = [name for name in flower.__all__ if getattr(flower, name, None) is None]
    assert not missing


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        (flower.vce_api._register_nodes, ["num_nodes", "state_factory"]),
        (flower.vce_api._register_node_info_stores, ["nodes_mapping", "run", "app_dir"]),
        (
            flower.vce_api.run_api,
            [
                "app_fn",
                "backend_fn",
                "nodes_mapping",
                "state_factory",
                "node_info_stores",
                "f_stop",
                "metrics",
            ],
        ),
        (
            flower.run_serverapp,
            ["grid", "context", "server_app_dir", "server_app_attr", "loaded_server_app"],
        ),
        (flower.InMemoryGrid.__init__, ["self", "state_factory", "pull_interval"]),
        (
            flower.LinkStateFactory.__init__,
            ["self", "database", "federation_manager", "objectstore_factory"],
        ),
        (flower.Backend.__init__, ["self", "backend_config"]),
        (flower.Backend.process_message, ["self", "message", "context"]),
        (flower.Backend.build, ["self", "app_fn"]),
        (flower.InMemoryLinkState.get_message_ins, ["self", "node_id", "limit", "run_id"]),
        (flower.InMemoryLinkState.store_message_ins, ["self", "message"]),
        (flower.InMemoryLinkState._check_stored_messages, ["self", "message_ids", "run_id"]),
        (flower.Run.create_empty, ["run_id"]),
        (
            flower.SecAggPlusWorkflow.__init__,
            [
                "self",
                "num_shares",
                "reconstruction_threshold",
                "max_weight",
                "clipping_range",
                "quantization_range",
                "modulus_range",
                "timeout",
            ],
        ),
        (flower.SecAggPlusWorkflow.__call__, ["self", "grid", "context"]),
        (
            flower.LegacyContext.__init__,
            ["self", "context", "config", "strategy", "client_manager"],
        ),
        (flower.GridClientProxy.__init__, ["self", "node_id", "grid", "run_id"]),
        (flower.secaggplus_mod, ["msg", "ctxt", "call_next"]),
        (flower.recorddict_to_fitins, ["recorddict", "keep_input"]),
        (flower.fitres_to_recorddict, ["fitres", "keep_input"]),
        (flower.quantize, ["parameters", "clipping_range", "target_range"]),
        (flower.dequantize, ["quantized_parameters", "clipping_range", "target_range"]),
    ],
    ids=lambda value: getattr(value, "__qualname__", None) if callable(value) else "",
)
def test_signature(function: object, expected: list[str]) -> None:
    assert _parameters(function) == expected


def test_create_run_keywords() -> None:
    """The public ``LinkState.create_run`` keywords :func:`flower.create_run` passes."""
    used = {
        "fab_id",
        "fab_version",
        "fab_hash",
        "override_config",
        "federation_id",
        "federation_config",
        "flwr_aid",
        "primary_task_type",
    }
    assert used <= set(_parameters(flower.LinkState.create_run))
    assert "run_ids" in _parameters(flower.LinkState.get_run_info)


def test_the_secure_aggregation_records_are_named_as_the_site_expects() -> None:
    """The stage names and config keys the site's guard reads before ``secaggplus_mod``."""
    assert flower.Stage.all() == ("setup", "share_keys", "collect_masked_vectors", "unmask")
    keys = ("STAGE", "SAMPLE_NUMBER", "SHARE_NUMBER", "THRESHOLD", "CLIPPING_RANGE") + (
        "TARGET_RANGE",
        "MOD_RANGE",
        "MAX_WEIGHT",
        "SOURCE_LIST",
        "ACTIVE_NODE_ID_LIST",
    )
    assert all(isinstance(getattr(flower.SecAggKey, k), str) for k in keys)
    assert flower.RECORD_KEY_CONFIGS == "secaggplus_configs"
    assert flower.WorkflowKey.CURRENT_ROUND and flower.MAIN_CONFIGS_RECORD
    abstract = set(flower.Strategy.__abstractmethods__)
    assert abstract == {
        "initialize_parameters",
        "configure_fit",
        "aggregate_fit",
        "configure_evaluate",
        "aggregate_evaluate",
        "evaluate",
    }


def test_backend_interface_is_what_process_backend_implements() -> None:
    abstract = set(flower.Backend.__abstractmethods__)
    assert abstract <= {"build", "num_workers", "is_worker_idle", "process_message", "terminate"}


def test_the_in_memory_state_has_what_the_node_indexed_state_uses() -> None:
    """A run, two virtual nodes and their contexts, built the way the simulation builds them."""
    from federation.linkstate import NodeIndexedLinkState, NodeIndexedLinkStateFactory

    factory = flower.in_memory_state_factory(NodeIndexedLinkStateFactory)
    for attribute in ("state_instance", "_state_lock", "database", "objectstore_factory"):
        assert hasattr(factory, attribute), attribute
    state = factory.state()
    assert isinstance(state, NodeIndexedLinkState)
    for attribute in ("lock", "message_ins_store", "run_ids"):
        assert hasattr(state, attribute), attribute

    run = flower.create_run(state)
    assert flower.TaskIdentity.run_id == run.run_id
    assert run.federation_id == flower.NOOP_FEDERATION_ID
    grid = flower.in_memory_grid(factory, run, 0.01)
    assert grid.run.run_id == run.run_id
    nodes, stores = flower.register_virtual_nodes(2, factory, run)
    assert sorted(nodes.values()) == [0, 1] and set(stores) == set(nodes)
    assert state.get_nodes(run.run_id) == set(nodes)
    for node, partition in nodes.items():
        context = stores[node].retrieve_context(run.run_id)
        assert context.node_config[flower.PARTITION_ID_KEY] == partition


def test_the_runtime_stops_when_told() -> None:
    """``run_runtime`` with no messages returns once the stop event is set."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    factory = flower.in_memory_state_factory()
    run = flower.create_run(factory.state())
    nodes, stores = flower.register_virtual_nodes(1, factory, run)
    stop = threading.Event()

    class Idle(flower.Backend):
        def __init__(self) -> None:
            super().__init__({})

        def build(self, app_fn: object) -> None:
            """Nothing to build."""

        @property
        def num_workers(self) -> int:
            return 1

        def is_worker_idle(self) -> bool:
            return True

        def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
            raise AssertionError("no message was sent")

        def terminate(self) -> None:
            """Nothing to stop."""

    thread = threading.Thread(
        target=flower.run_runtime, args=(ClientApp(), Idle(), nodes, factory, stores, stop)
    )
    thread.start()
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def _flwr_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [name for name in names if name == "flwr" or name.startswith("flwr.")]


def test_no_other_module_imports_a_private_flower_name() -> None:
    allowed = set(PUBLIC) | set(PUBLIC_SUBPACKAGES)
    found = []
    for folder in ("analysis", "sites", "federation", "experiments", "models", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "federation" / "flower_internals.py":
                continue
            found += [
                f"{path.relative_to(REPO)} imports {name}"
                for name in _flwr_imports(path)
                if name not in allowed
            ]
    assert not found, "import it through federation.flower_internals:\n" + "\n".join(found)


def test_secure_aggregation_masks_come_from_the_whole_seed() -> None:
    """Flower 1.42 folds SecAgg+'s 32-byte seeds into 32 bits, so two seeds that fold alike give
    the same mask (a coordinator could search 2**32 seeds); the masks trialfed's sites and
    coordinator draw depend on every bit, are reproducible, and are spread over the range."""
    import importlib

    import numpy as np

    seed = bytes(range(32))
    folds_alike = seed[4:8] + seed[:4] + seed[8:]  # the same XOR of its 4-byte words
    shapes = [(20_000,), (), (3, 4)]
    weak = [flower.flower_pseudo_rand_gen(s, 2**32, shapes) for s in (seed, folds_alike)]
    assert all(np.array_equal(x, y) for x, y in zip(*weak, strict=True))  # Flower's weakness
    ours = flower.chacha20_masks(seed, 2**32, shapes)
    assert not np.array_equal(ours[0], flower.chacha20_masks(folds_alike, 2**32, shapes)[0])
    again = flower.chacha20_masks(seed, 2**32, shapes)
    assert all(np.array_equal(x, y) for x, y in zip(ours, again, strict=True))
    assert [m.shape for m in ours] == [(20_000,), (), (3, 4)]
    assert all(m.dtype == np.int64 and m.min() >= 0 and m.max() < 2**32 for m in ours)
    # uniform on [0, 2**32): the mean of 20,000 draws within 5 standard errors of the middle
    assert abs(ours[0].mean() / 2**32 - 0.5) < 5 * (1 / np.sqrt(12 * 20_000))
    for name in flower.MASK_MODULES:  # where SecAgg+ calls it, at the site and the coordinator
        assert importlib.import_module(name).pseudo_rand_gen is flower.chacha20_masks, name


def test_flower_still_waits_as_prompt_polling_assumes() -> None:
    """The waits the prompt SuperNode replaces are still Flower's literals, read from the
    module names it swaps; a Flower that changes them fails here, not as a slow round."""
    import importlib

    loop = importlib.import_module(flower.SUPERNODE_LOOP)
    source = inspect.getsource(loop)
    assert f"time.sleep({flower.SUPERNODE_IDLE_S})" in source
    assert f"time.sleep({flower.SUPERNODE_CHECK_S})" in source
    assert "_pull_and_store_message(" in inspect.getsource(loop.start_client_internal)
    for name in (flower.SUPERNODE_LOOP, flower.COORDINATOR_GRID):
        pull = importlib.import_module(name).pull_objects
        pull = getattr(pull, "flower_pull_objects", pull)
        assert {"initial_backoff", "backoff_cap"} <= set(_parameters(pull)), name


def test_supernode_clock_makes_the_fixed_waits_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(flower.time, "sleep", slept.append)
    clock = flower.SuperNodeClock(first_s=0.05, idle_cap_s=1.0, check_s=0.02)
    clock.sleep(flower.SUPERNODE_IDLE_S)  # idle since start: the cap
    clock.message_received()
    for _ in range(9):
        clock.sleep(flower.SUPERNODE_IDLE_S)
    clock.sleep(flower.SUPERNODE_CHECK_S)
    clock.sleep(0.7)  # any other wait is kept
    growing = [0.05 * 1.5**k for k in range(8)]
    assert slept == pytest.approx([1.0, *growing, 1.0, 0.02, 0.7])
    assert clock.monotonic is flower.time.monotonic  # the rest of `time` is the real one


def test_prompt_object_pulls_wrap_flowers_function_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    calls: list[dict[str, object]] = []

    def pull_objects(object_ids: list[str], **kwargs: object) -> dict[str, bytes]:
        calls.append(kwargs)
        return dict.fromkeys(object_ids, b"x")

    module = types.ModuleType("fake_grid")
    module.pull_objects = pull_objects  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_grid", module)
    flower.use_prompt_object_pulls("fake_grid", 0.05, 0.2)
    flower.use_prompt_object_pulls("fake_grid", 0.02, 0.1)  # again: still one wrapper
    assert module.pull_objects(["a"]) == {"a": b"x"}
    assert module.pull_objects(["b"], initial_backoff=1.0) == {"b": b"x"}
    assert calls == [
        {"initial_backoff": 0.02, "backoff_cap": 0.1},
        {"initial_backoff": 1.0, "backoff_cap": 0.1},  # a caller's own choice is kept
    ]
    assert module.pull_objects.flower_pull_objects is pull_objects
    with pytest.raises(ImportError, match="no pull_objects"):
        monkeypatch.setitem(sys.modules, "empty_grid", types.ModuleType("empty_grid"))
        flower.use_prompt_object_pulls("empty_grid", 0.05, 0.2)


def test_the_prompt_supernode_swaps_flowers_waits_in_its_own_process() -> None:
    """What ``python -m federation.deployment.supernode`` sets before Flower's SuperNode runs."""
    import subprocess
    import sys

    check = (
        "import importlib, time\n"
        "from federation import flower_internals as f\n"
        "from federation.deployment import supernode as s\n"
        "f.use_prompt_supernode_polling(f.SuperNodeClock(s.FIRST_POLL_S, s.IDLE_POLL_S, "
        "s.REPLY_CHECK_S))\n"
        "f.use_prompt_object_pulls(f.SUPERNODE_LOOP, *s.OBJECT_RETRY_S)\n"
        "loop = importlib.import_module(f.SUPERNODE_LOOP)\n"
        "assert isinstance(loop.time, f.SuperNodeClock) and loop.time.idle_cap_s == 1.0\n"
        "assert loop._pull_and_store_message.__name__ == 'pull_and_note'\n"
        "assert loop.pull_objects.__name__ == 'pull_within_round'\n"
        "assert time.sleep is loop.time.__getattr__('sleep')  # the real module untouched\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_object_pulls_are_bounded_by_the_rounds_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's own ``pull_objects`` waits for a reply's missing object up to 500 tries (50 s
    at the prompt waits): inside :func:`object_pulls_until` it gives up at the deadline, or
    after the grace when the deadline has passed; outside, the caller's limits stand."""
    import sys
    import time
    import types

    def never_there(object_id: str) -> bytes:
        raise flower.ObjectUnavailableError(object_id)

    module = types.ModuleType("bounded_grid")
    module.pull_objects = flower.pull_objects  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bounded_grid", module)
    monkeypatch.setattr(flower, "OBJECT_PULL_GRACE_S", 0.3)
    flower.use_round_bounded_object_pulls("bounded_grid")
    flower.use_prompt_object_pulls("bounded_grid", 0.02, 0.05)
    for deadline_in, least, most in ((0.6, 0.55, 2.0), (-5.0, 0.25, 1.5)):
        started = time.monotonic()
        with (
            flower.object_pulls_until(started + deadline_in),
            pytest.raises(flower.ObjectPullError),
        ):
            module.pull_objects(["missing"], pull_object_fn=never_there)
        assert least <= time.monotonic() - started <= most
    started = time.monotonic()  # no round: the caller's own limit
    with pytest.raises(flower.ObjectPullError):
        module.pull_objects(["missing"], pull_object_fn=never_there, max_tries_per_object=3)
    assert time.monotonic() - started < 0.5
    assert module.pull_objects.flower_pull_objects is flower.pull_objects
