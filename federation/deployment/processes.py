"""Starting Flower's deployment processes: the coordinator's SuperLink and a site's SuperNode.

Everything Flower writes (installed app bundles, the SuperLink database, the CLI's connection
file) goes under a project-local ``FLWR_HOME``: ``$TRIALFED_HOME/<role>`` with
``TRIALFED_HOME`` defaulting to ``./.flwr`` (git-ignored and never packed into an app bundle).
Telemetry, update checks and runtime dependency installation are off in every process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from analysis.errors import UserError
from federation.deployment.pki import CertFiles

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
STOP_GRACE_S = 15.0
OUTPUT_GRACE_S = 2.0
"""How long the last lines of an exited child may take to be read."""
ACTIVATION_REFUSED = "Failed to activate SuperNode"
"""What flower-supernode prints when the coordinator refuses to activate it (Flower exit code
305, code 2004). Flower 1.42 exits with status 1 for every error (``flwr_exit``), so the status
alone cannot tell a refusal from any other failure."""
ACTIVATION_RETRY_S = float(os.environ.get("TRIALFED_ACTIVATION_RETRY_S", "120"))
ACTIVATION_PAUSE_S = 5.0
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


def trialfed_home() -> Path:
    """The base folder of the project-local Flower homes (``$TRIALFED_HOME`` or ``./.flwr``)."""
    return Path(os.environ.get("TRIALFED_HOME", ".flwr")).expanduser().resolve()


def flower_env(role: str, home: Path | None = None) -> dict[str, str]:
    """The environment of a Flower process for ``role`` (``coordinator``, ``site-X``, ``cli``)."""
    env = dict(os.environ)
    env.update(QUIET_ENV)
    # Flower starts helpers by name (the SuperLink runs `flower-superexec`): find them next to
    # this Python even when the virtual environment is not activated.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]).rstrip(os.pathsep)
    flwr_home = home or trialfed_home() / role
    flwr_home.mkdir(parents=True, exist_ok=True)
    env["FLWR_HOME"] = str(flwr_home)
    return env


def executable(name: str) -> str:
    """Path of a Flower console script, next to this Python first, then on ``PATH``."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name} not found: install flwr 1.42 in this environment")
    return found


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT``; raise :class:`UserError` with the expected form otherwise."""
    match = _HOST_PORT.match(address.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UserError(
            f"--coordinator must be HOST:PORT (e.g. coord.example.org:9093); got {address!r}"
        )
    return match.group(1), int(match.group(2))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def superlink_command(certs: Path, host: str, port: int, state: Path) -> list[str]:
    """The ``flower-superlink`` command line of the coordinator.

    TLS on the one HTTPS port (Fleet, Control and Runtime APIs), SuperNode authentication,
    no runtime ``uv sync`` of the app's dependencies, and a SQLite database in ``state`` so that
    enrolments, finished runs and their logs survive a restart. ServerApps run in a subprocess
    (``--isolation subprocess``) that connects back to ``127.0.0.1:PORT``, which is why the
    server certificate always names 127.0.0.1 and localhost.
    """
    files = CertFiles.in_dir(certs.resolve())
    files.check_server()
    state.mkdir(parents=True, exist_ok=True)
    return [
        executable("flower-superlink"),
        "--ssl-ca-certfile",
        str(files.ca_cert),
        "--ssl-certfile",
        str(files.server_cert),
        "--ssl-keyfile",
        str(files.server_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--isolation",
        "subprocess",
        "--database",
        str(state / "superlink.db"),
        "--host",
        host,
        "--port",
        str(port),
    ]


def supernode_command(bundle: Path, coordinator: str, ca: Path, key: Path, port: int) -> list[str]:
    """The ``flower-supernode`` command line of a site.

    The SuperNode only connects out to the coordinator (HTTPS, verified against ``ca``, signed
    with the site key); its local ClientApp API listens on ``127.0.0.1:port`` only.
    """
    path = str(bundle.resolve())
    if any(c in path for c in "'\"\\"):
        raise UserError(f"{path}: the bundle path must not contain quotes or backslashes")
    parse_address(coordinator)
    return [
        executable("flower-supernode"),
        "--superlink",
        coordinator,
        "--root-certificates",
        str(ca.resolve()),
        "--auth-supernode-private-key",
        str(key.resolve()),
        "--node-config",
        f"bundle='{path}'",
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def run_site(command: Sequence[str], env: dict[str, str], retry_s: float | None = None) -> int:
    """Run a SuperNode in the foreground, retrying while the coordinator refuses activation.

    A SuperLink refuses a node whose key is not enrolled, and also a node whose previous
    connection it still counts as online (about 48 s after a crash): flower-supernode then
    prints :data:`ACTIVATION_REFUSED` and exits at once. A restarted site therefore retries for
    ``retry_s`` seconds (``$TRIALFED_ACTIVATION_RETRY_S``, default 120) before giving up.
    """
    limit = ACTIVATION_RETRY_S if retry_s is None else retry_s
    deadline = time.monotonic() + limit
    while True:
        lines: list[str] = []
        code = run_foreground(command, env, lines.append)
        refused = code != 0 and any(ACTIVATION_REFUSED in line for line in lines)
        if not refused or time.monotonic() + ACTIVATION_PAUSE_S > deadline:
            if refused:
                print(
                    "trialfed: the coordinator refused this site: its public key is not "
                    "enrolled (`trialfed coordinator enroll site.pub`) or it is the wrong key",
                    file=sys.stderr,
                )
            return code
        print(
            "trialfed: the coordinator refused activation (not enrolled yet, or the previous "
            f"connection of this site has not expired); retrying in {ACTIVATION_PAUSE_S:g} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(ACTIVATION_PAUSE_S)


def run_foreground(
    command: Sequence[str], env: dict[str, str], on_line: Callable[[str], None] | None = None
) -> int:
    """Run ``command`` in the foreground; Ctrl-C stops it (and its helpers) gracefully.

    The child shares this terminal's process group, so Ctrl-C reaches it directly; this process
    then waits up to :data:`STOP_GRACE_S` seconds before terminating and finally killing it.
    With ``on_line``, the child's output passes through this process (to stderr) on a thread,
    each line also given to ``on_line``; the wait ends when the child does, not when its pipe
    closes (Flower's helper processes inherit it and may outlive the child).
    """
    piped = on_line is not None
    proc = subprocess.Popen(
        list(command),
        env=env,
        stdout=subprocess.PIPE if piped else None,
        stderr=subprocess.STDOUT if piped else None,
        text=piped,
        errors="replace" if piped else None,
    )
    reader = None
    if proc.stdout is not None and on_line is not None:
        reader = threading.Thread(
            target=_forward, args=(proc.stdout, on_line), name="supernode-output", daemon=True
        )
        reader.start()
    try:
        return _wait_gracefully(proc)
    finally:
        if reader is not None:
            reader.join(OUTPUT_GRACE_S)  # the lines the child wrote just before it exited


def _forward(stream: IO[str], on_line: Callable[[str], None]) -> None:
    with stream:
        for line in stream:
            sys.stderr.write(line)
            sys.stderr.flush()
            on_line(line)


def _wait_gracefully(proc: subprocess.Popen[Any]) -> int:
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            return proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait(timeout=STOP_GRACE_S)


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.2)
    return False
