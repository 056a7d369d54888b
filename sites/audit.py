"""The site's tamper-evident audit log: one JSON line per request, hash-chained.

Each entry records the plan hash and study, the round, what the site derived from the plan
(queries: variables and groups; Cox evaluations: the model and its coefficient vector, the grid
size), what left the site (per answer a SHA-256 of the bytes and how many numbers), each analysis
it refused with the rule, or the rule that refused the whole request, the SHA-256 of the exact
request and reply, its position (``index``) and the hash of the entry before it. Removing,
reordering or editing any entry breaks the chain from that point on (:func:`verify`).

Every reply carries the chain head and entry count after its own entry; results.json keeps them
per site, so :func:`verify` with ``against`` also detects a log cut short, emptied or started
again since that run. The log holds no row-level data.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.errors import UserError

GENESIS = "0" * 64


def _canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {
            "array": str(value.dtype),
            "shape": list(value.shape),
            "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(),
        }
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def payload_digest(payload: Any) -> str:
    """SHA-256 of a payload's canonical JSON (arrays as their bytes' digest)."""
    text = json.dumps(_canonical(payload), sort_keys=True, allow_nan=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def count_numbers(payload: Any) -> int:
    """How many numbers a payload holds (array elements and numeric leaves)."""
    if isinstance(payload, np.ndarray):
        return int(payload.size)
    if isinstance(payload, dict):
        return sum(count_numbers(v) for v in payload.values())
    if isinstance(payload, list | tuple):
        return sum(count_numbers(v) for v in payload)
    return int(isinstance(payload, int | float | np.number) and not isinstance(payload, bool))


def released(answers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per answer: the digest of what left and how many numbers."""
    return {
        key: {"sha256": payload_digest(value), "numbers": count_numbers(value)}
        for key, value in answers.items()
    }


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, allow_nan=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _last(path: Path) -> tuple[str, int]:
    if not path.exists() or path.stat().st_size == 0:
        return GENESIS, 0
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 262144))
        last = json.loads(handle.read().splitlines()[-1])
    return str(last["hash"]), int(last.get("index", 0))


def record(path: Path, site_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Append one entry (``fields`` plus time, site, index and chain); return the stamp
    ``{"head", "entries"}`` that the reply carries.

    Raises UserError when the log cannot be written: a site that cannot audit does not answer.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        head, index = _last(path)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "site": site_id,
            **_canonical(fields),
            "index": index + 1,
            "nonce": secrets.token_hex(8),  # a log rebuilt with the same requests still differs
            "prev": head,
        }
        entry["hash"] = _entry_hash(entry)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True, allow_nan=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except (OSError, ValueError) as exc:
        raise UserError(f"site {site_id}: cannot write the audit log {path}: {exc}") from None
    return {"head": entry["hash"], "entries": entry["index"]}


@dataclass(frozen=True)
class AuditReport:
    """Result of :func:`verify`."""

    entries: int
    ok: bool
    problem: str = ""


def verify(path: Path, against: dict[str, Any] | None = None) -> AuditReport:
    """Re-compute the hash chain; name the first broken line.

    Parameters
    ----------
    path : Path
        The log.
    against : dict, optional
        A stamp ``{"head", "entries"}`` from a run's results.json: the log must still hold that
        entry at that position (a log cut short, emptied or restarted since then fails).
    """
    if not path.exists():
        if against:
            return AuditReport(
                0, False, f"the log is gone; results name entry {against['entries']}"
            )
        raise UserError(f"{path}: audit log not found")
    previous = GENESIS
    count = 0
    seen_head = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return AuditReport(count, False, f"line {number}: not valid JSON")
        if entry.get("prev") != previous:
            return AuditReport(count, False, f"line {number}: chain broken (prev hash differs)")
        if entry.get("hash") != _entry_hash(entry):
            return AuditReport(count, False, f"line {number}: entry was altered (hash differs)")
        if entry.get("index", number) != number:
            return AuditReport(
                count, False, f"line {number}: index {entry.get('index')} out of place"
            )
        previous = entry["hash"]
        count += 1
        if against and number == int(against["entries"]):
            seen_head = entry["hash"] == against["head"]
            if not seen_head:
                return AuditReport(
                    count,
                    False,
                    f"line {number}: not the entry the run recorded (the log was restarted or "
                    "rewritten since)",
                )
    if against and not seen_head:
        return AuditReport(
            count,
            False,
            f"the log has {count} entries; the run recorded entry {against['entries']} "
            "(the log was cut short or emptied since)",
        )
    return AuditReport(count, True)
