"""Test helpers for secure aggregation: a transport that sums the sites' secure vectors in the
clear, in this process, and comparisons of a secure run with a plain one.

:class:`ClearSumTransport` runs the secure round protocol (layouts, the sites' own vectors, the
pooled estimators) without SecAgg+: it is for fast tests of that logic only. The engine tests
(tests/test_secure.py) run the same protocol through Flower's SecAgg+.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from federation.exchange import SiteFailure, site_outcome
from federation.inprocess import InProcessTransport
from federation.secure import SecureSum, to_text
from sites.node import serve_secure

COUNT_KEYS = {"n", "events", "censored", "at_risk", "observed", "age_n", "df"}
SKIP_KEYS = {
    "secure_aggregation",
    "history",
    "rounds",
    "disclosure",
    "refusals",
    "message",
    "by_site",
}
"""Not compared: the Newton path (its start differs when the sites publish no fit), notes, and
the per-site forest rows (published fits only)."""


class ClearSumTransport(InProcessTransport):
    """Tests only: each secure round's vectors computed by the sites' own code and summed here,
    in the clear (``drop``: node -> round from which the node fails its secure contribution)."""

    def secure_sum(
        self, requests: Mapping[int, dict[str, Any]], timeout: float, number: int
    ) -> SecureSum:
        vectors, clear, failures = [], {}, {}
        for node, request in requests.items():
            if node in self.drop and number >= self.drop[node]:
                failures[node] = SiteFailure("secure stage collect_masked_vectors: dropped")
                continue
            vector, payload = serve_secure(self.bundles[node], json.loads(to_text(request)))
            if vector is None:
                found = site_outcome(payload)
                assert isinstance(found, SiteFailure)
                failures[node] = found
                continue
            vectors.append(vector)
            clear[node] = payload
        if len(vectors) < 3:
            return SecureSum(None, [], {}, failures, ["clear"], "fewer than 3 sites")
        sums = np.rint(np.sum(vectors, axis=0)).astype(np.int64)
        return SecureSum(sums, sorted(clear), clear, failures, ["clear"])


def set_policy(bundles: Sequence[Path], policy: str) -> list[Path]:
    """Replace the ``[policy]`` table of every bundle."""
    for bundle in bundles:
        path = bundle / "site.toml"
        text = path.read_text()
        path.write_text(text[: text.index("[policy]")] + "[policy]\n" + policy)
    return list(bundles)


def plain(text: str) -> str:
    """The plan text without secure aggregation (the demo plan asks for it) and without its
    ``train`` analyses (model training runs after the survival rounds, by Flower's strategies,
    and is not what these tests compare)."""
    text = re.sub(r"(?m)^secure_aggregation = true\b.*\n", "", text)
    tables = re.split(r"(?m)^(?=\[\[analysis\]\])", text)
    return "".join(t for t in tables if not re.search(r'(?m)^kind = "train"', t))


def secure(text: str) -> str:
    """The plan text with ``[run] secure_aggregation = true``."""
    return re.sub(r"\[run\]\n", "[run]\nsecure_aggregation = true\n", plain(text), count=1)


def compare(plain: Any, secured: Any, path: str = "") -> dict[str, float]:
    """Walk two results sections: counts and texts must be equal, and the largest absolute
    difference of every other number is returned by key."""
    worst: dict[str, float] = {}

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, Mapping):
            assert isinstance(b, Mapping), where
            keys = (set(a) | set(b)) - SKIP_KEYS
            assert keys <= set(a) & set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
            for key in keys:
                walk(a[key], b[key], f"{where}/{key}")
        elif isinstance(a, list | tuple | np.ndarray):
            assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{i}]")
        elif isinstance(a, int | float | np.number) and not isinstance(a, bool):
            key = where.rsplit("/", 1)[-1].split("[")[0]
            if key in COUNT_KEYS or isinstance(a, int | np.integer):
                assert a == b, f"{where}: count {a} != {b}"
            elif not (math.isnan(a) and math.isnan(b)):
                worst[key] = max(worst.get(key, 0.0), abs(float(a) - float(b)))
        else:
            assert a == b, f"{where}: {a!r} != {b!r}"

    walk(plain, secured, path)
    return worst
