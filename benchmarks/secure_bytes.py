"""Bytes each site sends and receives in a run on the simulation engine, plain or secure.

``python -m benchmarks.secure_bytes OUT PLAN [PLAN ...] --sites SITE ...`` runs each plan over the
sites and writes ``OUT`` (JSON): per plan, per site, the payload bytes of every message the
coordinator sent it (``down``) and received from it (``up``), summed over the run: array bytes,
byte strings (SecAgg+ keys, shares, masked vectors), text and 8 bytes per number; the transport's
framing (protobuf, gRPC, TLS) is not counted. The messages are the ones the coordinator's Grid
carries (:func:`federation.secure.observe`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import Message, RecordDict

from experiments.plan import load_plan
from federation.codec import decode
from federation.secure import StageEvent, observe
from federation.simulation import run_simulated


def _value_bytes(value: Any) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    return 8


def payload_bytes(message: Message) -> int:
    """Payload bytes of one message (see the module docstring)."""
    if message.has_error():
        return len(str(message.error.reason).encode("utf-8"))
    content: RecordDict = message.content
    total = sum(len(a.data) for r in content.array_records.values() for a in r.values())
    for records in (content.config_records, content.metric_records):
        total += sum(_value_bytes(v) for r in records.values() for v in r.values())
    return total


class Counter:
    """Bytes per node and direction, and each node's site id (from its round-1 reply)."""

    def __init__(self) -> None:
        self.up: dict[int, int] = {}
        self.down: dict[int, int] = {}
        self.site: dict[int, str] = {}

    def __call__(self, event: StageEvent) -> None:
        for message in event.sent:
            node = message.metadata.dst_node_id
            self.down[node] = self.down.get(node, 0) + payload_bytes(message)
        for message in event.received:
            node = message.metadata.src_node_id
            self.up[node] = self.up.get(node, 0) + payload_bytes(message)
            if event.stage == "query" and not message.has_error():
                payload = decode(message.content)
                site = payload.get("reply", {}).get("site", {}).get("id") or payload.get("site")
                self.site.setdefault(node, str(site))

    def per_site(self) -> dict[str, dict[str, int]]:
        """``{site: {"up", "down"}}``."""
        return {
            self.site.get(n, f"node {n}"): {"up": self.up.get(n, 0), "down": self.down.get(n, 0)}
            for n in sorted(set(self.up) | set(self.down))
        }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.secure_bytes")
    parser.add_argument("out", type=Path)
    parser.add_argument("plans", type=Path, nargs="+")
    parser.add_argument("--sites", type=Path, nargs="+", required=True)
    args = parser.parse_args(argv)
    doc: dict[str, Any] = {}
    for path in args.plans:
        counter = Counter()
        start = time.perf_counter()
        with observe(counter):
            outcome = run_simulated(load_plan(path), args.sites)
        doc[path.name] = {
            "sites": counter.per_site(),
            "rounds": outcome.rounds,
            "seconds": round(time.perf_counter() - start, 3),
        }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
