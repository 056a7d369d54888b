"""The site worker pool of the simulation engine (federation/workers.py, process_backend.py).

Real processes: a fork server and its workers, checked by PID. A site is pinned to one worker,
a failing or dying job is that site's failure (the worker is replaced), and closing the pool and
stopping the fork server leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing import forkserver
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from federation import workers

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a reaped child is gone; an unreaped one is a zombie: read its state
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def pool() -> Any:
    workers.prestart()
    started = workers.start_pool(2, "tests.worker_apps:make_echo", ("t",), "tests.worker_apps:warm")
    yield started
    started.close()
    workers.stop_fork_server()


def test_a_site_always_runs_on_the_same_worker(pool: workers.WorkerPool) -> None:
    replies = {key: pool.run(key, f"job {key}", {"k": key}) for key in range(6)}
    pids = {key: reply["pid"] for key, (reply, _) in replies.items()}
    assert pids[0] == pids[2] == pids[4] and pids[1] == pids[3] == pids[5]
    assert pids[0] != pids[1] and sorted(set(pids.values())) == sorted(pool.pids())
    assert os.getpid() not in pids.values()
    reply, context = replies[3]
    assert reply["message"] == "job 3" and reply["tag"] == "t" and context == {"k": 3}


def test_workers_warm_up_with_one_blas_thread(pool: workers.WorkerPool) -> None:
    first, _ = pool.run(0, "x", None)
    second, _ = pool.run(1, "x", None)
    assert first["warmed"] == [(0, 2)] and second["warmed"] == [(1, 2)]  # slot 1's failure ignored
    assert first["blas_threads"] == os.environ.get("OPENBLAS_NUM_THREADS", "1")


SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from federation import workers
print("script ran", flush=True)
pool = workers.start_pool(1, "tests.worker_apps:make_echo", ("t",))
reply, _ = pool.run(0, "x", None)
print("reimported" if reply["main_reimported"] else "answered", flush=True)
pool.close()
workers.stop_fork_server()
"""


def test_a_script_without_a_main_guard_can_start_a_pool(tmp_path: Path) -> None:
    script = tmp_path / "no_guard.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["script", "ran", "answered"]  # once, not again in the worker


def test_a_failing_job_is_an_error_with_the_worker_traceback(pool: workers.WorkerPool) -> None:
    with pytest.raises(workers.WorkerError, match="ValueError: bad job") as caught:
        pool.run(1, "raise", None)
    assert "Traceback" in str(caught.value)
    reply, _ = pool.run(1, "after", None)  # the same worker goes on
    assert reply["message"] == "after"


def test_a_dead_worker_fails_its_job_and_is_replaced(pool: workers.WorkerPool) -> None:
    before, _ = pool.run(0, "x", None)
    with pytest.raises(workers.WorkerError, match="exited"):
        pool.run(0, "die", None)
    after, _ = pool.run(0, "x", None)
    assert after["pid"] != before["pid"] and not _alive(before["pid"])
    assert after["warmed"] == [(0, 2)]  # the new worker warmed up too
    os.kill(after["pid"], signal.SIGKILL)
    with pytest.raises(workers.WorkerError, match="exited"):
        pool.run(0, "x", None)


def test_process_backend_reports_a_dead_worker_as_a_client_app_error(
    pool: workers.WorkerPool,
) -> None:
    from federation.flower_internals import ClientAppException
    from federation.process_backend import ProcessBackend

    backend = ProcessBackend(pool)
    assert backend.num_workers == 2 * pool.size
    context: Any = SimpleNamespace(node_config={"partition-id": 3})
    reply: Any
    reply, _ = backend.process_message("hello", context)  # type: ignore[arg-type]
    assert reply["message"] == "hello"
    with pytest.raises(ClientAppException, match="exited"):
        backend.process_message("die", context)  # type: ignore[arg-type]


def _fork_server_pid() -> int | None:
    """The running fork server's PID (multiprocessing keeps it in a private attribute)."""
    pid: int | None = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    return pid


def test_closing_leaves_no_process(pool: workers.WorkerPool) -> None:
    pool.run(0, "x", None)
    pool.run(1, "x", None)
    pids = pool.pids()
    server = _fork_server_pid()
    assert len(pids) == 2 and server is not None and _alive(server)
    pool.close()
    with pytest.raises(workers.WorkerError, match="shutting down"):
        pool.run(0, "x", None)
    workers.stop_fork_server()
    assert _gone([*pids, server])
    assert _fork_server_pid() is None


def test_a_pool_started_without_prestart_has_the_thread_limits() -> None:
    workers.stop_fork_server()  # whatever an earlier test left running
    started = workers.start_pool(1, "tests.worker_apps:make_echo", ("t",))
    try:
        # the fork server imported numpy (which sizes its BLAS pool) with this environment
        server = _fork_server_pid()
        environ = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
    finally:
        started.close()
        workers.stop_fork_server()
    expected = os.environ.get("OPENBLAS_NUM_THREADS", "1")
    assert f"OPENBLAS_NUM_THREADS={expected}".encode() in environ
