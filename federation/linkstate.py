"""Flower's in-memory LinkState with the undelivered messages indexed by destination node.

The Simulation Runtime's message extractor (``vce_api.add_messages_to_queue``) asks the LinkState
for each node's next message, for every node, ten times a second. Flower 1.42's
``InMemoryLinkState.get_message_ins`` answers by scanning every stored message (and re-checking
each one's expiry), so one sweep costs sites x messages: at 1,000 sites a round took 13 s, all of
it in that scan. :class:`NodeIndexedLinkState` keeps, per node, the ids of its messages not yet
handed out, in the order they were stored, and answers from those alone: the same messages in the
same order, expiry checked the same way, in time proportional to what the node is owed.

Both classes extend Flower's private in-memory classes and use their attributes; the list is in
:mod:`federation.flower_internals` and its test.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Message

from federation.flower_internals import (
    FLWR_IN_MEMORY_DB_NAME,
    InMemoryLinkState,
    LinkState,
    LinkStateFactory,
    now,
)


class NodeIndexedLinkState(InMemoryLinkState):
    """:class:`InMemoryLinkState` whose ``get_message_ins`` reads only the node's own messages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._undelivered: dict[int, dict[str, None]] = {}  # node -> message ids, stored order

    def store_message_ins(self, message: Message) -> str | None:
        """Store one Message (Flower's checks) and index it under its destination node."""
        message_id = super().store_message_ins(message)
        if message_id is not None:
            with self.lock:
                node = message.metadata.dst_node_id
                self._undelivered.setdefault(node, {})[message_id] = None
        return message_id

    def get_message_ins(
        self, node_id: int, limit: int | None, *, run_id: int | None = None
    ) -> list[Message]:
        """The node's messages not delivered yet (at most ``limit``), marked as delivered."""
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        found: list[Message] = []
        with self.lock:
            pending = self._undelivered.get(node_id)
            if not pending:
                return found
            for message_id in list(pending):
                self._check_stored_messages({message_id})  # drops it if it expired
                message = self.message_ins_store.get(message_id)
                if message is None or message.metadata.delivered_at != "":
                    del pending[message_id]
                    continue
                if run_id is not None and message.metadata.run_id != run_id:
                    continue
                found.append(message)
                del pending[message_id]
                if limit and len(found) == limit:
                    break
        delivered_at = now().isoformat()
        for message in found:
            message.metadata.delivered_at = delivered_at
        return found


class NodeIndexedLinkStateFactory(LinkStateFactory):
    """A :class:`LinkStateFactory` whose in-memory state is a :class:`NodeIndexedLinkState`."""

    def state(self) -> LinkState:
        """The one state of this factory, created on first use."""
        if self.state_instance is None and self.database == FLWR_IN_MEMORY_DB_NAME:
            with self._state_lock:
                if self.state_instance is None:
                    store = self.objectstore_factory.store()
                    self.state_instance = NodeIndexedLinkState(self.federation_manager, store)
        return super().state()
