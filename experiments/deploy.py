"""Real deployment: one coordinator (Flower SuperLink behind nginx) and hospital sites.

``trialfed coordinator certs|start|enroll|sites|revoke``, ``trialfed site keygen|start``,
``trialfed status`` and ``trialfed run --coordinator HOST:PORT`` end here (``trialfed results``:
:mod:`experiments.deploy_results`).
The engine lives in :mod:`federation.deployment`; see docs/deployment.md.

Commands that talk to a coordinator find it by its state folder (``--state DIR``, default
``~/.local/share/trialfed/coordinator``: the running coordinator's ``coordinator.json`` names its
Control API and CA, and ``roster.json`` its sites), or, from another machine, by
``--coordinator HOST:PORT --ca ca.crt`` (e.g. through an SSH tunnel; no roster there).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.errors import UserError
from analysis.plan import Plan
from federation.deployment import control as engine
from federation.deployment.control import Control
from federation.deployment.lifecycle import stop_signals
from federation.deployment.pki import (
    check_public_key,
    check_site_key,
    create_certificates,
    create_site_keys,
    server_names,
)
from federation.deployment.processes import flower_env, free_port
from federation.deployment.roster import Roster, key_fingerprint
from federation.deployment.state import (
    CoordinatorInfo,
    find_state_for,
    running_coordinator,
    state_dir,
)
from federation.protocol import Outcome, Progress, RunFailed

__all__ = ["find_target", "main_deploy", "run_deployed"]


def _say(message: str) -> None:
    print(f"trialfed: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Target:
    """A coordinator's Control API, its CA and, on the coordinator's machine, its roster."""

    control: str
    ca: Path
    state: Path | None

    @property
    def roster(self) -> Roster | None:
        return Roster(self.state) if self.state is not None else None

    @property
    def home(self) -> Path | None:
        """The ``flwr`` CLI's home: one per coordinator state, so two never share a config."""
        return self.state / "cli" if self.state is not None else None

    def client(self) -> Control:
        return Control(self.control, self.ca, self.home)


def find_target(coordinator: str | None, ca: Path | None, state: Path | None) -> Target:
    """``--coordinator``/``--ca`` when given (the roster too if it is this machine's
    coordinator), else the coordinator running on the state folder."""
    if coordinator:
        local = find_state_for(coordinator) if state is None else state_dir(state)
        info = CoordinatorInfo.read(local) if local is not None else None
        if info is not None and info.control != coordinator:
            info = None  # that state belongs to another coordinator: no roster from it
        if ca is None and info is None:
            raise UserError("--ca is required with --coordinator (the coordinator's ca.crt)")
        return Target(coordinator, ca or Path(info.ca if info else ""), local if info else None)
    info = running_coordinator(state)
    return Target(info.control, ca or Path(info.ca), Path(info.state))


def _target(args: argparse.Namespace) -> Target:
    return find_target(
        getattr(args, "coordinator", None), getattr(args, "ca", None), getattr(args, "state", None)
    )


def _local_roster(target: Target) -> Roster:
    roster = target.roster
    if roster is None:
        raise UserError(
            "the roster lives in the coordinator's state folder: run this command on the "
            "coordinator's machine (--state DIR if it is not the default)"
        )
    return roster


def cmd_certs(args: argparse.Namespace) -> int:
    """``trialfed coordinator certs --host NAME ... --out DIR``."""
    files = create_certificates(list(args.host), args.out)
    _say(f"CA certificate (give it to every site): {files.ca_cert}")
    _say(f"CA key (keep it offline, 0600):          {files.ca_key}")
    _say(f"server certificate and key (0600):      {files.server_cert}, {files.server_key}")
    _say(f"the server certificate names: {', '.join(server_names(files.server_cert))}")
    return 0


def cmd_coordinator_start(args: argparse.Namespace) -> int:
    """``trialfed coordinator start --certs DIR [--host H --port P --control-port C --state S]``."""
    from federation.deployment.coordinator import CoordinatorService

    control_port = args.control_port or args.port + 1
    service = CoordinatorService(
        state_dir(args.state), args.certs, args.host, args.port, control_port, _say
    )
    return service.run()


