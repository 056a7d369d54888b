"""``trialfed coordinator start``: the SuperLink behind nginx, on one locked state folder.

1. The state folder is locked (:class:`~federation.deployment.state.StateLock`): a second
   coordinator on it exits with status 2 naming the first one's PID.
2. Both ports are checked free first (a clear error instead of uvicorn's "address already in
   use" after start-up).
3. ``flower-superlink`` starts on ``127.0.0.1:<control port>`` with its database in the state
   folder, and nginx on the public address forwarding only the Fleet API to it
   (:mod:`federation.deployment.proxy`).
4. ``coordinator.json`` tells the other commands on this machine where the Control API is.

SIGTERM, SIGINT or SIGHUP stops nginx, the SuperLink and every process they started, then the
command prints one final line and exits 0.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import UserError
from federation.deployment import proxy
from federation.deployment.lifecycle import Supervisor, exited, supervise_until_stopped
from federation.deployment.pki import CertFiles
from federation.deployment.processes import (
    check_port_free,
    flower_env,
    superlink_command,
    wait_for_port,
)
from federation.deployment.state import (
    DATABASE,
    ROSTER_ENV,
    ROSTER_FILE,
    CoordinatorInfo,
    StateLock,
)

READY_TIMEOUT_S = 60.0
"""Set in the SuperLink's environment (inherited by its ServerApp processes): the roster file,
so the ServerApp can hold every run to the coordinator's roster, whoever submitted it."""


@dataclass
class CoordinatorService:
    """The processes of one coordinator (see the module docstring)."""

    state: Path
    certs: Path
    host: str
    port: int
    control_port: int
    say: Callable[[str], None]

    def _addresses(self) -> tuple[str, str]:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}", f"127.0.0.1:{self.control_port}"

    def run(self) -> int:
        """Start, serve until a stop signal or a failure, stop everything; exit status."""
        if self.port == self.control_port:
            raise UserError(
                f"--control-port must differ from --port (both {self.port}): the Control API "
                "listens on 127.0.0.1 apart from the sites' port"
            )
        lock = StateLock(self.state)
        lock.acquire()
        files = CertFiles.in_dir(self.certs.resolve())
        files.check_server()
        public, control = self._addresses()
        check_port_free(self.host, self.port, "--port")
        check_port_free("127.0.0.1", self.control_port, "--control-port")
        config = proxy.write_config(self.state, public, control, files)
        proxy.check_config(config)
        env = flower_env("coordinator", self.state / "flower")
        env[ROSTER_ENV] = str(self.state / ROSTER_FILE)
        supervisor = Supervisor(self.say)
        superlink = supervisor.start(
            "flower-superlink",
            superlink_command(files, self.control_port, self.state / DATABASE),
            env,
            cwd=self.state,
        )
        if not wait_for_port("127.0.0.1", self.control_port, READY_TIMEOUT_S):
            supervisor.stop()
            code = superlink.popen.poll()
            raise UserError(
                f"the SuperLink did not listen on {control} within {READY_TIMEOUT_S:g} s"
                f"{f' (exit status {code})' if code is not None else ''}; see its output above"
            )
        supervisor.start("nginx", proxy.nginx_command(config), env, cwd=self.state)
        CoordinatorInfo(
            state=str(self.state),
            public=public,
            control=control,
            ca=str(files.ca_cert),
            pid=os.getpid(),
            started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ).write()
        self.say(f"coordinator state: {self.state} (locked by PID {os.getpid()})")
        self.say(f"sites connect to https://{public} (nginx: Fleet API only, TLS)")
        self.say(f"Control API (runs, enrolment) on https://{control}, this machine only")
        try:
            return supervise_until_stopped(supervisor, exited, "coordinator")
        finally:
            (self.state / "coordinator.json").unlink(missing_ok=True)
            lock.release()
