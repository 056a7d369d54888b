"""``trialfed site start``: a site's SuperNode and its runner, supervised together.

Two processes serve a site: ``flower-supernode --isolation process`` (the connection to the
coordinator) and the site runner (:mod:`federation.deployment.site_runner`, which answers each
task with the site's installed trialfed). Both run under a :class:`~federation.deployment.
lifecycle.Supervisor`, so SIGTERM, SIGINT or SIGHUP stops both and everything they started.

The SuperNode's output passes through :class:`NodeOutput`, which turns Flower's long failure
reports into one line each:

- activation refused (``Failed to activate SuperNode``): the key is not enrolled yet, or the
  coordinator still counts this site's previous, hard-killed connection as online (up to 60 s).
  The site then signs a ``DeactivateNode`` for that old connection with its own key and tries
  again at once; otherwise it retries every :data:`ACTIVATION_PAUSE_S` s for
  ``$TRIALFED_ACTIVATION_RETRY_S`` (default 120) seconds.
- authentication refused (HTTP 401 after the site was connected): the coordinator revoked this
  site (``trialfed coordinator revoke``); the site stops with exit status 3.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from analysis.errors import UserError
from federation.deployment.lifecycle import (
    Child,
    Supervisor,
    exited,
    pid_lock,
    supervise_until_stopped,
)
from federation.deployment.processes import runner_command, runner_secret, supernode_command

ACTIVATION_REFUSED = "Failed to activate SuperNode"
"""What flower-supernode prints when the coordinator refuses to activate it (Flower exit code
305, code 2004). Flower 1.42 exits with status 1 for every error, so the status alone cannot
tell a refusal from any other failure."""
ACTIVATION_RETRY_S = float(os.environ.get("TRIALFED_ACTIVATION_RETRY_S", "120"))
ACTIVATION_PAUSE_S = 5.0
REVOKED_EXIT = 3
ACCEPTED, UNAUTHORIZED = 200, 401
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_UNAUTHORIZED = re.compile(r"401 Unauthorized|Invalid SuperNode authentication")
_TRACEBACK_STARTS = ("Traceback", "Exception in thread")
# Another thread's log line, printed while a dying thread's traceback is still being written.
_LOG_LINE = re.compile(r"^(\x1b\[\d+m)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
# The last line of a traceback: ``httpx.HTTPStatusError: ...`` (never indented).
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: |\s*$)")
# httpx's error message goes on past the exception line.
_EXCEPTION_TAIL = "For more information check:"


@dataclass
class NodeOutput:
    """Reads the SuperNode's output lines (see the module docstring); passes the rest on."""

    write: Callable[[str], None]
    node_id: int | None = None
    refused: bool = False
    revoked: bool = False
    held: list[str] = field(default_factory=list)
    in_traceback: bool = False

    @property
    def activated(self) -> bool:
        return self.node_id is not None

    def __call__(self, line: str) -> None:
        if match := _NODE_ID.search(line):
            self.node_id = int(match.group(1))
        self.refused = self.refused or ACTIVATION_REFUSED in line
        self.revoked = self.revoked or (self.activated and bool(_UNAUTHORIZED.search(line)))
        if not self.activated:
            self.held.append(line)  # shown only if the start fails for another reason
            return
        if self.held and not self.in_traceback:
            self._release()
        if line.startswith(_TRACEBACK_STARTS):
            self.in_traceback = True
        if not self.in_traceback:
            if not (self.revoked and line.startswith(_EXCEPTION_TAIL)):
                self.write(line)
        elif _LOG_LINE.match(line):
            self.write(line)  # the main thread goes on while the traceback is written
        else:
            self.held.append(line)
            if _EXCEPTION_LINE.match(line) and line.strip():
                self.in_traceback = False
                if self.revoked:
                    self.held.clear()
                else:
                    self._release()

    def _release(self) -> None:
        for held in self.held:
            self.write(held)
        self.held.clear()

    def finish(self, quiet: bool = False) -> None:
        """At exit: show what was held back unless it was a refusal or a revocation."""
        if not (quiet or self.refused or self.revoked):
            self._release()
        self.held.clear()

    def reset(self) -> None:
        """Before the SuperNode starts again."""
        self.refused, self.revoked, self.in_traceback = False, False, False
        self.held.clear()


def _stderr(line: str) -> None:
    sys.stderr.write(line)
    sys.stderr.flush()


class SiteLock:
    """One ``trialfed site start`` per site home (two would share the key and the node id)."""

    def __init__(self, home: Path) -> None:
        self.path = home / "site.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        self._handle = pid_lock(self.path)
        if self._handle is None:
            pid = self.path.read_text().strip() or "unknown"
            raise UserError(
                f"this site is already being served from {self.path.parent} (PID {pid}); stop "
                "it first"
            )


