"""The program that answers a site's tasks: the site's own installed trialfed, kept warm.

``trialfed site start`` runs ``flower-supernode --isolation process`` and this runner beside it
(``python -m federation.deployment.site_runner``). The runner claims each ClientApp task from
the SuperNode's local Runtime API and, instead of loading the ClientApp from the run's app
bundle (what Flower's ``flwr-clientapp`` does), answers with the ClientApp imported from the
site's INSTALLED ``federation.client_app``:

1. The app bundle's site-side code (``analysis/``, ``sites/``, ``federation/``, ``models/``) is
   compared file by file with the installed code. A bundle that differs is refused, unless its
   SHA-256 is listed in the site policy ``[policy] approved_apps``: the reply is the trialfed
   refusal ``{"ok": False, "error": ...}`` and the refusal is written to the site's audit log.
   Even an approved bundle's code never runs here.
2. Otherwise the installed ClientApp handles the message, as Flower would call it.

One process serves every message: imports happen once and the validated bundle stays in memory
(no process start, no import, no bundle load per message).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from analysis.errors import UserError
from federation.deployment import flower_site
from federation.deployment.appcode import bundle_digests, compare, installed_digests

POLL_S = 0.1
"""Pause between two ``AcquireTask`` calls when no task is pending: a local HTTP call of about
a millisecond, ten a second when idle. The site's SuperNode
(:mod:`federation.deployment.supernode`) fetches the next message within 50 ms of a reply and
pushes a reply within 20 ms, so a claim up to 0.1 s late is one of the larger waits left in a
round (benchmarks/results/notes.md)."""
RETRY_S = 1.0
"""Pause after the SuperNode's Runtime API did not answer (it is starting or restarting)."""
log = logging.getLogger("trialfed.site")


class AppGate:
    """Decides, per app bundle hash, whether this site answers the run."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self._same: set[str] = set()

    def approved(self) -> set[str]:
        """The ``[policy] approved_apps`` hashes, read again each time (no restart needed)."""
        from sites.bundle import read_site_toml

        site, _problems = read_site_toml(self.bundle / "site.toml")
        values = site.get("policy", {}).get("approved_apps", []) if site else []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UserError(
                f"{self.bundle / 'site.toml'}: [policy] approved_apps must be a list of "
                f"SHA-256 strings; got {values!r}"
            )
        return {v.strip().lower() for v in values}

    def refusal(self, site_id: str, fab_hash: str, content: bytes) -> str | None:
        """``None`` when the bundle may be answered; otherwise the reason it is refused."""
        digest = flower_site.fab_sha256(content)
        if fab_hash and digest != fab_hash:
            return f"site {site_id}: the run's app bundle does not match its hash {fab_hash}"
        if digest in self._same:
            return None
        try:
            difference = compare(bundle_digests(content), installed_digests())
        except Exception as exc:  # noqa: BLE001 - an unreadable bundle is refused, not crashed on
            return f"site {site_id}: the run's app bundle {digest} cannot be read ({exc})"
        if difference.same:
            self._same.add(digest)
            return None
        if digest in self.approved():
            return None
        return (
            f"site {site_id} refuses the run: its app bundle (sha256 {digest}) carries site-side "
            f"code that differs from the trialfed installed at this site "
            f"({difference.describe()}); the site answers only with its installed code. To "
            f"accept this bundle, list its sha256 in [policy] approved_apps of site.toml"
        )


def _site_id(bundle: Path) -> str:
    from sites.bundle import read_site_toml

    site, _problems = read_site_toml(bundle / "site.toml")
    return str(site.get("id") or bundle.name)


def _refuse(task_input: flower_site.TaskInput, site_id: str, bundle: Path, reason: str) -> Any:
    """The trialfed refusal reply, recorded in the site's audit log first."""
    from flwr.app import Message

    from federation.codec import decode, encode
    from sites import audit
    from sites.node import default_audit_log

    payload: dict[str, Any] = {
        "ok": False,
        "error": reason,
        "rule": "approved_apps",
        "site": site_id,
    }
    try:
        request: Any = decode(task_input.message.content)
    except Exception:  # noqa: BLE001 - a foreign app's message may not be ours to decode
        request = {"message_type": task_input.message.metadata.message_type}
    configured = task_input.context.node_config.get("audit-log")
    audit_log = Path(str(configured)) if configured else default_audit_log(bundle)
    fields = {
        "request_sha256": audit.payload_digest(request),
        "outcome": "refused",
        "rule": "approved_apps",
        "message": reason,
        "reply_sha256": audit.payload_digest(payload),
    }
    payload["audit"] = audit.record(audit_log, site_id, fields)
    return Message(content=encode(payload), reply_to=task_input.message)


