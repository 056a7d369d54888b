"""A Flower ``Grid`` that delivers messages to a ClientApp in this process.

For tests and benchmarks of Flower strategies without an engine: the ServerApp side (a strategy's
``start``) and the ClientApp handlers are Flower's own objects, and every message and reply goes
through Flower's protobuf encoding (so the handlers see what they would see over the wire, and the
bytes each site sends and receives are counted exactly). Nodes are numbered 1..n, node i serving
``node_configs[i - 1]``, and answer in order, one after the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import Context, Error, Message, RecordDict, UserConfig
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from federation.flower_internals import Run, TaskIdentity, message_from_proto, message_to_proto

SERVER_NODE = 0
RUN_ID = 1


class LocalGrid(Grid):
    """Node ``i`` (1-based) runs ``app`` with ``node_configs[i - 1]`` as its node config."""

    polls_fast = True  # send_and_receive delivers at once (read by transport.send_and_receive)

    def __init__(self, app: ClientApp, node_configs: Sequence[Mapping[str, Any]]) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id = 1, RUN_ID
        TaskIdentity.node_id = SERVER_NODE
        self.app = app
        self.contexts = {
            i + 1: Context(RUN_ID, i + 1, UserConfig(dict(cfg)), RecordDict(), UserConfig())
            for i, cfg in enumerate(node_configs)
        }
        self.bytes_down = dict.fromkeys(self.contexts, 0)
        self.bytes_up = dict.fromkeys(self.contexts, 0)
        self._run = Run.create_empty(RUN_ID)
        self._count = 0

    def set_run(self, run: Run) -> None:
        """Runs are fixed here."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run (an empty one)."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message from the ServerApp to ``dst_node_id``."""
        return Message(
            content=content,
            dst_node_id=dst_node_id,
            message_type=message_type,
            ttl=ttl,
            group_id=group_id,
        )

    def get_node_ids(self) -> Iterable[int]:
        """Node ids 1..n."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Not used: :meth:`send_and_receive` delivers at once."""
        raise NotImplementedError("LocalGrid delivers messages in send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Not used: :meth:`send_and_receive` delivers at once."""
        raise NotImplementedError("LocalGrid delivers messages in send_and_receive")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver each message to its node and return the replies, in order."""
        replies = []
        for message in messages:
            self._count += 1
            message.metadata.__dict__["_message_id"] = f"{self._count:032x}"
            node = message.metadata.dst_node_id
            wire = message_to_proto(message)
            self.bytes_down[node] += wire.ByteSize()
            received = message_from_proto(wire)
            try:
                reply = self.app(received, self.contexts[node])
            except Exception as exc:  # as a SuperNode does: the error travels back
                error = Error(code=0, reason=f"{type(exc).__name__}: {exc}")
                reply = Message(error=error, reply_to=received)
            back = message_to_proto(reply)
            self.bytes_up[node] += back.ByteSize()
            replies.append(message_from_proto(back))
        return replies
