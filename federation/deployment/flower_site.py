"""The Flower 1.42 internals the deployment engine uses, in one place.

Flower's public surface (the ``flwr`` CLI, ``flower-superlink``, ``flower-supernode``,
``flwr.app``, ``flwr.clientapp``) has no way to (a) answer a SuperNode's tasks with a
long-lived process of the site's own choosing, (b) tell the coordinator that a site's previous,
hard-killed connection is gone, or (c) read a finished run's run config back. Each need below
names the internal it takes, why, and what breaks when Flower changes it. The names are
imported through :mod:`federation.flower_internals` (every private Flower name is there);
``tests/test_deployment_runner.py`` exercises each one against real Flower processes, so an
upgrade that breaks one fails there first.

Runtime API of the SuperNode (site runner, ``--isolation process``):

- ``flwr.supercore.runtime.RuntimeHttpClient``: the protobuf-over-HTTP client of the SuperNode's
  local Runtime API (``AcquireTask``, ``PullTaskInput``, ``PushMessages``, ``PushTaskOutput``,
  ``SendTaskHeartbeat``). Why: Flower's own ``flwr-clientapp`` loads the ClientApp from the
  run's app bundle, the code the coordinator sent; the site runner answers with the site's
  installed code instead. Breaks if the Runtime API paths or messages change.
- ``flwr.proto.runtime_pb2.AcquireTaskRequest`` and ``flwr.supercore.constant.TaskType``:
  claiming ClientApp tasks, as ``flower-superexec`` does. Breaks if task types are renamed.
- ``flwr.supercore.interceptors.RuntimeTokenHttpInterceptor``,
  ``RuntimeVersionHttpInterceptor``, ``SuperExecAuthHttpInterceptor``: the per-task token, the
  component version check and the HMAC of ``AcquireTask`` (the SuperNode's
  ``--superexec-auth-secret-file``). Breaks if the header scheme changes.
- ``flwr.supernode.runtime.run_clientapp.push_message``, ``push_task_output``: the exact
  exchange ``flwr-clientapp`` performs to send a reply and the task's final status. Reused
  rather than copied so the wire format stays Flower's. Breaks if they are renamed or change
  signature.
- Reading a task's input is Flower's ``pull_task_input`` with one change: the SuperNode offers
  the task BEFORE it has fetched the message's objects from the coordinator, and Flower pulls a
  missing object again only after 1 s (``PULL_INITIAL_BACKOFF``), which a fresh
  ``flwr-clientapp`` process never noticed but a warm runner hit on every round (1.2 s of a
  3-4 s round). :func:`_pull_task_input` asks again after 50 ms instead. It takes
  ``PullTaskInputRequest``/``PullAppMessagesRequest`` (``flwr.proto.runtime_pb2``),
  ``context_from_proto``/``fab_from_proto`` (``flwr.common.serde``), ``Node``
  (``flwr.proto.node_pb2``), ``pull_and_inflate_object_from_tree`` and the protobuf pull and
  confirm functions (``flwr.supercore.inflatable``) and ``TaskIdentity``
  (``flwr.supercore.task_identity``, read by Flower's tracing). Breaks if any is renamed.
- ``flwr.supercore.heartbeat.HeartbeatSender``: keeps a claimed task alive past the SuperNode's
  30 s claim window (a Cox round on a large bundle can take that long). Our heartbeat function
  never raises SIGINT (Flower's ``make_task_heartbeat_fn_http`` does, which would end the
  long-lived runner). Breaks if the class is renamed.
- ``flwr.common.constant.SubStatus`` and ``ErrorCode``: the task's final status and the error
  code of a failed reply, as ``flwr-clientapp`` reports them.

Fleet API (stale connection of a hard-killed site):

- ``flwr.supernode.fleet_http_client.FleetHttpClient``,
  ``flwr.supernode.node_auth_http_interceptor.NodeAuthHttpInterceptor``,
  ``flwr.proto.fleet_pb2.DeactivateNodeRequest``: a SuperNode that was killed hard stays
  "online" at the SuperLink for up to 60 s (2 x its 30 s heartbeat), and the SuperLink refuses
  to activate it again until then. The restarted site signs a ``DeactivateNode`` for its own
  node id with its own key, exactly what a SuperNode sends when it stops cleanly. Breaks if the
  Fleet path or the signature headers change (the site then falls back to retrying).

Control API (past results):

- ``flwr.supercore.control.ControlHttpClient`` and ``flwr.proto.control_pb2.ListRunsRequest``:
  ``flwr ls --format json`` does not print a run's run config, and ``trialfed results`` needs
  the plan text it carried. Breaks if ``ListRuns`` or ``Run.override_config`` change.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, Error, Message

from federation.flower_internals import (
    AcquireTaskRequest,
    ControlHttpClient,
    DeactivateNodeRequest,
    ErrorCode,
    FleetHttpClient,
    HeartbeatSender,
    ListRunsRequest,
    Node,
    NodeAuthHttpInterceptor,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    RuntimeHttpClient,
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SendTaskHeartbeatRequest,
    SubStatus,
    SuperExecAuthHttpInterceptor,
    TaskIdentity,
    TaskType,
    context_from_proto,
    fab_from_proto,
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
    pull_and_inflate_object_from_tree,
    push_message,
    push_task_output,
)

ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"
COMPONENT = "flwr-clientapp"  # the SuperNode checks the version of this component
TransportError = httpx.TransportError
HTTPError = httpx.HTTPError


@dataclass(frozen=True)
class Task:
    """A ClientApp task claimed from the SuperNode: its token and the run's app bundle hash."""

    token: str
    task_id: int
    run_id: int
    fab_hash: str


