"""A transport that calls each site's query handler in this process.

Used by tests and benchmarks to exercise the whole protocol, with the same message encoding as
Flower messages, without starting an engine. Real runs use Flower (``federation/simulation.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from federation.codec import decode, encode
from federation.exchange import SiteFailure, site_outcome
from sites.node import serve


class InProcessTransport:
    """Node ``i`` is ``bundles[i]``; ``drop`` maps a node to the round from which it is silent."""

    def __init__(self, bundles: Sequence[Path], drop: Mapping[int, int] | None = None) -> None:
        self.bundles = [Path(b) for b in bundles]
        self.drop = dict(drop or {})
        self.sent: list[dict[int, dict[str, Any]]] = []

    def nodes(self) -> list[int]:
        """One node per bundle."""
        return list(range(len(self.bundles)))

    def exchange(
        self, requests: Mapping[int, dict[str, Any]], timeout: float
    ) -> dict[int, dict[str, Any] | SiteFailure]:
        """Answer every request; a refusal is a SiteFailure, as over Flower."""
        outcomes: dict[int, dict[str, Any] | SiteFailure] = {}
        self.sent.append(dict(requests))
        for node, request in requests.items():
            if node in self.drop and len(self.sent) >= self.drop[node]:
                outcomes[node] = SiteFailure(f"no reply within {timeout:g} s")
                continue
            payload = decode(encode(serve(self.bundles[node], decode(encode(request)))))
            outcomes[node] = site_outcome(payload)
        return outcomes