@dataclass
class SiteService:
    """The processes of one site (see the module docstring)."""

    site_id: str
    bundle: Path
    coordinator: str
    ca: Path
    key: Path
    port: int
    env: dict[str, str]
    say: Callable[[str], None]
    retry_s: float = ACTIVATION_RETRY_S

    def __post_init__(self) -> None:
        self.home = Path(self.env["FLWR_HOME"])
        self.secret = runner_secret(self.home)
        self.output = NodeOutput(_stderr)
        self.supervisor = Supervisor(self.say)
        self.node: Child | None = None
        self.deadline = 0.0
        self.deactivated = False
        self.exit_code = 0

    @property
    def node_id_file(self) -> Path:
        """The node id this site's key last had (one file per key: another key never uses it)."""
        from federation.deployment.pki import public_line

        digest = hashlib.sha256(public_line(self.key).encode("ascii")).hexdigest()
        return self.home / f"node-id-{digest[:16]}"

    def start_node(self) -> None:
        self.output.reset()
        command = supernode_command(
            self.bundle, self.coordinator, self.ca, self.key, self.port, self.secret
        )
        self.node = self.supervisor.start("flower-supernode", command, self.env, self._line)

    def _line(self, line: str) -> None:
        known = self.output.node_id
        self.output(line)
        if self.output.node_id is not None and self.output.node_id != known:
            self.node_id_file.write_text(f"{self.output.node_id}\n")
            self.say(
                f"site {self.site_id} connected to {self.coordinator} as node {self.output.node_id}"
            )

    def run(self) -> int:
        """Serve until a stop signal, a revocation, or a failure; returns the exit status."""
        self.lock = SiteLock(self.home)  # held (kept referenced) for the whole run
        self.lock.acquire()
        self.deadline = time.monotonic() + self.retry_s
        runner_env = {**self.env, "PYTHONUNBUFFERED": "1"}
        self.supervisor.start(
            "site-runner", runner_command(self.port, self.bundle, self.secret), runner_env
        )
        self.start_node()
        code = supervise_until_stopped(self.supervisor, self._on_exit, f"site {self.site_id}")
        return self.exit_code or code

    def _on_exit(self, child: Child) -> str | None:
        """Restart a refused SuperNode; stop on anything else (see the module docstring)."""
        if child is not self.node:
            self.exit_code = 1
            return exited(child)
        code = child.popen.returncode
        # A revoked SuperNode stops itself (its heartbeat gets HTTP 401 and it sends itself
        # SIGINT, exit status 0) or dies on a 401 traceback: ask the coordinator which.
        status = self._deactivate_previous() if self.output.activated else 0
        revoked = self.output.revoked or status == UNAUTHORIZED
        self.output.finish(quiet=revoked)
        if revoked:
            return self._revoked()
        if not self.output.refused:
            self.exit_code = code or 0
            if code == 0:
                return "flower-supernode ended its connection"
            return exited(child)
        self.supervisor.forget(child)
        return self._retry_activation()

    def _revoked(self) -> str:
        self.say(
            f"site {self.site_id}: the coordinator no longer accepts this site's key (HTTP 401): "
            "the site was revoked (`trialfed coordinator revoke`). Stopping. To rejoin, make a "
            "new key pair (`trialfed site keygen`) and have it enrolled"
        )
        self.exit_code = REVOKED_EXIT
        return "revoked by the coordinator"

    def _retry_activation(self) -> str | None:
        if not self.deactivated:
            # The previous connection may still count as online (hard kill): end it, once.
            self.deactivated = True
            status = self._deactivate_previous()
            if status == UNAUTHORIZED:
                return self._revoked()
            if status == ACCEPTED:
                self.say(f"site {self.site_id}: ended its previous connection; connecting again")
                self.start_node()
                return None
        if time.monotonic() + ACTIVATION_PAUSE_S > self.deadline:
            self.say(
                f"site {self.site_id}: the coordinator refused this site for {self.retry_s:g} s: "
                "its public key is not enrolled (`trialfed coordinator enroll site.pub --site "
                f"{self.site_id} ...`) or it is the wrong key"
            )
            self.exit_code = 1
            return "not enrolled at the coordinator"
        self.say(
            f"site {self.site_id}: the coordinator refused activation (not enrolled yet, or its "
            f"previous connection has not expired); retrying in {ACTIVATION_PAUSE_S:g} s"
        )
        time.sleep(ACTIVATION_PAUSE_S)
        self.start_node()
        return None

    def _deactivate_previous(self) -> int:
        """``DeactivateNode`` for the last node id this site had (0 when there is none)."""
        from federation.deployment.flower_site import deactivate_node

        try:
            node_id = int(self.node_id_file.read_text().strip())
        except (OSError, ValueError):
            return 0
        return deactivate_node(self.coordinator, self.ca, self.key, node_id)
