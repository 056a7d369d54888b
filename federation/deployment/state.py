"""Where a coordinator keeps its state, and the lock that gives each state one coordinator.

A coordinator's state folder (``trialfed coordinator start --state DIR``; by default
``$XDG_DATA_HOME/trialfed/coordinator``, i.e. ``~/.local/share/trialfed/coordinator``, never the
working directory) holds:

- ``superlink.db``: Flower's database (enrolled keys, runs, their logs),
- ``roster.json``: the enrolled sites (:mod:`federation.deployment.roster`),
- ``coordinator.json``: the addresses of the running coordinator, read by the other
  ``trialfed coordinator`` commands, ``trialfed run``, ``status`` and ``results`` on this machine,
- ``proxy/``: the generated nginx configuration and its runtime files,
- ``coordinator.lock``: held (``flock``) by the running coordinator, with its PID inside.

A second coordinator on the same folder finds the lock taken and exits with status 2 naming
the PID that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from analysis.errors import UserError
from federation.deployment.lifecycle import pid_lock

STATE_ENV = "TRIALFED_STATE"
LOCK_FILE = "coordinator.lock"
INFO_FILE = "coordinator.json"
DATABASE = "superlink.db"
ROSTER_FILE = "roster.json"
ROSTER_ENV = "TRIALFED_ROSTER"
"""Environment variable naming the roster file to the coordinator's ServerApp processes."""


def data_home() -> Path:
    """``$XDG_DATA_HOME/trialfed`` (default ``~/.local/share/trialfed``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "trialfed"


def default_state_dir() -> Path:
    """``$TRIALFED_STATE``, else ``data_home()/coordinator``."""
    configured = os.environ.get(STATE_ENV)
    return Path(configured).expanduser() if configured else data_home() / "coordinator"


def state_dir(given: Path | None) -> Path:
    """The state folder to use: ``given`` (``--state``) or the default, as an absolute path."""
    return (given or default_state_dir()).expanduser().resolve()


def lock_holder(folder: Path) -> int | None:
    """The PID recorded in the lock file, if any (it may be stale; the lock decides)."""
    with contextlib.suppress(OSError, ValueError):
        return int((folder / LOCK_FILE).read_text().strip())
    return None


class StateLock:
    """An exclusive, non-blocking ``flock`` on ``DIR/coordinator.lock`` for this process.

    The kernel releases it when the process ends, however it ends, so a crash never leaves a
    stale lock behind.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`UserError` naming the coordinator that holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self._handle = pid_lock(self.folder / LOCK_FILE)
        if self._handle is None:
            pid = lock_holder(self.folder)
            raise UserError(
                f"the coordinator state {self.folder} is in use by another coordinator "
                f"(PID {pid if pid is not None else 'unknown'}); stop it first, or give this one "
                "its own folder with --state DIR"
            )

    def release(self) -> None:
        """Release the lock (also released when the process ends)."""
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def held_elsewhere(self) -> bool:
        """Whether some process holds the lock now (tries it without keeping it)."""
        path = self.folder / LOCK_FILE
        if not path.exists():
            return False
        with path.open("a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


@dataclass(frozen=True)
class CoordinatorInfo:
    """What a running coordinator tells the other commands on its machine."""

    state: str
    public: str
    control: str
    ca: str
    pid: int
    started: str

    def write(self) -> None:
        path = Path(self.state) / INFO_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def read(cls, folder: Path) -> CoordinatorInfo | None:
        """The coordinator of ``folder`` if one is running (its lock is held), else ``None``."""
        path = folder / INFO_FILE
        if not path.is_file() or not StateLock(folder).held_elsewhere():
            return None
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None


def running_coordinator(folder: Path | None) -> CoordinatorInfo:
    """The coordinator running on ``folder`` (default state); :class:`UserError` if none."""
    where = state_dir(folder)
    info = CoordinatorInfo.read(where)
    if info is None:
        raise UserError(
            f"no coordinator is running on the state {where}; start it with "
            "`trialfed coordinator start`, pass its folder with --state DIR, or name a remote "
            "one with --coordinator HOST:PORT --ca ca.crt"
        )
    return info


def find_state_for(control: str) -> Path | None:
    """The state folder (default one) whose running coordinator serves Control API ``control``."""
    info = CoordinatorInfo.read(state_dir(None))
    if info is not None and info.control == control:
        return Path(info.state)
    return None
