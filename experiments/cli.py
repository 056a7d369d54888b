"""The ``trialfed`` command line.

Every subcommand imports its module lazily so that ``trialfed site check`` does not pay for
Flower, torch or MLflow. A :class:`analysis.errors.UserError` anywhere ends the command with its
message on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from analysis.errors import UserError

Handler = Callable[[argparse.Namespace], int]


def _cmd_synth(args: argparse.Namespace) -> int:
    from experiments.synth import main_synth

    return main_synth(args)


def _cmd_site_check(args: argparse.Namespace) -> int:
    from experiments.site_cli import main_check

    return main_check(args)


def _cmd_site_audit(args: argparse.Namespace) -> int:
    from experiments.site_cli import main_audit

    return main_audit(args)


def _cmd_site_approve(args: argparse.Namespace) -> int:
    from experiments.site_approve import main_approve

    return main_approve(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from experiments.launch import main_run

    return main_run(args)


def _cmd_ui(args: argparse.Namespace) -> int:
    from experiments.ui import main_ui

    return main_ui(args)


def _cmd_results(args: argparse.Namespace) -> int:
    from experiments.deploy_results import main_results

    return main_results(args)


def _cmd_deploy(args: argparse.Namespace) -> int:
    from experiments.deploy import main_deploy

    return main_deploy(args)


def _state_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="coordinator state folder (default $TRIALFED_STATE or ~/.local/share/trialfed/"
        "coordinator)",
    )


def _coordinator_options(parser: argparse.ArgumentParser) -> None:
    _state_option(parser)
    parser.add_argument(
        "--coordinator", metavar="HOST:PORT", default=None, help="Control API (remote, tunnel)"
    )
    parser.add_argument("--ca", type=Path, default=None, help="coordinator CA (with --coordinator)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="trialfed",
        description="Federated survival and efficacy analysis for multinational clinical trials.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser("synth", help="write synthetic Japan-Korea trial site bundles")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--design", choices=["vaccine", "drug"], default="vaccine")
    synth.add_argument("--subjects", type=int, default=3000, help="total subjects (default 3000)")
    synth.add_argument("--sites", type=int, default=6, help="number of sites, half JP half KR")
    synth.add_argument("--seed", type=int, default=20261128)
    synth.add_argument("--format", choices=["xpt", "csv", "parquet"], default="xpt")
    synth.add_argument(
        "--min-cell-count",
        type=int,
        default=5,
        help="the sites' policy min_cell_count (default 5; 0 = exact answers, no disclosure rules)",
    )
    synth.add_argument(
        "--encoding",
        action="append",
        metavar="[SITE=]ENC",
        help="write CSV/XPT text in ENC (shift_jis, cp932, euc_jp, cp949, euc_kr, latin-1) and "
        "declare it in site.toml; a Japanese or Korean ENC applies to that country's sites, "
        "JP=ENC or JP01=ENC to a country or site (repeatable)",
    )
    synth.add_argument(
        "--local-terms",
        action="store_true",
        help="write SEX and RACE in the site's language (男, 아시아인) with a terminology.toml",
    )
    synth.set_defaults(handler=_cmd_synth)

    site = sub.add_parser("site", help="commands run at a hospital site")
    site_sub = site.add_subparsers(dest="site_command", required=True, metavar="SITE_COMMAND")
    check = site_sub.add_parser("check", help="validate a site bundle and print a short report")
    check.add_argument("bundle", type=Path, help="site bundle folder (holds site.toml)")
    check.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    check.add_argument(
        "--plan",
        type=Path,
        default=None,
        help="analysis plan whose [levels] the values are checked against (default: CDISC CT)",
    )
    check.set_defaults(handler=_cmd_site_check)
    audit = site_sub.add_parser("audit", help="verify the hash chain of the site's audit log")
    audit.add_argument("bundle", type=Path, help="site bundle folder")
    audit.add_argument("--log", type=Path, default=None, help="audit log (default in bundle)")
    audit.add_argument(
        "--against",
        type=Path,
        default=None,
        metavar="RESULTS",
        help="a run's results.json: the log must still hold the entry that run recorded",
    )
    audit.set_defaults(handler=_cmd_site_audit)
    approve = site_sub.add_parser(
        "approve", help="show what a plan would take from this site, then approve its hash"
    )
    approve.add_argument("bundle", type=Path, help="site bundle folder")
    approve.add_argument("plan", type=Path, help="analysis plan (TOML)")
    approve.add_argument("--dry-run", action="store_true", help="show only; do not approve")
    approve.add_argument("--quiet", action="store_true", help="print only the approval line")
    approve.set_defaults(handler=_cmd_site_approve)
    keygen = site_sub.add_parser("keygen", help="create this site's authentication key pair")
    keygen.add_argument("--out", type=Path, required=True)
    keygen.set_defaults(handler=_cmd_deploy)
    start = site_sub.add_parser("start", help="serve this site bundle to a coordinator")
    start.add_argument("bundle", type=Path)
    start.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    start.add_argument("--ca", type=Path, required=True, help="coordinator CA certificate")
    start.add_argument("--key", type=Path, required=True, help="site private key")
    start.add_argument("--port", type=int, default=None, help="local ClientApp port")
    start.set_defaults(handler=_cmd_deploy)

    coord = sub.add_parser("coordinator", help="commands run at the coordinating centre")
    coord_sub = coord.add_subparsers(dest="coordinator_command", required=True, metavar="CMD")
    certs = coord_sub.add_parser("certs", help="create a CA and a server certificate")
    certs.add_argument("--host", required=True, action="append", help="server host name or IP")
    certs.add_argument("--out", type=Path, required=True)
    certs.set_defaults(handler=_cmd_deploy)
    cstart = coord_sub.add_parser("start", help="start the coordinator (SuperLink behind nginx)")
    cstart.add_argument("--certs", type=Path, required=True)
    cstart.add_argument("--host", default="0.0.0.0", help="address the sites connect to")
    cstart.add_argument("--port", type=int, default=9093, help="port the sites connect to")
    cstart.add_argument(
        "--control-port", type=int, default=None, help="Control API port on 127.0.0.1 (PORT+1)"
    )
    _state_option(cstart)
    cstart.set_defaults(handler=_cmd_deploy)
    enroll = coord_sub.add_parser("enroll", help="enrol a site's public key on the roster")
    enroll.add_argument("public_key", type=Path)
    enroll.add_argument("--site", required=True, help="site id (as in the site's site.toml)")
    enroll.add_argument("--country", required=True, help="two-letter country code, e.g. JP")
    _state_option(enroll)
    enroll.set_defaults(handler=_cmd_deploy)
    sites = coord_sub.add_parser("sites", help="list the roster: sites, fingerprints, contact")
    _state_option(sites)
    sites.set_defaults(handler=_cmd_deploy)
    revoke = coord_sub.add_parser("revoke", help="revoke a site: its key is refused from now on")
    revoke.add_argument("site", help="site id")
    _state_option(revoke)
    revoke.set_defaults(handler=_cmd_deploy)

    status = sub.add_parser("status", help="the federation: sites online, versions, runs")
    _coordinator_options(status)
    status.set_defaults(handler=_cmd_deploy)
    results = sub.add_parser("results", help="results.json (and MLflow run) of a deployed run")
    results.add_argument("run_id", type=int, help="the coordinator's run id")
    results.add_argument("--out", type=Path, required=True, help="output folder")
    results.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    _coordinator_options(results)
    results.set_defaults(handler=_cmd_results)

    run = sub.add_parser("run", help="run an analysis plan over the federation")
    run.add_argument("plan", type=Path, help="analysis plan (TOML)")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--sites", type=Path, nargs="+", help="site bundles (simulation engine)")
    where.add_argument("--coordinator", metavar="HOST:PORT", help="running federation")
    run.add_argument("--ca", type=Path, default=None, help="coordinator CA (deployment)")
    run.add_argument("--out", type=Path, required=True, help="output folder for results.json")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    run.add_argument(
        "--lang",
        default=None,
        metavar="LANG[,LANG...]",
        help="report language(s): en, ja, ko; the first for the console and report.html, "
        "the others as report.<lang>.html (default: the plan's [study] language, else en)",
    )
    run.add_argument(
        "--backend",
        choices=["process", "ray"],
        default="process",
        help="simulation backend: local worker processes (default) or Ray",
    )
    run.set_defaults(handler=_cmd_run)

    ui = sub.add_parser("ui", help="start the MLflow UI on the configured store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trialfed`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"trialfed: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("trialfed: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``trialfed`` console script: :func:`main`, then a quick exit.

    Once ``main`` has returned, every non-daemon thread has ended, every ``atexit`` handler has
    run and the streams are flushed, the process ends without the interpreter's teardown of its
    modules (about 0.6 s with Flower, pandas and matplotlib loaded, on every command). An
    unexpected exception still ends the normal way, with its traceback.
    """
    code = main()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
