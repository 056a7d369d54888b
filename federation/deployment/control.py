"""Talking to a running coordinator through Flower's Control API (the ``flwr`` CLI).

``trialfed`` drives the public ``flwr`` commands (``run``, ``log``, ``ls``, ``stop``,
``supernode register|ls``) with a generated SuperLink connection in a project-local
``FLWR_HOME``, parsing their ``--format json`` output. How the outcome comes back:

1. ``flwr run <repo> trialfed --run-config overrides.toml`` submits this repository as the Flower
   app with the plan TOML in ``plan-toml`` (plus ``expected-sites`` and ``round-timeout``).
2. ``flwr log RUN --stream`` follows the run's log; the ServerApp writes progress, the outcome
   and failures as marker lines (see :mod:`federation.server_app`).
3. ``flwr ls --run-id RUN`` gives the final status. Only ``finished:completed`` with a complete
   outcome in the log is a success; ``flwr run --stream`` alone exits 0 even when the ServerApp
   failed, so it is never trusted.

Every wait has a deadline derived from the plan's ``[run]`` settings.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from analysis.errors import UserError
from analysis.plan import Plan
from federation.deployment.appcode import app_dir
from federation.deployment.processes import executable, flower_env, parse_address
from federation.deployment.roster import Roster
from federation.protocol import Outcome, Progress, RunFailed
from federation.runlog import decode_log, progress_line

CONNECTION = "trialfed"
CLI_TIMEOUT_S = 60.0
CONNECT_SLACK_S = 90.0  # SuperLink starts the ServerApp process, which waits for the sites
ROUND_SLACK_S = 20.0  # per round, on top of round_timeout: Flower's 3 s polling, new processes
STATUS_WAIT_S = 30.0
RECONNECT_PAUSE_S = 3.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _parse_json(stdout: str) -> Any:
    text = _ANSI.sub("", stdout)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the output")
    return json.loads(text[start : end + 1])


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(_ANSI.sub("", text).strip().splitlines()[-lines:])


@dataclass
class RunStatus:
    """A run's status as ``flwr ls`` reports it, e.g. ``finished:failed``."""

    status: str
    details: str

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")


