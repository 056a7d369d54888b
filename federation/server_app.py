"""The trialfed ServerApp: runs the round protocol of an analysis plan over the Grid.

Deployment: the plan travels as TOML text in the run config key ``plan-toml``. The ServerApp runs
in a process of the SuperLink, whose stdout Flower forwards to the run's log (``flwr log``,
Control API ``StreamLogs``, kept in the SuperLink database). The outcome travels back the same
way: progress lines start with :data:`PROGRESS_MARKER`, the outcome is JSON, compressed and cut
into lines starting with :data:`OUTCOME_MARKER`, and a failure is one :data:`FAILURE_MARKER` line
before the exception is re-raised (so Flower records the run as ``finished:failed``).
:func:`decode_log` turns such a log back into an :class:`~federation.protocol.Outcome`.
Simulation: :func:`make_server_app` is given the validated plan and a list to put the outcome in.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import sys
import zlib
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from analysis.errors import UserError
from experiments.plan import Plan, parse_plan
from federation.protocol import Outcome, RunFailed, run_plan
from federation.transport import GridTransport

log = logging.getLogger("trialfed")

PROGRESS_MARKER = "TRIALFED-PROGRESS"
OUTCOME_MARKER = "TRIALFED-OUTCOME"
FAILURE_MARKER = "TRIALFED-FAILURE"
CHUNK_CHARS = 8000
_OUTCOME_LINE = re.compile(rf"{OUTCOME_MARKER} ([0-9a-f]{{16}}) (\d+)/(\d+) ([A-Za-z0-9+/=]+)")
_FAILURE_LINE = re.compile(rf"{FAILURE_MARKER} (\{{.*\}})\s*$")
_PROGRESS_LINE = re.compile(rf"{PROGRESS_MARKER} (.*)$")


def make_server_app(
    plan: Plan | None = None, expected_nodes: int = 0, sink: list[Any] | None = None
) -> ServerApp:
    """A ServerApp that runs ``plan`` (or the run config's plan) and records the outcome."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        progress = log.info if sink is not None else _emit_progress
        try:
            current = plan or parse_plan(str(context.run_config["plan-toml"]), "run config")
            expected = expected_nodes or int(context.run_config.get("expected-sites", 0))
            transport = GridTransport(grid, expected_nodes=expected)
            outcome: Any = run_plan(current, transport, progress=progress)
        except Exception as exc:  # handed to the launcher, which reports it
            if sink is None:
                _emit_failure(exc)
                raise
            outcome = exc
        if sink is not None:
            sink.append(outcome)
        else:
            _emit_outcome(outcome)

    return app


app = make_server_app()


# --- deployment: the outcome travels back in the run's log --------------------------------------


def _write_line(line: str) -> None:
    """One ``write`` call per line, so lines of other threads cannot land inside it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _emit_progress(message: str) -> None:
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


def _emit_outcome(outcome: Outcome) -> None:
    for line in encode_outcome(outcome):
        _write_line(line)


def _emit_failure(exc: BaseException) -> None:
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