class SiteRunner:
    """Claims and answers the SuperNode's ClientApp tasks until stopped."""

    def __init__(self, runtime: str, bundle: Path, secret: bytes | None = None) -> None:
        self.runtime = runtime
        self.bundle = bundle.resolve()
        self.secret = secret
        self.gate = AppGate(self.bundle)
        self.site_id = _site_id(self.bundle)
        self.stopping = threading.Event()
        self.answered = 0
        self.refused = 0
        from federation.client_app import app

        self.app = app

    def warm(self) -> None:
        """Load and validate the bundle now, so the first round does not pay for it; digest the
        installed code now, as it is loaded (a later edit on disk is not what answers)."""
        from sites.prepared import prefetch

        installed_digests()

        try:
            prefetch(self.bundle)
        except UserError as exc:  # reported again (and refused) when the first query comes
            log.warning("site %s: %s", self.site_id, exc)

    def handle(self, task: flower_site.Task) -> None:
        """Answer one task; every failure becomes a reply or a failed task, never a crash."""
        session = flower_site.TaskSession(self.runtime, task)
        context = None
        ok, details = False, "the task failed before its input was read"
        times = [time.perf_counter()]
        try:
            task_input = session.pull()
            context = task_input.context
            times.append(time.perf_counter())
            reply = self._reply(task, task_input)
            times.append(time.perf_counter())
            session.push(reply, context)
            times.append(time.perf_counter())
            self.answered += 1
            ok, details = True, ""
        except Exception as exc:  # noqa: BLE001 - the SuperNode expires the task; keep serving
            log.exception("run %s: task %s failed", task.run_id, task.task_id)
            details = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                session.finish(context, ok, details)
        if ok:
            pull, work, push = (b - a for a, b in zip(times, times[1:], strict=False))
            log.info(
                "run %s: message answered in %.2f s (input %.2f, answer %.2f, reply %.2f)",
                task.run_id,
                time.perf_counter() - times[0],
                pull,
                work,
                push,
            )

    def _reply(self, task: flower_site.Task, task_input: flower_site.TaskInput) -> Any:
        reason = self.gate.refusal(self.site_id, task_input.fab_hash, task_input.fab_content)
        if reason is not None:
            self.refused += 1
            log.warning("run %s: %s", task.run_id, reason)
            return _refuse(task_input, self.site_id, self.bundle, reason)
        try:
            return self.app(message=task_input.message, context=task_input.context)
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator as Flower does
            log.exception("run %s: the ClientApp raised", task.run_id)
            return flower_site.error_reply(task_input.message, f"{type(exc)}:<'{exc}'>")

    def serve(self, max_tasks: int | None = None) -> int:
        """Claim and answer tasks until :attr:`stopping` is set (or ``max_tasks`` answered)."""
        link = flower_site.RuntimeLink(self.runtime, self.secret)
        handled = 0
        try:
            while not self.stopping.is_set() and (max_tasks is None or handled < max_tasks):
                try:
                    task = link.acquire()
                except flower_site.HTTPError:
                    self.stopping.wait(RETRY_S)  # the SuperNode is (re)starting
                    continue
                if task is None:
                    self.stopping.wait(POLL_S)
                    continue
                self.handle(task)
                handled += 1
        finally:
            link.close()
        return handled


def _stop_on_signals(runner: SiteRunner) -> None:
    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("site runner: %s received, stopping", signal.Signals(signum).name)
        runner.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)


def main(argv: list[str] | None = None) -> int:
    """``python -m federation.deployment.site_runner --runtime HOST:PORT --bundle DIR``."""
    parser = argparse.ArgumentParser(prog="trialfed-site-runner")
    parser.add_argument("--runtime", required=True, help="the SuperNode's Runtime API HOST:PORT")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--secret-file", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s trialfed-site: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per local poll otherwise
    secret = args.secret_file.read_bytes() if args.secret_file else None
    runner = SiteRunner(args.runtime, args.bundle, secret)
    _stop_on_signals(runner)
    runner.warm()
    log.info("site %s: answering tasks of the SuperNode at %s", runner.site_id, args.runtime)
    started = time.monotonic()
    runner.serve()
    log.info(
        "site %s: runner stopped after %.0f s (%d answered, %d refused)",
        runner.site_id,
        time.monotonic() - started,
        runner.answered,
        runner.refused,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
