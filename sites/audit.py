"""The site's tamper-evident audit log: one JSON line per reply, hash-chained.

Each entry records what was asked and what left the site (the SHA-256 of the exact request and
reply payloads, the query kinds and analyses, the round, the outcome) and the hash of the entry
before it, so removing, reordering or editing any entry breaks the chain from that point on.
:func:`verify` re-computes the chain. The log holds no row-level data.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.errors import UserError

GENESIS = "0" * 64
SECTIONS = ("summary", "event_tables", "cox_local", "cox_eval")


def payload_digest(payload: Any) -> str:
    """SHA-256 of a payload's canonical JSON (arrays as their bytes' digest)."""

    def canonical(value: Any) -> Any:
        if hasattr(value, "tobytes") and hasattr(value, "dtype"):
            return {
                "array": str(value.dtype),
                "shape": list(value.shape),
                "sha256": hashlib.sha256(value.tobytes()).hexdigest(),
            }
        if isinstance(value, dict):
            return {str(k): canonical(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [canonical(v) for v in value]
        return value

    text = json.dumps(canonical(payload), sort_keys=True, allow_nan=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _last_hash(path: Path) -> str:
    if not path.exists() or path.stat().st_size == 0:
        return GENESIS
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 65536))
        last = handle.read().splitlines()[-1]
    return str(json.loads(last)["hash"])


def record(
    path: Path, site_id: str, request: dict[str, Any], reply: dict[str, Any], ok: bool
) -> dict[str, Any]:
    """Append one entry for a reply that is about to leave the site; return the entry.

    Raises UserError when the log cannot be written: a site that cannot audit does not answer.
    """
    queries = [
        {"section": s, "analysis": q.get("analysis"), "kind": q.get("kind", s)}
        for s in SECTIONS
        for q in request.get(s, [])
    ]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "site": site_id,
            "round": request.get("round"),
            "queries": queries,
            "request_sha256": payload_digest(request),
            "reply_sha256": payload_digest(reply),
            "outcome": "answered" if ok else "refused",
            "prev": _last_hash(path),
        }
        entry["hash"] = _entry_hash(entry)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise UserError(f"site {site_id}: cannot write the audit log {path}: {exc}") from None
    return entry


@dataclass(frozen=True)
class AuditReport:
    """Result of :func:`verify`."""

    entries: int
    ok: bool
    problem: str = ""


def verify(path: Path) -> AuditReport:
    """Re-compute the hash chain of an audit log; name the first broken line."""
    if not path.exists():
        raise UserError(f"{path}: audit log not found")
    previous = GENESIS
    count = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return AuditReport(count, False, f"line {number}: not valid JSON")
        if entry.get("prev") != previous:
            return AuditReport(count, False, f"line {number}: chain broken (prev hash differs)")
        if entry.get("hash") != _entry_hash(entry):
            return AuditReport(count, False, f"line {number}: entry was altered (hash differs)")
        previous = entry["hash"]
        count += 1
    return AuditReport(count, True)
