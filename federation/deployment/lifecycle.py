"""Process lifecycle of the long-running ``trialfed`` commands.

``trialfed coordinator start``, ``trialfed site start``, ``trialfed ui`` and a deployed
``trialfed run`` start other processes (Flower's SuperLink and SuperNode and the helpers those
start, nginx, the site runner, the MLflow server). SIGTERM, SIGINT and SIGHUP to the ``trialfed``
command stop every one of them within a bounded time, and the command ends with one final line:

- :class:`Supervisor` starts each child in its own process group (a new session, so a terminal's
  Ctrl-C reaches only ``trialfed``, which then stops the children in order) and, on Linux, asks
  the kernel to send the child SIGTERM should ``trialfed`` itself die (``PR_SET_PDEATHSIG``).
  :meth:`Supervisor.stop` sends SIGTERM to each group, waits up to :data:`STOP_GRACE_S`, then
  SIGKILLs the group and every descendant still alive (found through ``/proc``).
- :func:`stop_signals` turns SIGTERM and SIGHUP into :class:`Stopped` (a ``KeyboardInterrupt``),
  so the code that handles Ctrl-C (stopping a remote run, marking the MLflow run KILLED) handles
  every stop signal the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_S = 10.0
"""How long children get to stop after SIGTERM before they are killed."""
KILL_WAIT_S = 5.0
_PR_SET_PDEATHSIG = 1


class Stopped(KeyboardInterrupt):
    """A stop signal arrived (SIGTERM, SIGINT or SIGHUP); ``signame`` says which."""

    def __init__(self, signame: str = "SIGINT") -> None:
        super().__init__(signame)
        self.signame = signame


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM, SIGINT and SIGHUP raise :class:`Stopped` in the main thread.

    Outside the main thread (where Python cannot install handlers) the block runs unchanged.
    The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_stopped(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, raise_stopped) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of a living process from ``/proc/PID/stat``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # a zombie has exited; only its parent's wait is left
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """Every living descendant of ``pid`` with its start time (from ``/proc``).

    The start time tells a process from a later one that reuses its PID.
    """
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            found[child] = started
            todo.append(child)
    return found


def _started(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def kill_remembered(known: dict[int, int]) -> None:
    """SIGKILL each remembered process that still runs: same PID and same start time."""
    for pid, started in known.items():
        if _started(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Child:
    """One process started by a :class:`Supervisor`, the leader of its own process group."""

    name: str
    popen: subprocess.Popen[str]
    reader: threading.Thread | None = None
    known: dict[int, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def remember_tree(self) -> None:
        """Note the child's descendants now (some may leave its process group later); those
        that have ended since are forgotten, so the record stays small on a long run."""
        self.known = {p: t for p, t in self.known.items() if _started(p) == t}
        self.known.update(descendants(self.pid))


def _pump(stream: IO[str], on_line: Callable[[str], None]) -> None:
    with stream:
        for line in stream:
            on_line(line)


class Supervisor:
    """Starts child processes and stops them all together (see the module docstring).

    Parameters
    ----------
    say : callable
        Receives the supervisor's own messages (one line each).
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.children: list[Child] = []
        self._exited = threading.Event()

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str],
        on_line: Callable[[str], None] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``command`` in a new process group; ``on_line`` receives its output lines."""
        popen = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if on_line else None,
            stderr=subprocess.STDOUT if on_line else None,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
        )
        child = Child(name, popen)
        if on_line is not None and popen.stdout is not None:
            child.reader = threading.Thread(
                target=_pump, args=(popen.stdout, on_line), name=f"{name}-output", daemon=True
            )
            child.reader.start()
        threading.Thread(target=self._watch, args=(child,), daemon=True).start()
        self.children.append(child)
        return child

    def _watch(self, child: Child) -> None:
        child.popen.wait()
        self._exited.set()

    def wait_any(self, timeout: float | None = None) -> Child | None:
        """The first child found exited, waiting up to ``timeout`` (``None``: for ever).

        A stop signal interrupts the wait (:class:`Stopped` under :func:`stop_signals`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for child in self.children:
                if not child.alive():
                    if child.reader is not None:
                        child.reader.join(2.0)  # its last lines
                    return child
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._exited.wait(1.0 if left is None else min(left, 1.0))
            self._exited.clear()
            for child in self.children:
                if child.alive():
                    child.remember_tree()

    def forget(self, child: Child) -> None:
        """Drop an exited child (e.g. before starting it again)."""
        self._reap(child)
        self.children.remove(child)

    def _reap(self, child: Child) -> None:
        kill_remembered(child.known)
        child.known.clear()

    def stop(self, grace: float = STOP_GRACE_S) -> list[str]:
        """Stop every child: SIGTERM to its group, SIGKILL after ``grace`` s, then leftovers.

        Returns the names of children that had to be killed.
        """
        for child in self.children:
            child.remember_tree()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        killed = []
        for child in self.children:
            try:
                child.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                killed.append(child.name)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=KILL_WAIT_S)
        for child in self.children:
            # Descendants that left the group (Flower's helpers) or outlived their parent.
            child.known.update(descendants(child.pid))
            self._reap(child)
            if child.reader is not None:
                child.reader.join(2.0)
        return killed


def supervise_until_stopped(
    supervisor: Supervisor,
    on_exit: Callable[[Child], str | None],
    what: str,
) -> int:
    """Wait until a stop signal or until ``on_exit(child)`` gives a reason to stop; stop all.

    ``on_exit`` is called for each child that exits; it returns ``None`` to keep going (it may
    start a replacement) or the reason to stop. Returns 0 after a stop signal, otherwise 1.
    Always prints one final line naming what stopped and why.
    """
    code, reason = 1, "a process exited"
    try:
        with stop_signals():
            while True:
                child = supervisor.wait_any()
                if child is None:
                    continue
                stop = on_exit(child)
                if stop is not None:
                    reason = stop
                    break
    except Stopped as stop_signal:
        code, reason = 0, f"{stop_signal.signame} received"
    started = time.monotonic()
    # No second signal may cut the stop short: the children would be left behind.
    with ignored_signals():
        killed = supervisor.stop()
    took = time.monotonic() - started
    extra = f"; killed after {STOP_GRACE_S:g} s: {', '.join(killed)}" if killed else ""
    supervisor.say(f"{what} stopped ({reason}; every process stopped in {took:.1f} s{extra})")
    return code


def exited(child: Child) -> str:
    """The usual stop reason: ``"NAME exited with status N"``."""
    return f"{child.name} exited with status {child.popen.returncode}"


@contextlib.contextmanager
def ignored_signals() -> Iterator[None]:
    """Ignore the stop signals for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def pid_lock(path: Path) -> IO[str] | None:
    """An exclusive, non-blocking ``flock`` on ``path``, which then holds this process's PID;
    ``None`` when another process holds it. The kernel releases it when the process ends,
    however it ends, so a crash never leaves a stale lock behind."""
    handle = path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
