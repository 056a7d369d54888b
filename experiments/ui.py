"""``trialfed ui``: the MLflow UI on the store that ``trialfed run`` tracks to.

It serves :func:`experiments.tracking.tracking_uri` with the same artifact root, on 127.0.0.1 by
default, in its own process group so that stopping it stops every process it started. SIGTERM,
SIGINT and SIGHUP to ``trialfed ui`` stop the MLflow server and its workers (the group, then any
descendant left) within a bounded time, and the command ends with one final line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import IO, Any

from analysis.errors import UserError
from experiments.tracking import artifact_root, tracking_uri
from federation.deployment.lifecycle import (
    Stopped,
    descendants,
    ignored_signals,
    kill_remembered,
    stop_signals,
)

WORKFLOW = "machine_learning"
"""MLflow 3's UI opens in its GenAI view unless the URL asks for the model-training one."""


def ui_query() -> str:
    """The query string of UI links that open the model-training view (runs, params,
    metrics, artifacts) rather than the GenAI view."""
    return f"workflowType={WORKFLOW}"


def ui_command(host: str, port: int, uri: str | None = None) -> list[str]:
    """The ``mlflow server`` command line serving store ``uri`` (default: the configured one)."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://", "databricks")):
        raise UserError(f"MLFLOW_TRACKING_URI points at a server already: {uri}; open it there")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root, "--artifacts-destination", root]
    return cmd + ["--host", host, "--port", str(port), "--workers", "1"]


def start_ui(
    host: str, port: int, tracking_uri: str | None = None, *, log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Start the MLflow UI in a new process group (``os.killpg(proc.pid, ...)`` stops it all)."""
    with socket.socket() as probe:
        if probe.connect_ex((host if host != "0.0.0.0" else "127.0.0.1", port)) == 0:
            raise UserError(f"port {port} on {host} is in use; choose another with --port")
    return subprocess.Popen(
        ui_command(host, port, tracking_uri),
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
    )


def wait_until_ready(
    url: str, timeout: float = 120.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``url``/health until it answers 200; TimeoutError after ``timeout`` seconds,
    RuntimeError as soon as ``proc`` (when given) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the MLflow UI exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the MLflow UI at {url} did not answer within {timeout:.0f} s")


def stop_ui(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    """Stop the UI's process group: SIGTERM, then SIGKILL after ``timeout`` seconds; then kill
    any descendant that left the group (MLflow's workers)."""
    tree = descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    kill_remembered(tree)
    return proc.poll()


def main_ui(args: Any) -> int:
    """``trialfed ui``: serve the configured store until SIGTERM, SIGINT or SIGHUP."""
    uri = tracking_uri()
    url = f"http://{args.host}:{args.port}"
    proc = start_ui(args.host, args.port, uri)
    reason = "the MLflow server exited"
    try:
        with stop_signals():
            wait_until_ready(url, timeout=180.0, proc=proc)
            print(
                f"MLflow UI for {uri} at {url}/#/experiments?{ui_query()} (Ctrl-C to stop)",
                flush=True,
            )
            code = proc.wait()
            reason = f"the MLflow server exited with status {code}"
            return code
    except Stopped as stop:
        reason = f"{stop.signame} received"
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"trialfed: error: {exc}", file=sys.stderr)
        return 1
    finally:
        started = time.monotonic()
        with ignored_signals():
            stop_ui(proc)
        print(
            f"trialfed: MLflow UI stopped ({reason}; its processes stopped in "
            f"{time.monotonic() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
