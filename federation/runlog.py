"""The deployment run's log as the channel that carries a ServerApp's outcome back.

In deployment the ServerApp runs in a process of the SuperLink, whose stdout Flower forwards to
the run's log (``flwr log``, Control API ``StreamLogs``, kept in the SuperLink database). Progress
lines start with :data:`PROGRESS_MARKER`; the outcome is JSON, compressed and cut into lines that
start with :data:`OUTCOME_MARKER`; a failure is one :data:`FAILURE_MARKER` line before the
exception is re-raised (so Flower records the run as ``finished:failed``). :func:`decode_log`
turns such a log back into an :class:`~federation.protocol.Outcome`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import sys
import zlib
from typing import Any

import numpy as np

from analysis.errors import UserError
from federation.protocol import Outcome, RunFailed

PROGRESS_MARKER = "TRIALFED-PROGRESS"
OUTCOME_MARKER = "TRIALFED-OUTCOME"
FAILURE_MARKER = "TRIALFED-FAILURE"
CHUNK_CHARS = 8000
_OUTCOME_LINE = re.compile(rf"{OUTCOME_MARKER} ([0-9a-f]{{16}}) (\d+)/(\d+) ([A-Za-z0-9+/=]+)")
_FAILURE_LINE = re.compile(rf"{FAILURE_MARKER} (\{{.*\}})\s*$")
_PROGRESS_LINE = re.compile(rf"{PROGRESS_MARKER} (.*)$")


def _write_line(line: str) -> None:
    """One ``write`` call per line, so lines of other threads cannot land inside it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def emit_progress(message: str) -> None:
    _write_line(f"{PROGRESS_MARKER} {message}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__} in an outcome")


def encode_outcome(outcome: Outcome) -> list[str]:
    """The log lines that carry ``outcome``: ``MARKER <digest> <i>/<n> <base64 chunk>``.

    The JSON keeps every float exactly (``repr`` round trip), NaN and infinities included.
    """
    text = json.dumps(dataclasses.asdict(outcome), default=_json_default, allow_nan=True)
    payload = base64.b64encode(zlib.compress(text.encode("utf-8"), 6)).decode("ascii")
    digest = hashlib.sha256(payload.encode("ascii")).hexdigest()[:16]
    chunks = [payload[i : i + CHUNK_CHARS] for i in range(0, len(payload), CHUNK_CHARS)] or [""]
    return [f"{OUTCOME_MARKER} {digest} {i + 1}/{len(chunks)} {c}" for i, c in enumerate(chunks)]


def emit_outcome(outcome: Outcome) -> None:
    for line in encode_outcome(outcome):
        _write_line(line)


def emit_failure(exc: BaseException) -> None:
    kind = "UserError" if isinstance(exc, UserError) else type(exc).__name__
    _write_line(f"{FAILURE_MARKER} {json.dumps({'type': kind, 'message': str(exc)})}")


@dataclasses.dataclass
class LogReport:
    """What a deployment run's log says: progress lines, the outcome or the failure."""

    progress: list[str]
    outcome: Outcome | None
    failure: Exception | None


def progress_line(line: str) -> str | None:
    """The progress message in one log line, or ``None``."""
    match = _PROGRESS_LINE.search(line)
    return match.group(1) if match else None


def decode_log(text: str) -> LogReport:
    """Parse a run's whole log (see the module docstring); complete outcomes only."""
    progress: list[str] = []
    chunks: dict[str, dict[int, str]] = {}
    totals: dict[str, int] = {}
    failure: Exception | None = None
    for line in text.splitlines():
        if (message := progress_line(line)) is not None:
            progress.append(message)
        elif match := _OUTCOME_LINE.search(line):
            digest, index, total, chunk = match.groups()
            chunks.setdefault(digest, {})[int(index)] = chunk
            totals[digest] = int(total)
        elif match := _FAILURE_LINE.search(line):
            info = json.loads(match.group(1))
            message = str(info.get("message", "unknown error"))
            if info.get("type") == "UserError":
                failure = UserError(message)
            elif info.get("type") == "RunFailed":
                failure = RunFailed(message)
            else:
                failure = RunFailed(f"the ServerApp failed: {info.get('type')}: {message}")
    outcome = None
    for digest, parts in chunks.items():
        if len(parts) != totals[digest] or set(parts) != set(range(1, totals[digest] + 1)):
            continue
        payload = "".join(parts[i] for i in range(1, totals[digest] + 1))
        if hashlib.sha256(payload.encode("ascii")).hexdigest()[:16] != digest:
            continue
        data = json.loads(zlib.decompress(base64.b64decode(payload)).decode("utf-8"))
        outcome = Outcome(**data)
    return LogReport(progress=progress, outcome=outcome, failure=failure)