def cmd_enroll(args: argparse.Namespace) -> int:
    """``trialfed coordinator enroll SITE.pub --site ID --country CC [--state DIR]``."""
    check_public_key(args.public_key)
    target = _target(args)
    roster = _local_roster(target)
    line = args.public_key.read_text(encoding="ascii", errors="replace").strip()
    fingerprint = roster.check_new(args.site, args.country, line)
    try:
        node_id = target.client().register(args.public_key, name=args.site)
    except RunFailed as exc:
        _say(str(exc))
        return 1
    roster.add(args.site, args.country, line, node_id)
    _say(f"enrolled site {args.site} ({args.country}), key {fingerprint}")
    _say("confirm this fingerprint with the site (it reads it with `ssh-keygen -lf site.pub`)")
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    """``trialfed coordinator sites``: the roster with fingerprints and last contact."""
    target = _target(args)
    from experiments.deploy_views import sites_table

    print(sites_table(_local_roster(target), _nodes(target.client())))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """``trialfed coordinator revoke SITE``: the site's key is refused from now on."""
    target = _target(args)
    roster = _local_roster(target)
    entry = roster.get(args.site)
    try:
        target.client().unregister(entry.node_id)
    except RunFailed as exc:
        _say(str(exc))
        return 1
    roster.remove(args.site)
    _say(f"revoked site {entry.site_id} (key {entry.fingerprint}); it is refused from now on")
    return 0


def _nodes(control: Control) -> dict[int, dict[str, Any]]:
    return {int(n["node-id"]): n for n in control.nodes()}


def cmd_status(args: argparse.Namespace) -> int:
    """``trialfed status``: the sites (enrolled, online, version, last contact) and the runs."""
    from experiments.deploy_views import runs_table, sites_table

    target = _target(args)
    control = target.client()
    where = f", state {target.state}" if target.state else ""
    print(f"coordinator: Control API {target.control}{where}")
    nodes = _nodes(control)
    roster = target.roster
    if roster is not None:
        print(sites_table(roster, nodes))
    else:
        print("sites (no roster on this machine; Flower node ids):")
        for node_id, node in sorted(nodes.items()):
            print(f"  node {node_id}: {node.get('status')}")
    print(runs_table(control.runs()))
    return 0


def cmd_site_keygen(args: argparse.Namespace) -> int:
    """``trialfed site keygen --out DIR``."""
    private, public = create_site_keys(args.out)
    _say(f"private key (stays at this site, 0600): {private}")
    _say(f"public key (send it to the coordinator to enrol): {public}")
    _say(f"fingerprint (read it to the coordinator by phone): {key_fingerprint(public)}")
    return 0


def cmd_site_start(args: argparse.Namespace) -> int:
    """``trialfed site start DIR --coordinator HOST:PORT --ca CA --key KEY [--port P]``."""
    from federation.deployment.site import SiteService
    from sites.bundle import load_bundle

    try:
        bundle = load_bundle(args.bundle)
    except UserError as exc:
        raise UserError(f"the site bundle is not valid, not starting: {exc}") from None
    if not args.ca.is_file():
        raise UserError(f"{args.ca}: CA certificate not found")
    check_site_key(args.key)
    port = args.port or free_port()
    env = flower_env(f"site-{bundle.site_id}")
    _say(
        f"site {bundle.site_id} ({bundle.country}) serving {Path(args.bundle).resolve()} to "
        f"{args.coordinator}; outbound only, local Runtime API on 127.0.0.1:{port}; "
        f"Flower files in {env['FLWR_HOME']}; SIGTERM or Ctrl-C stops it"
    )
    service = SiteService(
        bundle.site_id, Path(args.bundle), args.coordinator, args.ca, args.key, port, env, _say
    )
    return service.run()


def run_deployed(
    plan: Plan,
    coordinator: str,
    ca: Path | None,
    progress: Progress | None = None,
    *,
    timeout: float | None = None,
    on_submit: Callable[[int], None] | None = None,
) -> Outcome:
    """``trialfed run --coordinator``: :func:`federation.deployment.control.run_deployed` with
    this machine's roster when the address is its coordinator's, and stop signals handled:
    SIGTERM, SIGINT or SIGHUP stop the remote run and end as ``KeyboardInterrupt`` (the MLflow
    run is then marked KILLED)."""
    target = find_target(coordinator, ca, None)
    with stop_signals():
        return engine.run_deployed(
            plan,
            target.control,
            target.ca,
            progress,
            home=target.home,
            timeout=timeout,
            roster=target.roster,
            on_submit=on_submit,
        )


def main_deploy(args: argparse.Namespace) -> int:
    """Dispatch the deployment subcommands of ``trialfed``."""
    handlers: dict[str, Callable[[argparse.Namespace], int]]
    if args.command == "site":
        handlers = {"keygen": cmd_site_keygen, "start": cmd_site_start}
        return handlers[args.site_command](args)
    if args.command == "status":
        return cmd_status(args)
    handlers = {
        "certs": cmd_certs,
        "start": cmd_coordinator_start,
        "enroll": cmd_enroll,
        "sites": cmd_sites,
        "revoke": cmd_revoke,
    }
    return handlers[args.coordinator_command](args)
