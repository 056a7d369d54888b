"""Real deployment: one coordinator (Flower SuperLink) and hospital sites (SuperNodes).

``trialfed coordinator certs|start|enroll``, ``trialfed site keygen|start`` and
``trialfed run --coordinator HOST:PORT --ca CA`` end here. The pieces live in
:mod:`federation.deployment.pki` (certificates, keys), :mod:`federation.deployment.processes`
(process command lines, project-local ``FLWR_HOME``) and :mod:`federation.deployment.control`
(the Control API: enrolment, submitting a run, getting its outcome back). See docs/deployment.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.errors import UserError
from federation.deployment.control import Control, run_deployed
from federation.deployment.pki import (
    check_public_key,
    check_site_key,
    create_certificates,
    create_site_keys,
    server_names,
)
from federation.deployment.processes import (
    flower_env,
    free_port,
    run_foreground,
    run_site,
    superlink_command,
    supernode_command,
    trialfed_home,
)
from federation.protocol import RunFailed
from sites.cache import CACHE_ENV

__all__ = ["main_deploy", "run_deployed"]


def _say(message: str) -> None:
    print(f"trialfed: {message}", file=sys.stderr, flush=True)


def cmd_certs(args: argparse.Namespace) -> int:
    """``trialfed coordinator certs --host NAME ... --out DIR``."""
    files = create_certificates(list(args.host), args.out)
    _say(f"CA certificate (give it to every site): {files.ca_cert}")
    _say(f"CA key (keep it offline, 0600):          {files.ca_key}")
    _say(f"server certificate and key (0600):      {files.server_cert}, {files.server_key}")
    _say(f"the server certificate names: {', '.join(server_names(files.server_cert))}")
    return 0


def cmd_coordinator_start(args: argparse.Namespace) -> int:
    """``trialfed coordinator start --certs DIR [--host H --port P]`` (foreground)."""
    env = flower_env("coordinator")
    state = Path(env["FLWR_HOME"])
    command = superlink_command(args.certs, args.host, args.port, state)
    _say(f"coordinator on https://{args.host}:{args.port} (TLS, site authentication on)")
    _say(f"state (enrolments, runs, logs): {state / 'superlink.db'}; Ctrl-C stops it")
    return run_foreground(command, env)


def cmd_enroll(args: argparse.Namespace) -> int:
    """``trialfed coordinator enroll SITE_PUBLIC_KEY [--coordinator HOST:PORT --ca CA]``."""
    check_public_key(args.public_key)
    ca = args.ca
    if ca is None:
        raise UserError("--ca is required: give the coordinator's ca.crt")
    try:
        node_id = Control(args.coordinator, ca).register(args.public_key)
    except RunFailed as exc:
        _say(str(exc))
        return 1
    _say(f"enrolled {args.public_key} as SuperNode {node_id}")
    return 0


def cmd_site_keygen(args: argparse.Namespace) -> int:
    """``trialfed site keygen --out DIR``."""
    private, public = create_site_keys(args.out)
    _say(f"private key (stays at this site, 0600): {private}")
    _say(f"public key (send it to the coordinator to enrol): {public}")
    return 0


def cmd_site_start(args: argparse.Namespace) -> int:
    """``trialfed site start DIR --coordinator HOST:PORT --ca CA --key KEY [--port P]``."""
    from sites.bundle import load_bundle

    try:
        bundle = load_bundle(args.bundle)
    except UserError as exc:
        raise UserError(f"the site bundle is not valid, not starting: {exc}") from None
    if not args.ca.is_file():
        raise UserError(f"{args.ca}: CA certificate not found")
    check_site_key(args.key)
    port = args.port or free_port()
    command = supernode_command(args.bundle, args.coordinator, args.ca, args.key, port)
    env = flower_env(f"site-{bundle.site_id}")
    # Every message runs in a fresh ClientApp process: keep the validated tables as Parquet in
    # this site's Flower home so a round does not parse the bundle again (sites/cache.py).
    env.setdefault(CACHE_ENV, str(Path(env["FLWR_HOME"]) / "bundle-cache"))
    _say(
        f"site {bundle.site_id} ({bundle.country}) serving {Path(args.bundle).resolve()} to "
        f"{args.coordinator}; outbound only, local ClientApp API on 127.0.0.1:{port}; "
        "Ctrl-C stops it"
    )
    return run_site(command, env)


def main_deploy(args: argparse.Namespace) -> int:
    """Dispatch the deployment subcommands of ``trialfed``."""
    if args.command == "site":
        handlers = {"keygen": cmd_site_keygen, "start": cmd_site_start}
        return handlers[args.site_command](args)
    handlers = {"certs": cmd_certs, "start": cmd_coordinator_start, "enroll": cmd_enroll}
    return handlers[args.coordinator_command](args)


def state_dir() -> Path:
    """Base folder of the project-local Flower homes (``$TRIALFED_HOME``, default ./.flwr)."""
    return trialfed_home()
