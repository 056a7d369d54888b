"""The protocol's :class:`~federation.protocol.Transport` over a Flower ``Grid``."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Error, Message, RecordDict
from flwr.serverapp import Grid

from federation.codec import MESSAGE_TYPE, decode, encode
from federation.exchange import SiteFailure, site_outcome
from federation.flower_internals import ErrorCode, object_pulls_until


class GridView(Grid):
    """A Grid that hands every call to ``grid``; a subclass changes one part (which nodes a
    strategy sees, how round trips are observed)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(  # noqa: PLR0913 - Flower's signature
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """As Flower's, polling promptly (:func:`send_and_receive`): Flower's strategies call
        this once a training round."""
        limit = math.inf if timeout is None else timeout
        return send_and_receive(self.grid, list(messages), limit)


class GridTransport:
    """Sends one query message per node through Flower and waits with a timeout."""

    def __init__(self, grid: Grid, expected_nodes: int = 0, connect_timeout: float = 60.0) -> None:
        self.grid = grid
        self.expected_nodes = expected_nodes
        self.connect_timeout = connect_timeout

    def nodes(self) -> list[int]:
        """Connected node ids; waits up to ``connect_timeout`` for ``expected_nodes``."""
        deadline = time.monotonic() + self.connect_timeout
        ids = list(self.grid.get_node_ids())
        while len(ids) < self.expected_nodes and time.monotonic() < deadline:
            time.sleep(0.5)
            ids = list(self.grid.get_node_ids())
        return sorted(ids)

    def exchange(
        self, requests: Mapping[int, dict[str, Any]], timeout: float
    ) -> dict[int, dict[str, Any] | SiteFailure]:
        """One round: a message to each node, replies collected until ``timeout``."""
        messages = [
            Message(content=encode(request), dst_node_id=node, message_type=MESSAGE_TYPE)
            for node, request in requests.items()
        ]
        outcomes: dict[int, dict[str, Any] | SiteFailure] = {}
        started = time.monotonic()
        for reply in send_and_receive(self.grid, messages, timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                outcomes[node] = SiteFailure(f"site error: {reply.error.reason}")
                continue
            payload = decode(reply.content)
            outcomes[node] = site_outcome(payload)
        waited = time.monotonic() - started
        for node in requests:
            outcomes.setdefault(node, SiteFailure(f"no reply after {waited:.0f} s"))
        return outcomes


POLL_SECONDS = (0.05, 0.1)
"""Pauses between pulls for replies, growing to the last (Flower's own loop waits 3 s). A pull
is a local call to the SuperLink; a longer last pause (0.5 s was tried) adds half of it to
every deployed round on average."""


def send_and_receive(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Push ``messages`` and pull their replies until all came or ``timeout`` passed.

    Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls, a second and a half per round
    on average; this polls every 50 ms, then every 0.1 s. The last pull starts at or after the
    deadline, so a reply registered in time is kept even when an earlier pull ran past the
    deadline; waits for a reply's data are bounded by the deadline too (a site that stops while
    sending costs one round, not Flower's 500 tries). Every reply is from the node asked
    (:func:`_as_from_site`).
    """
    if getattr(grid, "polls_fast", False):  # a wrapper that observes its round trips
        return list(grid.send_and_receive(messages, timeout=timeout))
    ids = list(grid.push_messages(messages))
    sent = dict(zip(ids, messages, strict=True)) if len(ids) == len(messages) else {}
    waiting = {message_id for message_id in sent if message_id}
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    pause = iter(POLL_SECONDS)
    delay = next(pause)
    with object_pulls_until(deadline):
        while waiting:
            started = time.monotonic()
            pulled = [_as_from_site(reply, sent) for reply in grid.pull_messages(waiting)]
            replies += pulled
            waiting -= {m.metadata.reply_to_message_id for m in pulled}
            if not waiting or started >= deadline:
                break
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = next(pause, POLL_SECONDS[-1])
    return replies


def _as_from_site(reply: Message, sent: Mapping[str, Message]) -> Message:
    """``reply`` as the answer of the node its request went to.

    When a site registers its reply but its data never arrives (it stopped while sending),
    Flower's Grid hands back an error made up at the coordinator, from the coordinator's own
    node id: the site would then read as silent and its answer as someone else's. Such a
    reply, and any reply not from the node asked, becomes an error reply from that node.
    """
    request = sent.get(reply.metadata.reply_to_message_id)
    if request is None or reply.metadata.src_node_id == request.metadata.dst_node_id:
        return reply
    why = reply.error.reason if reply.has_error() else f"from node {reply.metadata.src_node_id}"
    reason = f"its reply did not arrive whole (did it stop while sending?): {why}"
    return Message(Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason=reason), reply_to=request)
