"""Command lines and environments of the deployment processes.

- The coordinator's ``flower-superlink`` listens on ``127.0.0.1`` only (nginx faces the sites,
  :mod:`federation.deployment.proxy`), its database in the coordinator's state folder.
- A site's ``flower-supernode`` (Flower's, started through
  :mod:`federation.deployment.supernode` so that it polls promptly) runs with
  ``--isolation process``: Flower does not start
  ``flwr-clientapp`` for each message; the site's own runner
  (:mod:`federation.deployment.site_runner`) claims the tasks, authenticated to the SuperNode's
  local Runtime API with a per-site secret.

Flower's files of a site or of the ``flwr`` CLI go under ``$TRIALFED_HOME/<role>`` (default: the
user's data folder, ``~/.local/share/trialfed``; never the working directory). Telemetry, update
checks and runtime dependency installation are off in every process.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path

from analysis.errors import UserError
from federation.deployment.pki import CertFiles
from federation.deployment.state import data_home

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
HOME_ENV = "TRIALFED_HOME"
STOCK_POLLING_ENV = "TRIALFED_STOCK_FLOWER_POLLING"
"""Set to ``1`` (in the environment of ``trialfed site start`` or ``coordinator start``) to run
Flower's unmodified waits: the stock ``flower-supernode`` at a site, Flower's object retries in
the ServerApp. A fallback should a Flower upgrade break prompt polling; the benchmark's
"before"."""
PROMPT_NODE = "federation.deployment.supernode"
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


def trialfed_home() -> Path:
    """Base folder of the Flower homes of sites and the CLI (``$TRIALFED_HOME`` or data home)."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser().resolve() if configured else data_home()


def flower_env(role: str, home: Path | None = None) -> dict[str, str]:
    """The environment of a Flower process for ``role`` (``site-X``, ``cli``, ``coordinator``)."""
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


def parse_address(address: str, option: str = "--coordinator") -> tuple[str, int]:
    """Split ``HOST:PORT``; raise :class:`UserError` with the expected form otherwise."""
    match = _HOST_PORT.match(address.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UserError(
            f"{option} must be HOST:PORT (e.g. coord.example.org:9093); got {address!r}"
        )
    return match.group(1), int(match.group(2))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int, option: str) -> None:
    """:class:`UserError` naming ``option`` when ``host:port`` cannot be bound now."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            raise UserError(
                f"{option}: {host}:{port} is not free ({exc.strerror}); is another coordinator "
                "or program using it? Choose another port"
            ) from None


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def superlink_command(certs: CertFiles, port: int, database: Path) -> list[str]:
    """The ``flower-superlink`` command line of the coordinator, on ``127.0.0.1:port``.

    TLS (the ServerApp process and nginx connect to it over TLS, which is why the server
    certificate always names 127.0.0.1 and localhost), SuperNode authentication, no runtime
    ``uv sync`` of the app's dependencies, ServerApps in a subprocess, and a SQLite database
    so that enrolments, finished runs and their logs survive a restart.
    """
    certs.check_server()
    return [
        executable("flower-superlink"),
        "--ssl-ca-certfile",
        str(certs.ca_cert),
        "--ssl-certfile",
        str(certs.server_cert),
        "--ssl-keyfile",
        str(certs.server_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--isolation",
        "subprocess",
        "--database",
        str(database),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def runner_secret(home: Path) -> Path:
    """The site's SuperExec secret file (0600, created once): only its runner claims tasks."""
    path = home / "runner.secret"
    if not path.is_file() or path.stat().st_size == 0:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path


def supernode_command(
    bundle: Path, coordinator: str, ca: Path, key: Path, port: int, secret: Path
) -> list[str]:
    """The ``flower-supernode`` command line of a site (prompt polling:
    :mod:`federation.deployment.supernode`, unless :data:`STOCK_POLLING_ENV` is ``1``).

    The SuperNode only connects out to the coordinator (HTTPS, verified against ``ca``, signed
    with the site key); its local Runtime API listens on ``127.0.0.1:port`` only, and its tasks
    are answered by the site runner (``--isolation process``), which signs its claims with the
    secret in ``secret``.
    """
    path = str(bundle.resolve())
    if any(c in path for c in "'\"\\"):
        raise UserError(f"{path}: the bundle path must not contain quotes or backslashes")
    parse_address(coordinator)
    stock = os.environ.get(STOCK_POLLING_ENV) == "1"
    program = [executable("flower-supernode")] if stock else [sys.executable, "-m", PROMPT_NODE]
    return [
        *program,
        "--superlink",
        coordinator,
        "--root-certificates",
        str(ca.resolve()),
        "--auth-supernode-private-key",
        str(key.resolve()),
        "--node-config",
        f"bundle='{path}'",
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(secret),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def runner_command(port: int, bundle: Path, secret: Path) -> list[str]:
    """The site runner answering the SuperNode on ``127.0.0.1:port``."""
    return [
        sys.executable,
        "-m",
        "federation.deployment.site_runner",
        "--runtime",
        f"127.0.0.1:{port}",
        "--bundle",
        str(bundle.resolve()),
        "--secret-file",
        str(secret),
    ]
