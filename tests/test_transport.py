"""The coordinator's prompt ``send_and_receive``: what a round keeps when a site stops mid-reply.

A scripted Grid stands in for the deployed one here, to place a stalled pull exactly at the
deadline; the same failure on real Flower processes (a SuperNode that dies between registering
its reply and sending its data) is in tests/test_deployment.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Error, Message, Metadata, RecordDict

from federation.flower_internals import SUPERLINK_NODE_ID
from federation.transport import send_and_receive

RUN_ID = 1


def _request(node: int) -> Message:
    metadata = Metadata(
        run_id=RUN_ID, message_id=f"ins-{node}", src_node_id=SUPERLINK_NODE_ID,
        dst_node_id=node, reply_to_message_id="", group_id="", created_at=time.time(),
        ttl=60.0, message_type="query.analysis",
    )  # fmt: skip
    return _message(metadata)


def _message(metadata: Metadata, error: Error | None = None) -> Message:
    """A message with any metadata, as a Grid hands replies back (Flower's own constructor
    for that, outside the public overloads)."""
    if error is not None:
        return Message(error, metadata=metadata)  # type: ignore[call-overload]
    return Message(content=RecordDict(), metadata=metadata)  # type: ignore[call-overload]


def _reply(src: int, to: str, error: str = "") -> Message:
    metadata = Metadata(
        run_id=RUN_ID, message_id=f"res-{src}-{to}", src_node_id=src,
        dst_node_id=SUPERLINK_NODE_ID, reply_to_message_id=to, group_id="",
        created_at=time.time(), ttl=60.0, message_type="query.analysis",
    )  # fmt: skip
    return _message(metadata, Error(code=3, reason=error) if error else None)


class ScriptedGrid:
    """Answers each pull with the next scripted batch, taking ``stall_s`` over the first."""

    def __init__(self, batches: list[list[Message]], stall_s: float = 0.0) -> None:
        self.batches, self.stall_s, self.pulls = batches, stall_s, 0

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        wanted = set(message_ids)
        self.pulls += 1
        if self.pulls == 1:
            time.sleep(self.stall_s)
        batch = self.batches.pop(0) if self.batches else []
        return [m for m in batch if m.metadata.reply_to_message_id in wanted]


def test_a_reply_registered_while_a_pull_stalled_past_the_deadline_is_kept() -> None:
    """A pull that ran past the deadline (Flower waiting for one site's data) is followed by
    one more, which collects the replies that came meanwhile (CI saw both other sites lost)."""
    requests = [_request(7), _request(8)]
    grid = ScriptedGrid([[_reply(7, "ins-7")], [_reply(8, "ins-8")]], stall_s=0.4)
    replies = send_and_receive(grid, requests, timeout=0.2)  # type: ignore[arg-type]
    assert sorted(r.metadata.src_node_id for r in replies) == [7, 8]
    assert grid.pulls == 2


def test_no_pull_after_one_that_started_at_the_deadline() -> None:
    grid = ScriptedGrid([[], [_reply(7, "ins-7")]])
    assert send_and_receive(grid, [_request(7)], timeout=0.0) == []  # type: ignore[arg-type]
    assert grid.pulls == 1


def test_a_made_up_or_relabelled_reply_counts_as_the_asked_sites_error() -> None:
    """Flower's Grid answers for a reply whose data never came with an error from the
    coordinator's own node; a reply from another node is not the asked site's answer."""
    lost = "Reply message objects are unavailable."
    grid = ScriptedGrid([[
        _reply(SUPERLINK_NODE_ID, "ins-7", error=lost),  # made up at the coordinator
        _reply(9, "ins-8"),  # relabelled: node 9 answering node 8's request
        _reply(10, "ins-10"),
    ]])  # fmt: skip
    replies = send_and_receive(grid, [_request(7), _request(8), _request(10)], 1.0)  # type: ignore[arg-type]
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert sorted(by_node) == [7, 8, 10]
    reasons = {node: str(r.error.reason) for node, r in by_node.items() if r.has_error()}
    assert sorted(reasons) == [7, 8]
    assert lost in reasons[7] and "did not arrive whole" in reasons[7]
    assert "from node 9" in reasons[8]
    assert by_node[7].metadata.reply_to_message_id == "ins-7"