@dataclass(frozen=True)
class TaskInput:
    """What a task carries: the message, the context, and the run's app bundle."""

    message: Message
    context: Context
    fab_hash: str
    fab_content: bytes


class RuntimeLink:
    """Claims ClientApp tasks from a SuperNode's local Runtime API (``--isolation process``)."""

    def __init__(self, address: str, secret: bytes | None = None) -> None:
        self.address = address
        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if secret:
            interceptors.append(
                SuperExecAuthHttpInterceptor(
                    master_secret=secret, protected_methods=frozenset({ACQUIRE_METHOD})
                )
            )
        self._client = RuntimeHttpClient.from_server_address(
            address, insecure=True, root_certificates=None, interceptors=interceptors
        )

    def acquire(self) -> Task | None:
        """The oldest pending ClientApp task, claimed; ``None`` when there is none."""
        res = self._client.AcquireTask(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        )
        if not res.HasField("task") or not res.token:
            return None
        task = res.task
        return Task(res.token, int(task.task_id), int(task.run_id), str(task.fab_hash or ""))

    def close(self) -> None:
        """Close the HTTP connection."""
        self._client.close()


class TaskSession:
    """One task's exchange with the SuperNode, as ``flwr-clientapp`` performs it."""

    def __init__(self, address: str, task: Task) -> None:
        self.task = task
        self._client = RuntimeHttpClient.from_server_address(
            address,
            insecure=True,
            root_certificates=None,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name=COMPONENT),
                RuntimeTokenHttpInterceptor(task.token),
            ],
        )
        self._heartbeat = HeartbeatSender(self._beat)
        self._lock = threading.Lock()

    def _beat(self) -> bool:
        try:
            with self._lock:
                return bool(self._client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except httpx.HTTPError:
            return False

    def pull(self) -> TaskInput:
        """The task's message, context and app bundle; starts the task heartbeat."""
        self._heartbeat.start()
        with self._lock:
            return _pull_task_input(self._client)

    def push(self, reply: Message, context: Context) -> None:
        """Send the reply message back through the SuperNode."""
        with self._lock:
            push_message(self._client, reply, context)

    def finish(self, context: Context | None, ok: bool, details: str = "") -> None:
        """Report the task's final status; stops the heartbeat and closes the connection."""
        if self._heartbeat.is_running:
            self._heartbeat.stop()
        with self._lock:
            status = SubStatus.COMPLETED if ok else SubStatus.FAILED
            push_task_output(self._client, context, status, details)
            self._client.close()


OBJECT_RETRY_S = 0.05
"""First pause before asking again for a message object the SuperNode has not fetched yet."""
OBJECT_RETRY_CAP_S = 0.1
"""Longest pause between two such asks (a local call): Flower's doubling to 1 s overshot the
moment the object arrived by up to 0.8 s, and the SuperNode pushes replies only every 0.5 s."""
OBJECT_WAIT_S = 600.0
"""How long a message's objects may take to reach the SuperNode before the task fails."""


def _pull_task_input(client: RuntimeHttpClient) -> TaskInput:
    """Flower's ``pull_task_input`` (1.42) with :data:`OBJECT_RETRY_S` (module docstring)."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    fab = fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("no message in the task (Runtime API)")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        initial_backoff=OBJECT_RETRY_S,
        backoff_cap=OBJECT_RETRY_CAP_S,
        max_time=OBJECT_WAIT_S,
        max_tries_per_object=None,  # bounded by max_time
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower sets it
    return TaskInput(message, context, str(fab.hash_str), bytes(fab.content))


def error_reply(message: Message, reason: str) -> Message:
    """The error reply Flower's ``flwr-clientapp`` sends when the ClientApp raised."""
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
    )


def _signing_keys(key_path: Path) -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
    key = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an elliptic-curve key")
    return key, key.public_key()


def deactivate_node(superlink: str, ca: Path, key_path: Path, node_id: int) -> int:
    """Mark this site's previous connection offline at the SuperLink, signed with its key.

    Returns the HTTP status: 200 accepted; 401 the key is refused (the site was revoked); any
    other value (0: no answer) means the node was not online or the call failed.
    """
    private, public = _signing_keys(key_path)
    try:
        with FleetHttpClient.from_server_address(
            superlink,
            False,
            str(ca),
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                NodeAuthHttpInterceptor(private, public),
            ],
        ) as client:
            client.DeactivateNode(DeactivateNodeRequest(node_id=node_id))
    except httpx.HTTPStatusError as exc:
        return int(exc.response.status_code)
    except (httpx.HTTPError, RuntimeError):
        return 0
    return 200


@contextmanager
def control_client(address: str, ca: Path) -> Iterator[ControlHttpClient]:
    """A Control API client for ``address`` verified against ``ca``."""
    client = ControlHttpClient.from_server_address(
        address,
        False,
        str(ca),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-cli")],
    )
    try:
        yield client
    finally:
        client.close()


def run_config(address: str, ca: Path, run_id: int) -> dict[str, Any] | None:
    """The run config (overrides) a run was submitted with, or ``None`` for an unknown run."""
    with control_client(address, ca) as client:
        res = client.ListRuns(ListRunsRequest(run_id=run_id))
    for run in res.run_dict.values():
        if int(run.run_id) == run_id:
            return {key: _scalar(value) for key, value in run.override_config.items()}
    return None


def _scalar(value: Any) -> Any:
    kind = value.WhichOneof("scalar")
    return getattr(value, kind) if kind else None


def fab_sha256(content: bytes) -> str:
    """The hash Flower gives an app bundle (SHA-256 of the archive's bytes)."""
    return hashlib.sha256(content).hexdigest()