class Control:
    """The Control API of one coordinator, through the ``flwr`` CLI.

    Parameters
    ----------
    coordinator : str
        ``HOST:PORT`` of the SuperLink.
    ca : Path
        The coordinator's CA certificate (the SuperLink only speaks TLS).
    home : Path, optional
        ``FLWR_HOME`` for the CLI; ``$TRIALFED_HOME/cli`` by default.
    """

    def __init__(self, coordinator: str, ca: Path | None, home: Path | None = None) -> None:
        host, port = parse_address(coordinator)
        if ca is None:
            raise UserError(
                "--ca is required: the coordinator only accepts TLS connections "
                "(give the ca.crt from `trialfed coordinator certs`)"
            )
        if not ca.is_file():
            raise UserError(f"{ca}: CA certificate not found")
        self.coordinator = f"{host}:{port}"
        self.env = flower_env("cli", home)
        config = {
            "superlink": {
                "default": CONNECTION,
                CONNECTION: {"address": self.coordinator, "root-certificates": str(ca.resolve())},
            }
        }
        Path(self.env["FLWR_HOME"], "config.toml").write_text(tomli_w.dumps(config))
        self.flwr_exe = executable("flwr")

    def flwr(
        self, args: Sequence[str], timeout: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run one ``flwr`` command (never interactive, always bounded)."""
        try:
            return subprocess.run(
                [self.flwr_exe, *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RunFailed(
                f"`flwr {' '.join(args)}` did not answer within {timeout:g} s "
                f"(is the coordinator at {self.coordinator} reachable?)"
            ) from exc

    def _json(self, args: Sequence[str], what: str) -> Any:
        done = self.flwr([*args, "--format", "json"])
        try:
            data = _parse_json(done.stdout)
        except ValueError:
            data = None
        if done.returncode != 0 or not isinstance(data, dict) or not data.get("success", False):
            detail = data.get("error-message") if isinstance(data, dict) else None
            text = detail or _tail(done.stdout + done.stderr, 12) or f"exit {done.returncode}"
            if "403 Forbidden" in text:
                text += (
                    f"\n{self.coordinator} is the sites' port: the Control API listens on "
                    "127.0.0.1 at the coordinator (its --control-port), reach it there or "
                    "through an SSH tunnel"
                )
            raise RunFailed(f"{what} failed at {self.coordinator}: {text}")
        return data

    def register(self, public_key: Path, name: str | None = None) -> int:
        """Enrol a site's public key; returns the SuperNode id it will have."""
        args = ["supernode", "register", str(public_key.resolve()), CONNECTION]
        if name:
            args += ["--name", name]
        data = self._json(args, "enrolling the site key")
        return int(data["node-id"])

    def unregister(self, node_id: int) -> None:
        """Remove a SuperNode: its key is refused from its next request on."""
        self._json(["supernode", "unregister", str(node_id), CONNECTION], "revoking the site")

    def nodes(self) -> list[dict[str, Any]]:
        """Registered SuperNodes with their status (``registered``, ``online``, ``offline``)."""
        data = self._json(["supernode", "ls", CONNECTION], "listing the sites")
        return list(data.get("nodes", []))

    def runs(self) -> list[dict[str, Any]]:
        """Every run the coordinator knows, as ``flwr ls --format json`` lists them."""
        return list(self._json(["ls", CONNECTION], "listing the runs").get("runs", []))

    def start(self, app: Path, overrides: dict[str, Any], workdir: Path) -> int:
        """Submit ``app`` with run-config ``overrides``; returns the run id."""
        path = workdir / "run-config.toml"
        path.write_text(tomli_w.dumps(overrides))
        data = self._json(
            ["run", str(app), CONNECTION, "--run-config", str(path)], "submitting the run"
        )
        return int(data["run-id"])

    def status(self, run_id: int) -> RunStatus:
        """The run's current status."""
        data = self._json(["ls", CONNECTION, "--run-id", str(run_id)], "reading the run status")
        runs = data.get("runs", [])
        row = next((r for r in runs if str(r.get("run-id")) == str(run_id)), None)
        if row is None:
            raise RunFailed(f"run {run_id} is unknown to the coordinator at {self.coordinator}")
        return RunStatus(str(row.get("status", "")), str(row.get("status-details", "")))

    def log(self, run_id: int) -> str:
        """The run's whole log so far."""
        done = self.flwr(["log", str(run_id), CONNECTION, "--show"])
        if done.returncode != 0:
            raise RunFailed(f"reading the log of run {run_id} failed: {_tail(done.stderr, 8)}")
        return done.stdout

    def stop(self, run_id: int) -> None:
        """Ask the coordinator to stop the run (best effort)."""
        with contextlib.suppress(RunFailed):
            self.flwr(["stop", str(run_id), CONNECTION], timeout=20.0)

    def follow(self, run_id: int, progress: Progress, deadline: float) -> tuple[str, int | None]:
        """Stream the run's log until it ends, the stream breaks or ``deadline`` passes.

        Returns the streamed text and the ``flwr log`` exit status (``None``: deadline).
        """
        proc = subprocess.Popen(
            [self.flwr_exe, "log", str(run_id), CONNECTION, "--stream"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                message = progress_line(line)
                if message is not None:
                    progress(message)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code: int | None = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            reader.join(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        return "".join(lines), code


def run_budget(plan: Plan) -> float:
    """Seconds a deployment run of ``plan`` may take before it is stopped."""
    rounds = plan.run.max_rounds + 1
    return CONNECT_SLACK_S + rounds * (plan.run.round_timeout + ROUND_SLACK_S)


@dataclass(frozen=True)
class Expected:
    """The sites a run expects (by site id) and the roster's node id -> site id map."""

    site_ids: list[str]
    nodes: dict[int, str]

    def overrides(self) -> dict[str, str]:
        """The run config keys that carry them to the ServerApp (empty strings: none)."""
        return {
            "expected-site-ids": ",".join(self.site_ids),
            "roster-nodes": ",".join(f"{n}={s}" for n, s in sorted(self.nodes.items())),
        }


def expected_sites(plan: Plan, roster: Roster | None) -> Expected:
    """The plan's ``[study] sites``, else the whole roster; checked against the roster.

    Without a roster (a remote submitter) the plan's list, if any, goes to the ServerApp as is.
    """
    named = [str(s) for s in (getattr(plan, "sites", None) or [])]
    if roster is None:
        return Expected(named, {})
    enrolled = [s.site_id for s in roster.sites()]
    unknown = [s for s in named if s not in enrolled]
    if unknown:
        raise UserError(
            f"the plan's [study] sites names {', '.join(unknown)}, not on the coordinator's "
            f"roster (enrolled: {', '.join(enrolled) or 'none'}); enrol them or fix the plan"
        )
    if not named and not enrolled:
        raise UserError(
            "no site is enrolled at this coordinator (`trialfed coordinator enroll site.pub "
            "--site ID --country CC`)"
        )
    return Expected(named or enrolled, roster.by_node())


def _online(control: Control, expected: Expected, say: Progress) -> int:
    """Say which expected sites are online; returns how many the ServerApp should wait for."""
    try:
        online = [int(n["node-id"]) for n in control.nodes() if n.get("status") == "online"]
    except (RunFailed, KeyError, ValueError):
        return 0
    if not expected.nodes:
        say(f"coordinator {control.coordinator}: {len(online)} site(s) online")
        return len(online)
    up = sorted(expected.nodes[n] for n in online if n in expected.nodes)
    wanted = expected.site_ids
    down = [s for s in wanted if s not in up]
    say(
        f"coordinator {control.coordinator}: expected sites {', '.join(wanted)}; online "
        f"{', '.join(s for s in wanted if s in up) or 'none'}"
        + (f"; NOT online: {', '.join(down)}" if down else "")
    )
    return sum(1 for s in wanted if s in up)


def run_deployed(
    plan: Plan,
    coordinator: str,
    ca: Path | None,
    progress: Progress | None = None,
    *,
    home: Path | None = None,
    timeout: float | None = None,
    roster: Roster | None = None,
    on_submit: Callable[[int], None] | None = None,
) -> Outcome:
    """Run ``plan`` on the federation behind ``coordinator`` and return the protocol outcome.

    Parameters
    ----------
    plan : Plan
        The validated analysis plan; its TOML text travels in the run config.
    coordinator : str
        ``HOST:PORT`` of the coordinator's Control API.
    ca : Path
        The coordinator's CA certificate.
    progress : callable, optional
        Receives the ServerApp's progress lines as they arrive.
    home : Path, optional
        ``FLWR_HOME`` for the ``flwr`` CLI (default ``$TRIALFED_HOME/cli``).
    timeout : float, optional
        Overall limit in seconds (default :func:`run_budget`); the run is stopped past it.
    roster : Roster, optional
        The coordinator's roster: the expected sites (unless the plan names them) and the node
        id -> site id map travel to the ServerApp; answering sites are recorded in it.
    on_submit : callable, optional
        Called with the coordinator's run id once the run is submitted.

    Raises
    ------
    RunFailed
        The run failed, was stopped, timed out or ended without an outcome; the message
        carries the coordinator's reason and the tail of the run's log.
    UserError
        A site refused the plan (bad data or plan), or the arguments are wrong.
    """
    say = progress or (lambda _m: None)
    control = Control(coordinator, ca, home)
    expected = expected_sites(plan, roster)
    budget = timeout if timeout is not None else run_budget(plan)
    deadline = time.monotonic() + budget
    overrides: dict[str, Any] = {
        "plan-toml": plan.text,
        "expected-sites": _online(control, expected, say),
        "round-timeout": float(plan.run.round_timeout),
        "min-sites": int(plan.run.min_sites),
        **expected.overrides(),
    }
    workdir = Path(control.env["FLWR_HOME"])
    run_id = control.start(app_dir(workdir), overrides, workdir)
    say(f"run {run_id} submitted to {control.coordinator}")
    if on_submit is not None:
        on_submit(run_id)
    try:
        text = _wait(control, run_id, say, deadline, budget)
    except BaseException:
        say(f"run {run_id}: stopping it at the coordinator")
        control.stop(run_id)
        raise
    outcome = _conclude(control, run_id, text)
    if roster is not None:
        roster.record_answers(run_id, list(outcome.sites))
    return outcome


def _wait(control: Control, run_id: int, say: Progress, deadline: float, budget: float) -> str:
    """Follow the run to its end; survives a dropped stream (e.g. a coordinator restart)."""
    text = ""
    while True:
        streamed, code = control.follow(run_id, say, deadline)
        text = streamed or text
        if code is None or time.monotonic() >= deadline:
            raise RunFailed(
                f"run {run_id} did not finish within {budget:.0f} s; it was stopped. "
                f"Log tail:\n{_tail(text)}"
            )
        try:
            if control.status(run_id).finished:
                return text
        except RunFailed as exc:  # coordinator unreachable for now: keep trying
            say(f"run {run_id}: {exc}; retrying")
        if code != 0:
            say(f"run {run_id}: log stream interrupted (exit {code}); reconnecting")
        time.sleep(RECONNECT_PAUSE_S)


def _conclude(control: Control, run_id: int, streamed: str) -> Outcome:
    status = control.status(run_id)
    stop = time.monotonic() + STATUS_WAIT_S
    while not status.finished and time.monotonic() < stop:
        time.sleep(1.0)
        status = control.status(run_id)
    report = decode_log(streamed)
    if report.outcome is None and report.failure is None:
        streamed = control.log(run_id)
        report = decode_log(streamed)
    if status.status == "finished:completed" and report.outcome is not None:
        return report.outcome
    if report.failure is not None:
        raise report.failure
    reason = status.details or "no reason given"
    if status.status == "finished:completed":
        reason = "the ServerApp finished without an outcome in its log"
    raise RunFailed(
        f"run {run_id} ended as {status.status or 'unknown'} at {control.coordinator}: "
        f"{reason}. Log tail:\n{_tail(streamed)}"
    )
